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
from dataclasses import dataclass, field
from decimal import Decimal

from serverproc import HOST

GRACEFUL_TIMEOUT = 20  # gunicorn.conf.py, SPEC section 5


def reference(values: list[int]) -> dict[int, Decimal]:
    keep = set(values)
    out: dict[int, Decimal] = {}
    a, b = 0, 1
    for n in range(max(values) + 1):
        if n in keep:
            out[n] = Decimal(a)  # Decimal: no int/str digit limit involved
        a, b = b, a + b
    return out


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
