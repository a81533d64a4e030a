"""Test clients: one request per fresh TCP connection, counted by outcome.

A request whose connection was established must get a complete, correct 200;
a connect that is refused or times out is counted apart (expected once a
server stops taking connections); a reset, an EOF or a truncated or wrong body
after connect is a failure.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from tests.support.fibref import fib_table
from tests.support.procinfo import HOST

GRACEFUL_TIMEOUT = 20  # gunicorn.conf.py's graceful_timeout (README "Graceful start and stop")


def reference(values: list[int]) -> dict[int, Decimal]:
    """F(n) for each n as Decimal: no int/str digit limit involved."""
    return {n: Decimal(v) for n, v in fib_table(values).items()}


def request_once(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request with `Connection: close` on `conn`, closed after:
    (status, headers, body)."""
    try:
        conn.request(method, path, headers={"Connection": "close", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


@dataclass
class Counts:
    sent: int = 0  # connection established, request sent
    ok: int = 0  # complete 200 with the right result
    refused: int = 0  # connect refused or timed out (expected once stopping)
    failed: int = 0  # anything else after the connection was established
    after_signal_ok: int = 0
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def one_request(
    port: int, n: int, expected: Decimal, counts: Counts, signalled: threading.Event
) -> bool:
    """One GET on a fresh connection; False once connecting no longer works."""
    try:
        sock = socket.create_connection((HOST, port), timeout=3)
    except OSError:  # refused, or SYN dropped while draining: the expected end
        with counts.lock:
            counts.refused += 1
        return False
    sock.settimeout(GRACEFUL_TIMEOUT + 10)
    conn = http.client.HTTPConnection(HOST, port)
    conn.sock = sock  # use exactly this connection, never a silent reconnect
    try:
        with counts.lock:
            counts.sent += 1
        conn.request("GET", f"/prod/fibo?n={n}", headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read()  # IncompleteRead if truncated
        if resp.status != 200:
            raise AssertionError(f"status {resp.status}: {body[:200]!r}")
        result = json.loads(body, parse_int=Decimal)["result"]
        if result != expected:
            raise AssertionError(f"n={n}: wrong result")
        with counts.lock:
            counts.ok += 1
            if signalled.is_set():
                counts.after_signal_ok += 1
    except Exception as exc:  # reset, EOF, truncation, bad body: all failures
        with counts.lock:
            counts.failed += 1
            counts.failures.append(f"n={n}: {type(exc).__name__}: {exc}")
    finally:
        conn.close()
    return True


def exchange(port: int, data: bytes, timeout: float = 15.0) -> tuple[bytes, float]:
    """Send `data` on a fresh connection, half-close, read until the server closes:
    (everything it sent, seconds from connect to its close)."""
    started = time.perf_counter()
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks), time.perf_counter() - started


def next_json_answer(sock: socket.socket) -> tuple[int, object]:
    """(status, decoded JSON body) of the next response on a connection the
    caller holds (kept alive, pipelined)."""
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    return resp.status, json.loads(resp.read())


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lower-case names, body) of one raw HTTP/1.1 response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    headers = {}
    for field_line in fields:
        name, _, value = field_line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def probe(port: int, path: str, timeout: float = 15.0) -> tuple[int, float]:
    """GET `path` on a fresh connection and read the answer by its length, as the
    kubelet does (Connection: close, no wait for the server's FIN): (status, seconds)."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        resp.read()
        return resp.status, time.perf_counter() - started
    finally:
        conn.close()


def p99(samples: list[float]) -> float:
    """Nearest-rank 99th percentile (of fewer than 100 samples, the largest)."""
    ordered = sorted(samples)
    return ordered[max(0, -(-99 * len(ordered) // 100) - 1)]
