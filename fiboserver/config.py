"""Configuration: one YAML file, validated before anything listens.

`parse_config` holds every rule and is pure; `load_config` is the only I/O.
Both raise `ConfigError`, which names the file and the offending key.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

CONFIG_ENV = "FIBOSERVER_CONFIG"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
MAX_SEQ_LIMIT = 100_000
# The OpenTelemetry Prometheus exporter's port; 0 turns metrics off (docs/metrics.md).
DEFAULT_METRICS_PORT = 9464
# Fault injection (README "Fault injection"): the delay's upper bound stays well
# inside graceful_timeout (20 s), so a delayed request still drains on SIGTERM.
MAX_FAULT_DELAY_MS = 10_000
_ENV_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,30}")


class ConfigError(Exception):
    """A configuration file that cannot be used; `key` is None for file-level faults."""

    def __init__(self, path: str, key: str | None, reason: str) -> None:
        self.path = path
        self.key = key
        self.reason = reason
        where = f"key {key!r}" if key is not None else "file"
        super().__init__(f"{path}: {where}: {reason}")


@dataclass(frozen=True)
class Config:
    env: str
    maxseq: int
    cacheresult: bool = True
    port: int = 8080
    loglevel: str = "INFO"
    cache_max_bytes: int = 32 * 1024 * 1024
    metrics_port: int = DEFAULT_METRICS_PORT
    fault_delay_ms: int = 0
    fault_error_ratio: float = 0.0

    @property
    def prefix(self) -> str:
        """URL prefix of every route: `/` + the lower-case environment name."""
        return "/" + self.env.lower()


def _int_in(low: int, high: int | None = None) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        # bool is an int subclass in Python, but `port: true` is a mistake, not 1.
        if not isinstance(value, int) or isinstance(value, bool):
            return f"must be an integer, got {type(value).__name__}"
        if high is not None and not low <= value <= high:
            return f"must be in {low}..{high}, got {value}"
        if value < low:
            return f"must be >= {low}, got {value}"
        return None

    return check


def _ratio(value: Any) -> str | None:
    # A number, int or float (YAML writes 0 and 1 as ints); never a bool.
    if not isinstance(value, int | float) or isinstance(value, bool):
        return f"must be a number, got {type(value).__name__}"
    # Also refuses .nan, which compares false with everything.
    if not 0 <= value <= 1:
        return f"must be in 0..1, got {value}"
    return None


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"must be true or false, got {value!r}"


def _env(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not _ENV_PATTERN.fullmatch(value):
        return f"must match ^[A-Za-z][A-Za-z0-9-]{{0,30}}$, got {value!r}"
    return None


def _loglevel(value: Any) -> str | None:
    if not isinstance(value, str) or value.upper() not in LOG_LEVELS:
        return f"must be one of {', '.join(LOG_LEVELS)}, got {value!r}"
    return None


# key -> (required, check); the order is the order errors are reported in.
_RULES: dict[str, tuple[bool, Callable[[Any], str | None]]] = {
    "env": (True, _env),
    "maxseq": (True, _int_in(0, MAX_SEQ_LIMIT)),
    "cacheresult": (False, _bool),
    "port": (False, _int_in(1, 65535)),
    "loglevel": (False, _loglevel),
    "cache_max_bytes": (False, _int_in(0)),
    "metrics_port": (False, _int_in(0, 65535)),
    "fault_delay_ms": (False, _int_in(0, MAX_FAULT_DELAY_MS)),
    "fault_error_ratio": (False, _ratio),
}


def default_loglevel(env: str) -> str:
    """DEBUG for the DEV environment, INFO everywhere else."""
    return "DEBUG" if env.upper() == "DEV" else "INFO"


def parse_config(data: object, path: str) -> Config:
    """Validate the parsed YAML document `data` read from `path`."""
    if not isinstance(data, Mapping):
        kind = "empty" if data is None else type(data).__name__
        raise ConfigError(path, None, f"must be a YAML mapping of keys to values, got {kind}")
    for key in data:
        if key not in _RULES:
            raise ConfigError(path, str(key), f"unknown key (known: {', '.join(_RULES)})")
    for key, (required, check) in _RULES.items():
        if key not in data:
            if required:
                raise ConfigError(path, key, "required key is missing")
            continue
        problem = check(data[key])
        if problem is not None:
            raise ConfigError(path, key, problem)
    values = dict(data)
    port = values.get("port", Config.port)
    if values.get("metrics_port", Config.metrics_port) == port:
        raise ConfigError(
            path, "metrics_port", f"must differ from port (both are {port}); 0 turns metrics off"
        )
    values.setdefault("loglevel", default_loglevel(values["env"]))
    values["loglevel"] = values["loglevel"].upper()
    values["fault_error_ratio"] = float(values.get("fault_error_ratio", 0))
    return Config(**values)


def load_config(path: str) -> Config:
    """Read and validate the YAML file at `path`."""
    try:
        with open(path, encoding="utf-8") as stream:
            data = yaml.safe_load(stream)
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, None, f"not UTF-8 text: {exc.reason}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, None, f"invalid YAML: {_one_line(exc)}") from None
    return parse_config(data, path)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
