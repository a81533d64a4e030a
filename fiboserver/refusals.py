"""Answers the server writes itself, without the app: requests it refuses.

The worker refuses a request when it is overloaded (503) and when the HTTP
layer cannot read it (400, 408, 414, 431, ...). Those answers keep the API's
shape (SPEC section 2): a JSON `{"error": ...}` body, `X-Request-ID`, and one
log record saying what was refused. Every one of them goes through `refuse`,
and its record through `fiboserver.access.refused`, so counting them (metrics)
is one change in one place.
"""

from __future__ import annotations

import contextlib
import functools
import json
import socket
import time
from collections import deque
from http import HTTPStatus

from gunicorn.http import errors as http_errors

from fiboserver import access
from fiboserver.admission import Pacer
from fiboserver.connections import Conn, Connections
from fiboserver.echo import bounded, quoted
from fiboserver.heads import incoming_request_id, request_line, reusable
from fiboserver.metrics import RequestMetrics

# Refusals written between two looks at the pacer.
REFUSAL_BATCH = 32
# What a request refused for overload is told (SPEC section 12).
OVERLOADED = "overloaded"
RETRY_AFTER_OVERLOADED = 1

# The HTTP layer's errors (gunicorn.http.errors) as status and the message the
# client gets. The message never quotes the client: the log record does, bounded.
_PARSE_ERRORS: tuple[tuple[type[BaseException], HTTPStatus, str], ...] = (
    (http_errors.LimitRequestLine, HTTPStatus.REQUEST_URI_TOO_LONG, "request line too long"),
    (
        http_errors.LimitRequestHeaders,
        HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
        "request header too large",
    ),
    (http_errors.InvalidRequestLine, HTTPStatus.BAD_REQUEST, "malformed request line"),
    (http_errors.InvalidRequestMethod, HTTPStatus.BAD_REQUEST, "invalid method"),
    (http_errors.InvalidHTTPVersion, HTTPStatus.BAD_REQUEST, "unsupported HTTP version"),
    (
        http_errors.UnsupportedTransferCoding,
        HTTPStatus.NOT_IMPLEMENTED,
        "unsupported transfer coding",
    ),
    (http_errors.ExpectationFailed, HTTPStatus.EXPECTATION_FAILED, "expectation failed"),
    (http_errors.ForbiddenProxyRequest, HTTPStatus.FORBIDDEN, "forbidden"),
    (http_errors.ParseException, HTTPStatus.BAD_REQUEST, "malformed request"),
)


def parse_error(exc: BaseException) -> tuple[HTTPStatus, str] | None:
    """Status and message for an error of the HTTP layer; None for any other
    exception (a server fault, answered 500)."""
    for kind, status, message in _PARSE_ERRORS:
        if isinstance(exc, kind):
            return status, message
    return None


def response(
    status: HTTPStatus,
    error: str,
    request_id: str,
    *,
    retry_after: int | None = None,
    with_body: bool = True,
    close: bool = True,
) -> bytes:
    """The whole answer: JSON body, X-Request-ID, and `Connection: close` if `close`."""
    before, after = _template(status, error, retry_after, with_body, close)
    return before + request_id.encode("latin-1") + after


@functools.lru_cache(maxsize=64)
def _template(
    status: HTTPStatus, error: str, retry_after: int | None, with_body: bool, close: bool
) -> tuple[bytes, bytes]:
    """An answer's bytes before and after its request id: built once, since a
    server shedding load writes the same 503 thousands of times a second."""
    body = json.dumps({"error": error}).encode()
    before = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        + (f"Retry-After: {retry_after}\r\n" if retry_after is not None else "")
        + ("Connection: close\r\n" if close else "")
        + "X-Request-ID: "
    )
    return before.encode("latin-1"), b"\r\n\r\n" + (body if with_body else b"")


