"""The servers a benchmark compares, started the deployed way, and the checks that keep it fair.

Every server is `gunicorn -c gunicorn.conf.py [app]` from a checkout's root, with
FIBOSERVER_CONFIG naming a copy of the PROD config on a free loopback port, started
through tests/support/serverproc.py (the one server helper) with its output in a log file.
A Variant says what differs: the app (the service, the bare-WSGI ceiling, the plain
Flask floor), config keys, environment, gunicorn options or the tree.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from bench.log import log
from tests.support.repo import REPO_ROOT
from tests.support.serverproc import ServerProcess

PROD_CONFIG = REPO_ROOT / "k8s" / "overlays" / "prod" / "config.yaml"
CEILING_APP = "bench.ceiling:app"
FLASK_FLOOR_APP = "bench.flask_floor:app"
# Settings that must be identical for the service and what it is compared with.
SAME_SETTINGS = (
    "worker_class",
    "workers",
    "threads",
    "keepalive",
    "worker_connections",
    "backlog",
    "timeout",
    "graceful_timeout",
    "max_requests",
    "accesslog",
    "loglevel",
    "logconfig_dict",
    "worker_tmp_dir",
    "preload_app",
)


def prod_config() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(PROD_CONFIG.read_text())
    return data


@dataclass(frozen=True)
class Variant:
    """One way to run a server in a comparison, and its name in the results."""

    label: str
    # A gunicorn app such as bench.ceiling:app; None runs the service (gunicorn.conf.py).
    app: str | None = None
    # Keys over the PROD config (e.g. cacheresult: false).
    config: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    # gunicorn options, before the app.
    args: tuple[str, ...] = ()
    # The checkout to run from (bench/compare.py runs an older commit's tree).
    cwd: Path = REPO_ROOT

    def with_config(self, **overrides: Any) -> Variant:
        return replace(self, config={**self.config, **overrides})


SERVICE = Variant("fiboserver")
CEILING = Variant("ceiling", CEILING_APP)
FLASK_FLOOR = Variant("flask floor", FLASK_FLOOR_APP)


class Server(ServerProcess):
    """A ServerProcess under the label it has in the results."""

    def __init__(self, label: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.label = label


@dataclass
class Bench:
    """One benchmark session: the PROD config, and a directory for config files and logs."""

    workdir: Path
    prod: dict[str, Any] = field(default_factory=prod_config)
    logs: list[Path] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return "/" + str(self.prod["env"]).lower()

    @property
    def ready_path(self) -> str:
        return self.prefix + "/readyz"

    def server(self, key: str, variant: Variant = SERVICE) -> Server:
        """A server (not started) whose config file and log are named `key`."""
        # Without `port`, ServerProcess picks a free one; the variant may still set it.
        config = {k: v for k, v in self.prod.items() if k != "port"}
        config.update(variant.config)
        log_path = self.workdir / f"{key}.log"
        self.logs.append(log_path)
        return Server(
            variant.label,
            config,
            self.workdir,
            env=variant.env,
            args=[*variant.args, *([variant.app] if variant.app else [])],
            name=f"{key}.yaml",
            cwd=variant.cwd,
            log_path=log_path,
        )

    def start(self, server: Server) -> float:
        """Start; seconds from process start to the first 200 on /readyz."""
        server.start()
        return server.wait_ready(self.ready_path)

    @contextlib.contextmanager
    def running(self, *servers: Server) -> Iterator[None]:
        """Start each until ready; on the way out, SIGTERM what still runs, then kill."""
        try:
            for server in servers:
                self.start(server)
            yield
        finally:
            for server in servers:
                if server.running():
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        server.stop()
                server.close()


def check_same_settings(
    servers: Sequence[Server], keys: Sequence[str] = SAME_SETTINGS
) -> list[dict[str, str | None]]:
    """Each server's SAME_SETTINGS as gunicorn resolves them; fails where one differs
    from the first server's in `keys`."""
    settings = []
    for server in servers:
        config = server.print_config()
        settings.append({k: config.get(k) for k in SAME_SETTINGS})
        log(f"gunicorn settings ({server.label}): {settings[-1]}")
    first = servers[0]
    for server, other in zip(servers[1:], settings[1:], strict=True):
        diff = {k: (settings[0][k], other[k]) for k in keys if settings[0][k] != other[k]}
        if diff:
            raise RuntimeError(
                f"{first.label} and {server.label} differ in gunicorn settings: {diff}"
            )
    return settings


def check_same_response(a: Server, b: Server, path: str) -> None:
    """What is compared must send the body and header set the service sends."""
    sa, ha, ba = a.get(path)
    sb, hb, bb = b.get(path)
    names_a = sorted(k.lower() for k in ha)
    names_b = sorted(k.lower() for k in hb)
    if (sa, ba, names_a) != (sb, bb, names_b):
        raise RuntimeError(
            f"responses differ for {path}: {a.label} {sa} {names_a} {ba[:80]!r} / "
            f"{b.label} {sb} {names_b} {bb[:80]!r}"
        )
