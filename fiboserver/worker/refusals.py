"""Answers the worker writes itself, without the app: requests it refuses.

Runs in the worker's event loop, and in a pool thread for what gunicorn's parser
refuses. The worker refuses a request when it is overloaded (503) and when the
HTTP layer cannot read it (400, 408, 414, 431, ...). Those answers keep the
API's shape (README "HTTP API"): a JSON `{"error": ...}` body, `X-Request-ID`,
and a log record saying what was refused: one `request refused` each, except
for overload, whose refusals the loop writes in batches, each batch with one
`requests refused` record and its `count`. Every one is counted in the app's
request histogram (fiboserver.serving.RequestSink) like an `end`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import socket
import time
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus

from fiboserver.echo import bounded, quoted
from fiboserver.gunicorn_internals import http_errors
from fiboserver.request_ids import choose_request_id
from fiboserver.serving import RequestSink
from fiboserver.worker.admission import Pacer
from fiboserver.worker.connections import Conn, Connections, State
from fiboserver.worker.heads import incoming_request_id, request_line, reusable

# Refusals written between two looks at the pacer.
REFUSAL_BATCH = 32
# What a request refused for overload is told (README "Overload").
OVERLOADED = "overloaded"
RETRY_AFTER_OVERLOADED = 1

log = logging.getLogger("fiboserver.access")

# The HTTP layer's errors as status and the message the client gets. The message
# never quotes the client: the log record does, bounded.
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


@dataclass(frozen=True, slots=True)
class Refusal:
    """What the server answers without the app, and why.

    `error` is what the client is told; `errmsg` what the log record says (it may
    quote the client, bounded); `retry_after` the seconds of a Retry-After field.
    """

    status: HTTPStatus
    error: str
    errmsg: str
    retry_after: int | None = None

    @property
    def overload(self) -> bool:
        return self.error == OVERLOADED


def overloaded(waiting: int) -> Refusal:
    """The refusal of a request that cannot start within the queue deadline."""
    return Refusal(
        HTTPStatus.SERVICE_UNAVAILABLE,
        OVERLOADED,
        f"overloaded: {waiting} requests waiting",
        RETRY_AFTER_OVERLOADED,
    )


def parse_error(exc: BaseException) -> Refusal | None:
    """The refusal of an error of the HTTP layer; None for any other exception
    (a server fault, answered 500)."""
    for kind, status, message in _PARSE_ERRORS:
        if isinstance(exc, kind):
            return Refusal(status, message, f"{message}: {quoted(str(exc))}")
    return None


@dataclass(frozen=True, slots=True)
class Refused:
    """The request a refusal answers, as far as the loop has read it: the keys of
    its log record (method and path bounded like every echo of client input)."""

    request_id: str
    method: str
    path: str
    client: str
    started: float  # time.monotonic() when the server began waiting for it

    @classmethod
    def of(cls, head: bytes, client: str, started: float) -> Refused:
        method, target = request_line(head)
        return cls(
            choose_request_id(incoming_request_id(head)),
            bounded(method),
            bounded(target.partition("?")[0]),
            client,
            started,
        )


def response(
    refusal: Refusal, request_id: str, *, with_body: bool = True, close: bool = True
) -> bytes:
    """The whole answer: JSON body, X-Request-ID, and `Connection: close` if `close`."""
    before, after = _template(refusal.status, refusal.error, refusal.retry_after, with_body, close)
    return before + request_id.encode("latin-1") + after


def _build_template(
    status: HTTPStatus, error: str, retry_after: int | None, with_body: bool, close: bool
) -> tuple[bytes, bytes]:
    """An answer's bytes before and after its request id."""
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


# Built once, since a server shedding load writes the same 503 thousands of times a
# second. Wrapped here, not decorated: mutmut does not mutate decorated functions.
_template = functools.lru_cache(maxsize=64)(_build_template)


