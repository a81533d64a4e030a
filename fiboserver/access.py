"""Request ids and the `start` / `end` access records, as WSGI middleware."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from flask import Flask

from fiboserver.logs import request_id_var
from fiboserver.metrics import RequestMetrics

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

REQUEST_ID_HEADER = "X-Request-ID"
# An incoming id is echoed only when it is safe to put in logs and headers.
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")

log = logging.getLogger("fiboserver.access")


# The first hex digit of a UUID's 9th byte carries the RFC 4122 variant (binary
# 10xx): keep the random low two bits, set the top two.
_VARIANT_DIGIT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}


def new_request_id() -> str:
    """A random UUID4 in canonical form, as `str(uuid.uuid4())` gives it.

    Built from the hex of 16 random bytes with the version and variant digits
    set, without a UUID object: under half the cost, on every request that
    brings no id of its own.
    """
    digits = os.urandom(16).hex()
    return (
        f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-"
        f"{_VARIANT_DIGIT[digits[16]]}{digits[17:20]}-{digits[20:]}"
    )


def choose_request_id(incoming: str | None) -> str:
    """The caller's id when it is 1 to 128 of [A-Za-z0-9._-], else a new UUID4."""
    if incoming is not None and _VALID_REQUEST_ID.fullmatch(incoming):
        return incoming
    return new_request_id()


def _path(environ: WSGIEnvironment) -> str:
    """The request path as Flask's `request.path` shows it."""
    path: str = environ.get("PATH_INFO") or ""
    if not path.isascii():
        # WSGI carries the raw bytes as latin-1; Werkzeug decodes them as UTF-8.
        path = path.encode("latin-1").decode(errors="replace")
    return "/" + path.lstrip("/")


class _Closing:
    """A response body whose close() also runs `on_close` (werkzeug's
    ClosingIterator, minus the generality that costs a few us per request)."""

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
    hooks: the hooks and the `request`/`g` proxies they read cost about a
    fifth of a cached request. The request id is set in `request_id_var` until
    the response is sent, so every record written meanwhile carries it;
    `X-Request-ID` is added to every response, errors included, and `end` is
    written when the server closes the response, so `duration_ms` includes
    sending it. With `metrics`, the request is counted in flight from `start`
    to `end` and recorded in the duration histogram with the `end` record's own
    method, path, status and duration: the log and the metric agree on every
    request.
    """

    def __init__(self, wsgi_app: WSGIApplication, metrics: RequestMetrics | None = None) -> None:
        self.wsgi_app = wsgi_app
        self.metrics = metrics

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        request_id = choose_request_id(environ.get("HTTP_X_REQUEST_ID"))
        token = request_id_var.set(request_id)
        fields: dict[str, Any] = {
            "method": environ.get("REQUEST_METHOD", "GET").upper(),
            "path": _path(environ),
            "client": f"{environ.get('REMOTE_ADDR', '')}:{environ.get('REMOTE_PORT', '')}",
        }
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

        try:
            body = self.wsgi_app(environ, start_response_with_id)
        except BaseException:
            # No answer of ours and no `end` record: gunicorn answers 500 itself.
            if metrics is not None:
                metrics.abandoned()
            request_id_var.reset(token)
            raise
        return _Closing(body, end)


def refused(
    *,
    status: int,
    errmsg: str,
    request_id: str,
    method: str,
    path: str,
    client: str,
    duration_ms: float,
    metrics: RequestMetrics | None = None,
) -> None:
    """The one record of a request the server answered without the app
    (fiboserver.refusals: overload 503, the HTTP layer's 400/408/414/431):
    the keys of `end`, plus what was refused in `errmsg`. Counted in the
    request histogram like an `end`, with the record's own values."""
    if metrics is not None:
        metrics.observe(method, path, status, duration_ms / 1000)
    log.warning(
        "request refused",
        extra={
            "request_id": request_id,
            "method": method,
            "path": path,
            "client": client,
            "status": status,
            "duration_ms": duration_ms,
            "errmsg": errmsg,
        },
    )


def request_metrics(app: object) -> RequestMetrics | None:
    """What the app's access middleware records requests into (None without metrics)."""
    wsgi_app = getattr(app, "wsgi_app", None)
    return wsgi_app.metrics if isinstance(wsgi_app, AccessLog) else None


def init_app(app: Flask, metrics: RequestMetrics | None = None) -> None:
    app.wsgi_app = AccessLog(app.wsgi_app, metrics)  # type: ignore[method-assign]
