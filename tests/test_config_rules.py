"""Configuration (README "Configuration"): the pure rules of fiboserver.config.

parse_config's defaults, the values it accepts at each boundary and the ones it
refuses (naming the key and the file), and load_config on the shipped files and
on files it cannot read. What the real process does with a bad file is
test_config.py's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fiboserver.config import Config, ConfigError, load_config, parse_config
from tests.support.repo import REPO_ROOT


def test_minimal_config_gets_the_defaults() -> None:
    cfg = parse_config({"env": "PROD", "maxseq": 100}, "test.yaml")
    assert isinstance(cfg, Config)
    assert (cfg.env, cfg.maxseq) == ("PROD", 100)
    assert cfg.cacheresult is True
    assert cfg.port == 8080
    assert cfg.loglevel == "INFO"
    assert cfg.cache_max_bytes == 33554432
    assert cfg.metrics_port == 9464
    assert cfg.fault_delay_ms == 0
    assert cfg.fault_error_ratio == 0.0
    assert cfg.prefix == "/prod"


@pytest.mark.parametrize("env", ["DEV", "dev", "Dev"])
def test_dev_defaults_to_debug_in_any_case(env: str) -> None:
    cfg = parse_config({"env": env, "maxseq": 0}, "test.yaml")
    assert cfg.loglevel == "DEBUG"
    assert cfg.prefix == "/dev"


@pytest.mark.parametrize("env", ["PROD", "staging", "DEVELOP", "qa-2"])
def test_other_envs_default_to_info(env: str) -> None:
    cfg = parse_config({"env": env, "maxseq": 0}, "test.yaml")
    assert cfg.loglevel == "INFO"
    assert cfg.prefix == "/" + env.lower()


def test_every_key_given() -> None:
    data = {
        "env": "Canary-1",
        "maxseq": 100000,
        "cacheresult": False,
        "port": 65535,
        "loglevel": "WARNING",
        "cache_max_bytes": 1048576,
        "metrics_port": 9100,
        "fault_delay_ms": 2000,
        "fault_error_ratio": 0.2,
    }
    cfg = parse_config(data, "test.yaml")
    assert cfg == Config(
        env="Canary-1",
        maxseq=100000,
        cacheresult=False,
        port=65535,
        loglevel="WARNING",
        cache_max_bytes=1048576,
        metrics_port=9100,
        fault_delay_ms=2000,
        fault_error_ratio=0.2,
    )
    assert cfg.prefix == "/canary-1"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("maxseq", 0),
        ("maxseq", 100000),
        ("port", 1),
        ("port", 65535),
        ("env", "A"),
        ("env", "A" + "b" * 30),  # 31 characters, the longest allowed
        ("loglevel", "DEBUG"),
        ("loglevel", "ERROR"),
        ("cacheresult", True),
        ("metrics_port", 0),
        ("metrics_port", 1),
        ("metrics_port", 65535),
        ("fault_delay_ms", 0),
        ("fault_delay_ms", 10000),
        ("fault_error_ratio", 0),
        ("fault_error_ratio", 1),
        ("fault_error_ratio", 0.0),
        ("fault_error_ratio", 1.0),
        ("fault_error_ratio", 0.001),
    ],
)
def test_boundaries_accepted(key: str, value: object) -> None:
    data: dict[str, object] = {"env": "PROD", "maxseq": 10, key: value}
    assert getattr(parse_config(data, "test.yaml"), key) == value


BAD_VALUES: list[tuple[str, object]] = [
    ("maxseq", "ten"),
    ("maxseq", 1.5),
    ("maxseq", True),
    ("maxseq", None),
    ("maxseq", -1),
    ("maxseq", 100001),
    ("cacheresult", "yes"),
    ("cacheresult", 1),
    ("port", True),
    ("port", "8080"),
    ("port", 0),
    ("port", 65536),
    ("env", 5),
    ("env", ""),
    ("env", "dev_1"),
    ("env", "1dev"),
    ("env", "D" * 32),
    ("env", "dev/x"),
    ("loglevel", "TRACE"),
    ("loglevel", 10),
    ("cache_max_bytes", -1),
    ("cache_max_bytes", "32MB"),
    ("cache_max_bytes", False),
    ("metrics_port", -1),
    ("metrics_port", 65536),
    ("metrics_port", "9464"),
    ("metrics_port", True),
    ("metrics_port", None),
    # The API's port (8080 unless set): one listener each.
    ("metrics_port", 8080),
    ("fault_delay_ms", -1),
    ("fault_delay_ms", 10001),
    ("fault_delay_ms", 1.5),
    ("fault_delay_ms", "100"),
    ("fault_delay_ms", True),
    ("fault_delay_ms", None),
    ("fault_error_ratio", -0.1),
    ("fault_error_ratio", 1.01),
    ("fault_error_ratio", 2),
    ("fault_error_ratio", True),
    ("fault_error_ratio", False),
    ("fault_error_ratio", "0.2"),
    ("fault_error_ratio", None),
    ("fault_error_ratio", float("nan")),
    ("fault_error_ratio", float("inf")),
]


@pytest.mark.parametrize(("key", "value"), BAD_VALUES, ids=[f"{k}={v!r}" for k, v in BAD_VALUES])
def test_bad_value_names_key_and_path(key: str, value: object) -> None:
    data: dict[str, object] = {"env": "PROD", "maxseq": 10, key: value}
    with pytest.raises(ConfigError) as err:
        parse_config(data, "conf/x.yaml")
    assert err.value.key == key
    assert err.value.path == "conf/x.yaml"
    assert isinstance(err.value.reason, str) and err.value.reason
    assert key in str(err.value) and "conf/x.yaml" in str(err.value)


@pytest.mark.parametrize(
    "data",
    [
        {"port": 9000, "metrics_port": 9000},
        {"port": 9464},  # the default metrics_port
        {"metrics_port": 8080},  # the default port
    ],
)
def test_metrics_port_must_differ_from_port(data: dict[str, int]) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"env": "PROD", "maxseq": 10, **data}, "x.yaml")
    assert err.value.key == "metrics_port"
    assert "must differ from port" in err.value.reason


@pytest.mark.parametrize("value", [0, 1])
def test_an_integer_error_ratio_is_kept_as_a_float(value: int) -> None:
    cfg = parse_config({"env": "PROD", "maxseq": 10, "fault_error_ratio": value}, "x.yaml")
    assert type(cfg.fault_error_ratio) is float and cfg.fault_error_ratio == value


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (True, "must be a number, got bool"),
        ("0.2", "must be a number, got str"),
        (1.5, "must be in 0..1, got 1.5"),
        (-1, "must be in 0..1, got -1"),
    ],
)
def test_bad_error_ratio_says_why(value: object, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"env": "PROD", "maxseq": 10, "fault_error_ratio": value}, "x.yaml")
    assert err.value.reason == reason


def test_metrics_off_frees_its_port_for_the_api() -> None:
    cfg = parse_config({"env": "PROD", "maxseq": 10, "port": 9464, "metrics_port": 0}, "x.yaml")
    assert (cfg.port, cfg.metrics_port) == (9464, 0)


@pytest.mark.parametrize("missing", ["env", "maxseq"])
def test_missing_required_key(missing: str) -> None:
    data: dict[str, object] = {"env": "PROD", "maxseq": 10}
    del data[missing]
    with pytest.raises(ConfigError) as err:
        parse_config(data, "x.yaml")
    assert err.value.key == missing


def test_unknown_key() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"env": "PROD", "maxseq": 10, "maxSeq": 5}, "x.yaml")
    assert err.value.key == "maxSeq"


@pytest.mark.parametrize("data", [None, [], ["env", "DEV"], "env: DEV", 42])
def test_top_level_must_be_a_mapping(data: object) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(data, "x.yaml")
    assert err.value.path == "x.yaml"


def test_load_config_reads_the_shipped_files() -> None:
    root = REPO_ROOT
    dev = load_config(str(root / "k8s/overlays/dev/config.yaml"))
    prod = load_config(str(root / "k8s/overlays/prod/config.yaml"))
    assert (dev.env.upper(), dev.port, dev.maxseq, dev.loglevel) == ("DEV", 8080, 100000, "DEBUG")
    assert (prod.env.upper(), prod.port, prod.maxseq, prod.loglevel) == (
        "PROD",
        8080,
        100000,
        "INFO",
    )


def test_load_config_file_faults(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(str(tmp_path / "absent.yaml"))
    assert err.value.path == str(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError):
        load_config(str(tmp_path))  # a directory
    bad = tmp_path / "bad.yaml"
    bad.write_text("env: [DEV\n")
    with pytest.raises(ConfigError):
        load_config(str(bad))
