"""Clients of the HTTPS edge: `curl`, and `Load`, which counts the requests that failed.

`TLSConnection` speaks HTTPS to 127.0.0.1 under the edge's host name, as
`curl --resolve` does; `Load` sends requests from several threads over it and
checks every answer against the Fibonacci number it must be.

Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.fibref import fib_table
from tests.support.procinfo import HOST


def curl(curl_bin: str, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run curl; never raises on its exit status (the tests assert it)."""
    return subprocess.run(
        [curl_bin, "--silent", "--show-error", "--max-time", "10", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class TLSConnection(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1 while speaking to `host` (SNI and certificate check), as
    `curl --resolve host:port:127.0.0.1` does. Reuses the previous TLS session."""

    def __init__(
        self, host: str, port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None
    ) -> None:
        super().__init__(host, port, timeout=15, context=ctx)
        self._ctx = ctx
        self._session = session

    def connect(self) -> None:
        raw = socket.create_connection((HOST, self.port), timeout=self.timeout)
        self.sock = self._ctx.wrap_socket(raw, server_hostname=self.host, session=self._session)


@dataclass
class LoadReport:
    sent: int = 0
    ok: int = 0
    failures: list[str] = field(default_factory=list)  # first few, for the log
    failed: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    def line(self) -> str:
        lat = sorted(self.latencies) or [0.0]
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        return (
            f"requests sent={self.sent} ok={self.ok} failed={self.failed} "
            f"in {self.seconds:.1f} s ({self.sent / max(self.seconds, 1e-9):.0f} req/s, "
            f"latency p99 {p99 * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms)"
        )


class Load:
    """`threads` clients, each sending GET <path>?n=<random> at about `rate` req/s over
    HTTPS to the edge, one TLS connection per request (session resumed).

    Failed = anything but a 200 whose JSON `result` is the right Fibonacci number:
    other statuses, resets, timeouts, TLS errors. One connection per request keeps
    nginx's own config reloads (the drill's stand-in for an endpoint change, which
    ingress-nginx applies without a reload) from closing idle client connections
    under a request and counting that against the replicas."""

    def __init__(
        self,
        host: str,
        port: int,
        cafile: Path,
        path: str,
        *,
        threads: int = 4,
        rate: float = 25.0,
        max_n: int = 3000,
    ) -> None:
        self.host, self.port, self.path = host, port, path
        self.ctx = ssl.create_default_context(cafile=str(cafile))
        self.threads, self.rate, self.max_n = threads, rate, max_n
        self.report = LoadReport()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._t0 = 0.0
        self._expected = fib_table(range(max_n + 1))

    def _one(self, rng: random.Random, session: ssl.SSLSession | None) -> ssl.SSLSession | None:
        n = rng.randint(0, self.max_n)
        conn = TLSConnection(self.host, self.port, self.ctx, session)
        err: str | None = None
        t0 = time.monotonic()
        try:
            conn.request("GET", f"{self.path}?n={n}", headers={"Connection": "close"})
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                err = f"status {resp.status}"
            elif json.loads(body).get("result") != self._expected[n]:
                err = f"wrong result for n={n}"
            sock = conn.sock
            if isinstance(sock, ssl.SSLSocket) and sock.session is not None:
                session = sock.session
        except Exception as exc:  # every transport error is a failed request
            err = f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()
        with self._lock:
            self.report.latencies.append(time.monotonic() - t0)
            self.report.sent += 1
            if err is None:
                self.report.ok += 1
            else:
                self.report.failed += 1
                if len(self.report.failures) < 5:
                    t = time.monotonic() - self._t0
                    self.report.failures.append(f"t={t:.2f}s {err}")
        return session

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        session: ssl.SSLSession | None = None
        period = 1.0 / self.rate
        next_at = time.monotonic()
        while not self._stop.is_set():
            session = self._one(rng, session)
            next_at += period
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                next_at = time.monotonic()  # behind: do not burst to catch up

    def failed(self) -> int:
        """Requests failed so far."""
        with self._lock:
            return self.report.failed

    def start(self) -> Load:
        self._t0 = time.monotonic()
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i,), daemon=True, name=f"load-{i}")
            t.start()
            self._workers.append(t)
        return self

    def stop(self) -> LoadReport:
        self._stop.set()
        for t in self._workers:
            t.join(timeout=30)
        self.report.seconds = time.monotonic() - self._t0
        return self.report
