"""Shared test plumbing."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def require_tool(name: str) -> str:
    """Path of `name`; skip the test without it, or fail it in CI (CI=true)."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not installed"
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: no test may skip for a missing tool)")
        pytest.skip(reason)
    return path


class JsonCapture:
    """Records of the `fiboserver` loggers as the service prints them: each one is
    formatted by the service's own JSON formatter at emit time (so the request id
    from the request context is included) and parsed back into a dict."""

    def __init__(self) -> None:
        from fiboserver.logs import JsonFormatter

        self.records: list[dict[str, Any]] = []
        formatter = JsonFormatter()
        records = self.records

        class _Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                records.append(json.loads(formatter.format(record)))

        self.handler = _Handler(logging.DEBUG)

    def find(self, msg: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("msg") == msg]


@pytest.fixture
def fibo_logs() -> Iterator[JsonCapture]:
    """Capture `fiboserver.*` records at DEBUG (what a DEV process logs)."""
    capture = JsonCapture()
    logger = logging.getLogger("fiboserver")
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(capture.handler)
    try:
        yield capture
    finally:
        logger.removeHandler(capture.handler)
        logger.setLevel(old_level)


@pytest.fixture(scope="session")
def cluster(pytestconfig: pytest.Config) -> Iterator[Any]:
    """The local Kubernetes cluster for tests/cluster (marker `cluster`): the one
    `make cluster-up` started, or with CI=true one brought up and down for this run;
    otherwise the tests skip, saying how to run them (tests/cluster/clusterlib.py)."""
    from clusterlib import session

    yield from session(pytestconfig)


# --- e2e (tests/e2e): the podman tools and the service image, once per session -----


@pytest.fixture(scope="session")
def podman_tools() -> dict[str, str]:
    # runc: containers.conf selects it (crun fails on this host's cgroup layout).
    found = {name: require_tool(name) for name in ("podman", "runc", "kubectl")}
    require_tool("debootstrap")  # for the base image, when it is not cached yet
    return found


@pytest.fixture(scope="session")
def e2e_image(
    podman_tools: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, float, str]]:
    """The service image, built once per session by `make image` on the local
    debootstrap base: (tag, build seconds, what the base image builder said)."""
    from podmanlib import NAME_PREFIX, build_image, podman  # tests/e2e, imported there first

    def remove_leftovers() -> None:
        binary = podman_tools["podman"]
        names = podman(
            binary, "ps", "-a", "--filter", f"name=^{NAME_PREFIX}", "--format", "{{.Names}}"
        ).stdout.split()
        if names:
            podman(binary, "rm", "-f", "-t", "0", *names, check=False)

    remove_leftovers()
    yield build_image(podman_tools["podman"], tmp_path_factory.mktemp("build"))
    remove_leftovers()