def refuse(
    sock: socket.socket,
    status: HTTPStatus,
    error: str,
    *,
    errmsg: str,
    incoming_id: str | None,
    method: str,
    target: str,
    client: str,
    started: float,
    retry_after: int | None = None,
    close: bool = True,
    metrics: RequestMetrics | None = None,
) -> None:
    """Write the refusal to `sock` (best effort, never blocking for long), log it
    and count it in `metrics`.

    `target` is the client's request target; the record keeps at most 40
    characters of it (and of the method), like every echo of client input.
    `started` is the time.monotonic() at which the connection or request began.
    """
    request_id = access.choose_request_id(incoming_id)
    data = response(
        status,
        error,
        request_id,
        retry_after=retry_after,
        with_body=method != "HEAD",
        close=close,
    )
    # One send: the answer is a few hundred bytes and the socket's buffer is
    # empty (nothing was answered on it since the client last read). If the
    # client has left, the record still says what was refused.
    with contextlib.suppress(OSError):
        sock.send(data, socket.MSG_DONTWAIT)
    access.refused(
        status=status.value,
        errmsg=errmsg,
        request_id=request_id,
        method=bounded(method),
        path=bounded(target.split("?", 1)[0]),
        client=client,
        duration_ms=round((time.monotonic() - started) * 1000, 3),
        metrics=metrics,
    )


def refuse_error(
    sock: socket.socket,
    exc: BaseException,
    conn: Conn | None,
    peer: str,
    metrics: RequestMetrics | None = None,
) -> None:
    """Answer what gunicorn's parser or request handling raised (in the pool
    thread that serves `conn`): the HTTP layer's status, or 500 for anything else."""
    status, error = parse_error(exc) or (HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")
    head = conn.head if conn is not None else b""
    method, target = request_line(head)
    refuse(
        sock,
        status,
        error,
        errmsg=f"{error}: {quoted(str(exc))}",
        incoming_id=incoming_request_id(head),
        method=method,
        target=target,
        client=conn.peer if conn is not None else peer,
        started=conn.started if conn is not None else time.monotonic(),
        metrics=metrics,
    )


class PendingRefusals:
    """Refusals the event loop has decided on, written within its CPU budget.

    Each costs the loop tens of microseconds (the answer, the record, a system
    call); `pacer` (fiboserver.admission.Pacer) bounds their share of its CPU.
    Until then the connection waits, its request read and nothing else done.
    """

    def __init__(
        self, conns: Connections, pacer: Pacer, metrics: RequestMetrics | None = None
    ) -> None:
        self.conns = conns
        self.pacer = pacer
        self.metrics = metrics
        self._queue: deque[tuple[Conn, HTTPStatus, str, str, int | None]] = deque()

    def add(
        self,
        conn: Conn,
        status: HTTPStatus,
        error: str,
        errmsg: str,
        retry_after: int | None = None,
    ) -> None:
        self._queue.append((conn, status, error, errmsg, retry_after))

    @property
    def pending(self) -> int:
        return len(self._queue)

    def wait(self, now: float) -> float:
        """Seconds until the next write may happen (inf when none waits)."""
        return self.pacer.wait(now) if self._queue else float("inf")

    def write(self, now: float, keepalive: float | None) -> None:
        """Write what the budget allows. A client refused for overload keeps its
        connection for `keepalive` seconds (None: every connection is closed):
        a new connection for each retry would cost an accept and a close more."""
        if not self._queue or not self.pacer.ready(now):
            return
        cpu = time.thread_time()
        for _ in range(min(REFUSAL_BATCH, len(self._queue))):
            conn, status, error, errmsg, retry_after = self._queue.popleft()
            if conn.sock.fileno() < 0:
                continue  # closed meanwhile: its client left
            reuse = (
                keepalive is not None
                and status is HTTPStatus.SERVICE_UNAVAILABLE
                and conn.head_only
                and reusable(conn.head)
            )
            method, target = request_line(conn.head)
            refuse(
                conn.sock,
                status,
                error,
                errmsg=errmsg,
                incoming_id=incoming_request_id(conn.head),
                method=method,
                target=target,
                client=conn.peer,
                started=conn.started,
                retry_after=retry_after,
                close=not reuse,
                metrics=self.metrics,
            )
            if reuse and keepalive is not None:
                conn.started = now
                self.conns.wait(conn, self.conns.idle, now + keepalive)
            else:
                self.conns.close_lingering(conn)
        self.pacer.spend(time.thread_time() - cpu)