def refuse(
    sock: socket.socket,
    refusal: Refusal,
    request: Refused,
    sink: RequestSink | None,
    *,
    close: bool = True,
) -> float:
    """Write `refusal` to `sock` (best effort, never blocking for long), count it
    in `sink`, and log it unless it is an overload's (logged together, by
    `PendingRefusals`). Returns the milliseconds since the request began."""
    data = response(refusal, request.request_id, with_body=request.method != "HEAD", close=close)
    # One send: the answer is a few hundred bytes and the socket's buffer is
    # empty (nothing was answered on it since the client last read). If the
    # client has left, the record still says what was refused.
    with contextlib.suppress(OSError):
        sock.send(data, socket.MSG_DONTWAIT)
    duration_ms = round((time.monotonic() - request.started) * 1000, 3)
    status = refusal.status.value
    if sink is not None:
        sink.observe(request.method, request.path, status, duration_ms / 1000)
    if not refusal.overload:
        log.warning(
            "request refused",
            extra={
                "request_id": request.request_id,
                "method": request.method,
                "path": request.path,
                "client": request.client,
                "status": status,
                "duration_ms": duration_ms,
                "errmsg": refusal.errmsg,
            },
        )
    return duration_ms


def refuse_error(
    sock: socket.socket, exc: BaseException, conn: Conn | None, peer: str, sink: RequestSink | None
) -> None:
    """Answer what gunicorn's parser or request handling raised (in the pool
    thread that serves `conn`): the HTTP layer's status, or 500 for anything else."""
    refusal = parse_error(exc) or Refusal(
        HTTPStatus.INTERNAL_SERVER_ERROR, "internal error", f"internal error: {quoted(str(exc))}"
    )
    if conn is None:
        request = Refused.of(b"", peer, time.monotonic())
    else:
        request = Refused.of(conn.head, conn.peer, conn.started)
    refuse(sock, refusal, request, sink)


class PendingRefusals:
    """Refusals the event loop has decided on, written within its CPU budget.

    Each costs the loop the answer, the record and a system call; `pacer`
    (fiboserver.worker.admission.Pacer) bounds their share of its CPU. Until then
    the connection waits (REFUSING), its request read and nothing else done.
    """

    def __init__(self, conns: Connections, pacer: Pacer, sink: RequestSink | None) -> None:
        self.conns = conns
        self.pacer = pacer
        self.sink = sink
        self._queue: deque[tuple[Conn, Refusal]] = deque()

    def add(self, conn: Conn, refusal: Refusal) -> None:
        self.conns.hold(conn, State.REFUSING)
        self._queue.append((conn, refusal))

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
        waits: list[float] = []  # of the overload's refusals, in ms
        last = None
        for _ in range(min(REFUSAL_BATCH, len(self._queue))):
            conn, refusal = self._queue.popleft()
            if conn.state is State.CLOSED:
                continue  # its client left meanwhile
            reuse = (
                keepalive is not None
                and refusal.status is HTTPStatus.SERVICE_UNAVAILABLE
                and conn.head_only
                and reusable(conn.head)
            )
            request = Refused.of(conn.head, conn.peer, conn.started)
            duration_ms = refuse(conn.sock, refusal, request, self.sink, close=not reuse)
            if refusal.overload:
                waits.append(duration_ms)
                last = refusal
            if reuse and keepalive is not None:
                conn.started = now
                self.conns.wait(conn, State.IDLE, now + keepalive)
            else:
                self.conns.close_lingering(conn)
        if last is not None:
            _log_shed(last, len(waits), max(waits))
        self.pacer.spend(time.thread_time() - cpu)


def _log_shed(refusal: Refusal, count: int, longest_ms: float) -> None:
    """One record for `count` requests refused together for overload, instead of
    one each: a flood is refused hundreds of times a second, and a record per
    refusal would cost the loop a large share of each refusal's CPU and hand the
    flood on to the log pipeline (docs/worker.md). `duration_ms` is the longest
    any of them waited."""
    log.warning(
        "requests refused",
        extra={
            "status": refusal.status.value,
            "count": count,
            "duration_ms": longest_ms,
            "errmsg": refusal.errmsg,
        },
    )
