"""A fault no app handled: the worker answers 500 itself, in JSON, and logs the
error with its traceback and the request it broke (fiboserver.worker.loop's
handle_error, then fiboserver.worker.refusals). A real gunicorn with
fiboserver's worker serves tests/support/faultyapp.py. And a fault in that error
path itself: the pool thread's future holds it, and the loop closes the
connection (`keep_alive_after`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import pytest

from fiboserver.worker.loop import keep_alive_after
from tests.support.logcapture import JsonCapture
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


def finished(result: object = None, exc: BaseException | None = None) -> futures.Future[object]:
    fut: futures.Future[object] = futures.Future()
    if exc is None:
        fut.set_result(result)
    else:
        fut.set_exception(exc)
    return fut


def test_a_request_the_thread_kept_alive_keeps_its_connection(fibo_logs: JsonCapture) -> None:
    assert keep_alive_after(finished(True)) is True
    assert keep_alive_after(finished(False)) is False
    assert fibo_logs.records == []


def test_a_thread_that_raised_closes_its_connection_and_says_why(fibo_logs: JsonCapture) -> None:
    assert keep_alive_after(finished(exc=OSError("the error path broke"))) is False
    (error,) = fibo_logs.find("error handling request")
    assert error["level"] == "ERROR"
    assert "OSError: the error path broke" in error["exc_info"]
