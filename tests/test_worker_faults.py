"""A fault no app handled: the worker answers 500 itself, in JSON, and logs the
error with its traceback and the request it broke (fiboserver.worker.loop's
handle_error, then fiboserver.worker.refusals). A real gunicorn with
fiboserver's worker serves tests/support/faultyapp.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.serverproc import ServerProcess


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    config = {"env": "DEV", "maxseq": 10}
    with ServerProcess(
        config, tmp_path, env={"WEB_CONCURRENCY": "1"}, args=["tests.support.faultyapp:app"]
    ) as srv:
        srv.wait_ready("/ok")
        yield srv


def test_an_app_that_raises_gets_a_json_500_and_a_record_with_its_traceback(
    server: ServerProcess,
) -> None:
    status, headers, body = server.get("/broken", headers={"X-Request-ID": "fault-1"})
    assert status == 500
    assert json.loads(body) == {"error": "internal error"}
    assert headers["Connection"] == "close" and headers["X-Request-ID"] == "fault-1"

    error = server.wait_for("error handling request")
    assert error["level"] == "ERROR"
    assert "RuntimeError: boom at /broken" in error["exc_info"]
    refused = server.wait_for("request refused", where=lambda r: r.get("status") == 500)
    assert (refused["method"], refused["path"]) == ("GET", "/broken")
    assert refused["request_id"] == "fault-1"
    assert refused["client"].startswith("127.0.0.1:")
    assert refused["errmsg"] == "internal error: 'boom at /broken'"
    assert len(server.find("error handling request")) == 1
    # The worker serves on.
    assert server.get("/ok")[0] == 200
