"""What every test directory shares: the service's log records captured in-process
(`fibo_logs`), a private metrics registry (`recorded`), the terminal `say` writes to,
and the plumbing `make mutate` needs (docs/mutation.md). The e2e fixtures are in
tests/e2e/conftest.py, the cluster's in tests/cluster/conftest.py; the helpers all
of them import are in tests/support/."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.support import testlog
from tests.support.hosttools import require_tool
from tests.support.logcapture import JsonCapture

if TYPE_CHECKING:
    from tests.support.metrictools import Recorded
    from tests.support.opensearch import OpenSearch


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
    """A private metrics registry, for an app built with tests.support.metrictools.app_with.
    Imported here, not at the top: most tests need no prometheus_client."""
    from tests.support.metrictools import Recorded

    return Recorded()


@pytest.fixture(scope="session")
def opensearch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenSearch]:
    """One real OpenSearch node for the session (tests/support/opensearch.py), shared
    by the log tests: a JVM start per module would cost seconds each. Stopped at the
    end of the session, whatever the tests did."""
    from tests.support import opensearch as engine

    java = require_tool("java")
    # Cached by `make opensearch` (.ci/run); otherwise built here, which needs mvn.
    built = engine.build_dir()
    if not (built / "classes").is_dir():
        built = engine.build(require_tool("mvn"))
    node = engine.OpenSearch(tmp_path_factory.mktemp("opensearch"), built, java)
    testlog.say("opensearch", f"{engine.VERSION} up at {node.url} in {node.start_seconds:.1f} s")
    try:
        yield node
    finally:
        rc = node.stop()
        testlog.say("opensearch", f"stopped (exit status {rc})")


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
# Outside that phase none of this is active. When a mutant's tests run, they run
# module by module, cheapest first (tests/mutation/order.py).
MUTATION_SITE = Path(__file__).resolve().parent / "mutation"
# Several times the slowest test's duration (docs/mutation.md, "What saves time").
MUTANT_TEST_TIMEOUT = 300
# How pytest-timeout words the failure it raises (`Failed: Timeout (>300.0s) from ...`).
TIMEOUT_FAILURE = "from pytest-timeout"


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
    testlog.bind(config)
    if os.environ.get("MUTANT_UNDER_TEST") == "stats":
        _reach = _MutmutReach()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "__mutmut_" in os.environ.get("MUTANT_UNDER_TEST", ""):
        from mutmut.state import state

        from tests.mutation.order import cheapest_modules_first

        seconds = state().duration_by_test
        items[:] = cheapest_modules_first(items, lambda item: item.nodeid, seconds)
        # mutmut limits a mutant's CPU time, not the wall clock: a test waiting for
        # an answer the mutant never writes uses no CPU and would wait for ever.
        # pytest-timeout (the `mutate` extra) fails it instead. Set here, not in
        # mutmut's pytest arguments: changing those drops every verdict.
        # A test it failed is not run again: pytest-timeout disarms itself when
        # a test fails, so `--reruns` would run it with no limit at all.
        rerun_timing_misses = pytest.mark.flaky(
            reruns=config.getoption("reruns"), rerun_except=TIMEOUT_FAILURE
        )
        for item in items:
            item.add_marker(pytest.mark.timeout(MUTANT_TEST_TIMEOUT))
            item.add_marker(rerun_timing_misses)


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
    testlog.bind(None)
    if _reach is not None:
        _reach.close()
        _reach = None
