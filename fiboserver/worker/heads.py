"""Request heads as the worker's event loop sees them, before any thread is involved.

Runs in the worker's event loop. The loop (fiboserver/worker/loop.py) reads every
connection without blocking and keeps the bytes until the head (request line and
header fields, up to the empty line) is complete; only then does a thread parse it
with gunicorn's parser. This module holds the pure part: where a head ends, when it
is too large to wait for, whether it asks for a probe path, and the few fields an
answer written without the app needs (method, path, request id).
"""

from __future__ import annotations

from http import HTTPStatus

# The whole head must arrive within this many seconds of the connection opening
# (or, on a kept-alive connection, of the first byte of the next request); nginx
# calls it client_header_timeout. A client that has sent nothing by then is
# closed; one that sent part of a head gets a 408. Kubelet probes, proxies and
# other services send their request at once.
HEAD_TIMEOUT = 10.0
# Largest head waited for: ingress-nginx's large_client_header_buffers (4 x 8 KiB),
# so nothing the proxy in front lets through is refused here.
MAX_HEAD_BYTES = 32 * 1024

_HEAD_END = b"\r\n\r\n"
_LINE_END = b"\r\n"
# Probe requests are GET or HEAD of the exact path, with or without a query.
_GET_OR_HEAD = (b"GET ", b"HEAD ")
_PATH_ENDS = (b" ", b"?")
_REQUEST_ID = b"x-request-id"
# Fields (lower case) that mean a body follows the head.
_BODY_FIELDS = (b"content-length:", b"transfer-encoding:")
_CONNECTION = b"connection:"


class HeadError(Exception):
    """A head the loop answers itself, without waiting for the rest of it."""

    def __init__(self, status: HTTPStatus, error: str) -> None:
        # The arguments are the exception's args already (BaseException.__new__).
        self.status = status
        self.error = error


def head_length(buf: bytes, max_line: int, max_head: int = MAX_HEAD_BYTES) -> int:
    """Bytes of `buf` that make up a complete head, or 0 while more are needed.

    Raises HeadError (414 or 431) when the request line or the head is already
    longer than gunicorn's parser would accept, so the client is answered now
    rather than when its head timeout ends. The request line is measured as
    that parser measures it: after the one empty line a client may send first
    (RFC 9112, 2.2), and, while its CRLF has not arrived, two bytes short, as if
    that CRLF were in it. A head with a bare LF counts as complete: the parser
    refuses it with a 400 at once, which is the answer.
    """
    end = buf.find(_HEAD_END)
    if end >= 0:
        return end + len(_HEAD_END)
    start = len(_LINE_END) if buf.startswith(_LINE_END) else 0
    line_end = buf.find(_LINE_END, start)
    if line_end < 0:
        line_end = len(buf) - len(_LINE_END)
    if line_end - start > max_line:
        raise HeadError(HTTPStatus.REQUEST_URI_TOO_LONG, "request line too long")
    if len(buf) > max_head:
        raise HeadError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request header too large")
    if buf.count(b"\n") != buf.count(_LINE_END):
        return len(buf)
    return 0


def probe_prefixes(paths: frozenset[str]) -> tuple[bytes, ...]:
    """Starts of the request heads that ask for one of `paths` (the probes).

    `head.startswith(prefixes)` is one C call: the loop checks every head.
    """
    return tuple(
        method + path.encode("ascii") + end
        for method in _GET_OR_HEAD
        for path in sorted(paths)
        for end in _PATH_ENDS
    )


def request_line(head: bytes) -> tuple[str, str]:
    """(method, target) of the head's request line, as far as it has them.

    For log records of answers the loop gives itself; the caller bounds them.
    A missing part is an empty string.
    """
    line = head.lstrip(_LINE_END).partition(_LINE_END)[0].partition(b"\n")[0]
    method, _, rest = line.partition(b" ")
    return method.decode("latin-1"), rest.partition(b" ")[0].decode("latin-1")


def reusable(head: bytes) -> bool:
    """Whether the connection can take its next request after an answer the loop
    wrote itself: an HTTP/1.1 GET or HEAD with no body to skip and no `close` in
    any of its Connection fields (a client may send several, RFC 9110 5.3)."""
    line, line_end, rest = head.partition(_LINE_END)
    if not line_end or not line.startswith(_GET_OR_HEAD) or not line.endswith(b" HTTP/1.1"):
        return False
    fields = rest.lower().split(_LINE_END)
    if any(field.startswith(_BODY_FIELDS) for field in fields):
        return False
    return not any(field.startswith(_CONNECTION) and b"close" in field for field in fields)


def incoming_request_id(head: bytes) -> str | None:
    """The value of the head's first X-Request-ID field (its name in any case), if
    it has one."""
    for field in head.lstrip(_LINE_END).split(_LINE_END)[1:]:  # after the request line
        name, colon, value = field.partition(b":")
        if colon and name.lower() == _REQUEST_ID:
            return value.strip(b" \t").decode("latin-1")
    return None
