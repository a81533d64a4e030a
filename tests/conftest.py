"""Shared test plumbing."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
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


# --- make mutate (docs/mutation.md) ------------------------------------------------
# While mutmut collects which tests reach which function (MUTANT_UNDER_TEST=stats),
# the servers the tests start report the functions they ran (tests/mutation/
# sitecustomize.py) to a file; after each test its new lines go to mutmut as if the
# test had made those calls itself. Outside `make mutate` none of this is active.
MUTATION_SITE = Path(__file__).resolve().parent / "mutation"


class _ServerHits:
    def __init__(self) -> None:
        fd, self.path = tempfile.mkstemp(prefix="fiboserver-mutmut-hits-")
        os.close(fd)
        self.offset = 0
        self.saved_env = {k: os.environ.get(k) for k in ("PYTHONPATH", "FIBOSERVER_MUTMUT_HITS")}
        paths = [str(MUTATION_SITE), *filter(None, [os.environ.get("PYTHONPATH")])]
        os.environ["PYTHONPATH"] = os.pathsep.join(paths)
        os.environ["FIBOSERVER_MUTMUT_HITS"] = self.path

    def hand_over(self) -> None:
        from mutmut.state import state

        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]  # a line being written waits
        self.offset += len(complete)
        state()._stats.update(complete.decode().split())

    def close(self) -> None:
        for key, value in self.saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        os.unlink(self.path)


_server_hits: _ServerHits | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _server_hits
    if os.environ.get("MUTANT_UNDER_TEST") == "stats":
        _server_hits = _ServerHits()


@pytest.hookimpl(tryfirst=True)  # before mutmut's own hook files the calls under this test
def pytest_runtest_teardown(item: pytest.Item) -> None:
    if _server_hits is not None:
        _server_hits.hand_over()


def pytest_unconfigure(config: pytest.Config) -> None:
    global _server_hits
    if _server_hits is not None:
        _server_hits.close()
        _server_hits = None
