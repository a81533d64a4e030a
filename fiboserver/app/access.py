"""Request ids and the `start` / `end` access records, as WSGI middleware."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from flask import Flask

from fiboserver.logs import client_name, request_id_var
from fiboserver.metrics.definitions import RequestMetrics
from fiboserver.request_ids import HEADER as REQUEST_ID_HEADER
from fiboserver.request_ids import choose_request_id
from fiboserver.tracing import RequestTracing

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger("fiboserver.access")
# Where the app leaves a request's injected fault (fiboserver.app.faults) for its
# `end` record: the environ is the one object the app and this middleware share
# per request, and a missing key costs one dict lookup when faults are off.
FAULT_ENVIRON_KEY = "fiboserver.fault"


def _path(environ: WSGIEnvironment) -> str:
    """The request path as Flask's `request.path` shows it."""
    path: str = environ.get("PATH_INFO") or ""
    if not path.isascii():
        # WSGI carries the raw bytes as latin-1; Werkzeug decodes them as UTF-8.
        path = path.encode("latin-1").decode(errors="replace")
    return "/" + path.lstrip("/")


def _client(environ: WSGIEnvironment) -> str:
    """The client as the worker's own records name it. gunicorn gives a UNIX
    socket's peer a REMOTE_ADDR (its path, usually empty) and no REMOTE_PORT."""
    addr = environ.get("REMOTE_ADDR", "")
    port = environ.get("REMOTE_PORT")
    return client_name(addr if port is None else (addr, port))


class _Closing:
    """A response body whose close() also runs `on_close` (werkzeug's
    ClosingIterator, minus the generality that costs time on every request)."""

    __slots__ = ("_body", "_on_close")

    def __init__(self, body: Iterable[bytes], on_close: Callable[[], None]) -> None:
        self._body = body
        self._on_close = on_close

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._on_close()


class AccessLog:
    """WSGI middleware around the Flask app: request id, `start` and `end` records.

    It works on the WSGI environ directly rather than through Flask's request
    hooks: the hooks and the `request`/`g` proxies they read are a large part
    of a cached request's cost (docs/performance.md). The request id is set in
    `request_id_var` until the response is sent, so every record written
    meanwhile carries it;
    `X-Request-ID` is added to every response, errors included, and `end` is
    written when the server closes the response, so `duration_ms` includes
    sending it. A request the app injected a fault into (fiboserver.app.faults)
    has `fault` in its `end` record. With `metrics`, the request is counted in
    flight from `start` to `end` and recorded in the duration histogram with the
    `end` record's own method, path, status and duration: the log and the metric
    agree on every request.
    """

    def __init__(
        self,
        wsgi_app: WSGIApplication,
        metrics: RequestMetrics | None = None,
        tracing: RequestTracing | None = None,
    ) -> None:
        self.wsgi_app = wsgi_app
        self.metrics = metrics
        # The request's trace (fiboserver.tracing) spans `start` to `end`, so both
        # records carry its ids.
        self.tracing = tracing

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        request_id = choose_request_id(environ.get("HTTP_X_REQUEST_ID"))
        token = request_id_var.set(request_id)
        fields: dict[str, Any] = {
            "method": environ["REQUEST_METHOD"].upper(),  # required by PEP 3333
            "path": _path(environ),
            "client": _client(environ),
        }
        tracing = self.tracing
        trace = tracing.begin(environ, fields["method"], fields["path"]) if tracing else None
        log.info("start", extra=fields)
        metrics = self.metrics
        if metrics is not None:
            metrics.started()
        status = ""

        def start_response_with_id(
            status_line: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], object]:
            nonlocal status
            status = status_line
            headers.append((REQUEST_ID_HEADER, request_id))
            return start_response(status_line, headers, exc_info)

        def end() -> None:
            # The server calls this once the body is written (PEP 3333 close()),
            # in the request's own thread: the request id is still set.
            try:
                fields["status"] = int(status[:3])
                fields["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
                fault = environ.get(FAULT_ENVIRON_KEY)
                if fault is not None:
                    fields["fault"] = fault
                if metrics is not None:
                    # The record's own values, the rounded duration included: a
                    # request falls in the bucket a reader of the log would put it
                    # in. Counted first: a request whose `end` is logged is counted.
                    metrics.finished(
                        fields["method"], fields["path"], fields["status"],
                        fields["duration_ms"] / 1000,
                    )  # fmt: skip
                log.info("end", extra=fields)
            finally:
                request_id_var.reset(token)
                if trace is not None:
                    trace.end(fields.get("status"))

        try:
            body = self.wsgi_app(environ, start_response_with_id)
        except BaseException:
            # No answer of ours and no `end` record: gunicorn answers 500 itself.
            if metrics is not None:
                metrics.abandoned()
            request_id_var.reset(token)
            if trace is not None:
                trace.end(None, sys.exc_info()[1])
            raise
        return _Closing(body, end)


def init_app(
    app: Flask, metrics: RequestMetrics | None = None, tracing: RequestTracing | None = None
) -> None:
    app.wsgi_app = AccessLog(app.wsgi_app, metrics, tracing)  # type: ignore[method-assign]
