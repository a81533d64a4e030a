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
