"""The access middleware (fiboserver/app/access.py) as the WSGI component it is (PEP 3333).

A server calls close() on the body it was given once the response is sent; a
middleware that wraps the body must pass that call on, or the application's own
clean-up (a file a response streams, Flask's close callbacks) never runs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from werkzeug.wrappers import Request

from fiboserver.app import access
from fiboserver.app.access import AccessLog
from fiboserver.request_ids import HEADER as REQUEST_ID_HEADER
from tests.support.logcapture import JsonCapture

Headers = list[tuple[str, str]]


class Body:
    """A response body with a close() of its own, as a streamed file has."""

    def __init__(self) -> None:
        self.closed = 0

    def __iter__(self) -> Iterator[bytes]:
        return iter([b"ok"])

    def close(self) -> None:
        self.closed += 1


def serve(body: Iterable[bytes], path: str = "/dev/x", **extra: str) -> tuple[Any, Headers]:
    """Run one GET of `path` (PATH_INFO) through AccessLog around an app answering
    `body`; (result, headers). `extra`: more WSGI keys."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return body

    sent: Headers = []

    def start_response(status: str, headers: Headers, exc_info: Any = None) -> None:
        sent.extend(headers)

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "REMOTE_ADDR": "127.0.0.1", **extra}
    return AccessLog(app)(environ, start_response), sent  # type: ignore[arg-type]


def test_close_reaches_the_applications_body(fibo_logs: JsonCapture) -> None:
    body = Body()
    result, headers = serve(body)
    assert b"".join(result) == b"ok"
    assert body.closed == 0 and fibo_logs.find("end") == []
    result.close()
    assert body.closed == 1
    (end,) = fibo_logs.find("end")
    assert end["status"] == 200 and end["request_id"] == dict(headers)[REQUEST_ID_HEADER]


def test_a_body_without_close_is_fine(fibo_logs: JsonCapture) -> None:
    result, _ = serve([b"o", b"k"])
    assert b"".join(result) == b"ok"
    result.close()
    assert [r["status"] for r in fibo_logs.find("end")] == [200]


@pytest.mark.parametrize(
    "path_info",
    # WSGI carries a path's bytes as latin-1: "é" in UTF-8, then bytes that are no UTF-8.
    ["/dev/x", "//XY//z", "", "/caf\u00c3\u00a9", "/\u00ff\u00fe"],
)
def test_the_records_path_is_the_one_flask_shows(fibo_logs: JsonCapture, path_info: str) -> None:
    serve([b"ok"], path_info)[0].close()
    (end,) = fibo_logs.find("end")
    assert end["path"] == Request({"PATH_INFO": path_info}).path


def test_the_client_is_address_and_port(fibo_logs: JsonCapture) -> None:
    serve([b"ok"], REMOTE_PORT="4711")[0].close()
    assert [r["client"] for r in fibo_logs.records] == ["127.0.0.1:4711"] * 2  # start, end


def test_a_unix_socket_client_is_named_as_the_worker_names_it(fibo_logs: JsonCapture) -> None:
    # gunicorn's environ for a `--bind unix:PATH` client: the address accept()
    # gave (empty for an unnamed client socket), and no REMOTE_PORT.
    serve([b"ok"], REMOTE_ADDR="")[0].close()
    assert [r["client"] for r in fibo_logs.records] == ["", ""]


def test_an_error_after_start_response_reaches_the_server_with_its_exc_info() -> None:
    """PEP 3333: an app that fails after start_response calls it again with
    `exc_info`, which the server needs (to re-raise it once headers are sent)."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [])
        try:
            raise RuntimeError("late")
        except RuntimeError:
            start_response("500 Internal Server Error", [], sys.exc_info())
        return [b"failed"]

    calls: list[tuple[str, Any]] = []

    def start_response(status: str, headers: Headers, exc_info: Any = None) -> None:
        calls.append((status, exc_info))

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/dev/x"}
    result: Any = AccessLog(app)(environ, start_response)  # type: ignore[arg-type]
    result.close()
    assert [status for status, _ in calls] == ["200 OK", "500 Internal Server Error"]
    assert calls[0][1] is None
    assert isinstance(calls[1][1][1], RuntimeError)


def test_the_duration_is_in_milliseconds_to_the_microsecond(
    fibo_logs: JsonCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = iter([2.0, 2.0123456])  # the request's start, then its end
    monkeypatch.setattr(access, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    serve([b"ok"])[0].close()
    (end,) = fibo_logs.find("end")
    assert end["duration_ms"] == 12.346
