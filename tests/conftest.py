"""Shared test plumbing."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from metrictools import Recorded
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


@pytest.fixture
def recorded() -> Recorded:
    """A private metrics registry, for an app built with metrictools.app_with.
    Imported here, not at the top: most tests need no prometheus_client."""
    from metrictools import Recorded

    return Recorded()


# --- make mutate (docs/mutation.md) ------------------------------------------------
# mutmut runs, for each mutant, the tests that reached the mutated function while it
# collected its statistics (MUTANT_UNDER_TEST=stats). Two kinds of reach escape it,
# and are handed to it here:
# - the servers the tests start: they write the functions they ran to a file
#   (tests/mutation/sitecustomize.py); after each test its new lines go to mutmut as
#   if the test had made those calls itself;
# - work done once in a module- or session-scoped fixture (e.g. test_config's bad
#   files, all started at once): mutmut files it under the first test only; here
#   every test that uses the fixture gets it.
# Outside that phase none of this is active.
MUTATION_SITE = Path(__file__).resolve().parent / "mutation"


class _MutmutReach:
    def __init__(self) -> None:
        fd, self.path = tempfile.mkstemp(prefix="fiboserver-mutmut-hits-")
        os.close(fd)
        self.offset = 0
        self.by_fixture: dict[str, set[str]] = {}
        self.saved_env = {k: os.environ.get(k) for k in ("PYTHONPATH", "FIBOSERVER_MUTMUT_HITS")}
        paths = [str(MUTATION_SITE), *filter(None, [os.environ.get("PYTHONPATH")])]
        os.environ["PYTHONPATH"] = os.pathsep.join(paths)
        os.environ["FIBOSERVER_MUTMUT_HITS"] = self.path

    @staticmethod
    def recorded() -> set[str]:
        """mutmut's record of the functions reached since the last test ended."""
        from mutmut.state import state

        hits: set[str] = state()._stats
        return hits

    def collect_servers(self) -> None:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]  # a line being written waits
        self.offset += len(complete)
        self.recorded().update(complete.decode().split())

    def close(self) -> None:
        for key, value in self.saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        os.unlink(self.path)


_reach: _MutmutReach | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _reach
    if os.environ.get("MUTANT_UNDER_TEST") == "stats":
        _reach = _MutmutReach()


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any]) -> Iterator[Any]:
    if _reach is None or fixturedef.scope == "function":
        return (yield)
    _reach.collect_servers()
    before = set(_reach.recorded())
    try:
        return (yield)
    finally:
        _reach.collect_servers()
        reached = _reach.by_fixture.setdefault(fixturedef.argname, set())
        reached |= _reach.recorded() - before


@pytest.hookimpl(tryfirst=True)  # before mutmut's own hook files the calls under this test
def pytest_runtest_teardown(item: pytest.Item) -> None:
    if _reach is not None:
        _reach.collect_servers()
        for name in getattr(item, "fixturenames", ()):
            _reach.recorded().update(_reach.by_fixture.get(name, ()))


def pytest_unconfigure(config: pytest.Config) -> None:
    global _reach
    if _reach is not None:
        _reach.close()
        _reach = None


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
