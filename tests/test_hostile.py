"""Hostile clients (README "The API" and "Graceful start and stop"; docs/worker.md):
idle and slow connections hold no thread, and what the HTTP layer refuses is
answered in the API's shape with a log record.

Real gunicorn, real sockets, 127.0.0.1 only. The load measurements compare runs
of the same server in the same minute, never absolute speeds.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.pairs import measured_wrk
from bench.servers import Server
from bench.wrk import WrkSettings, cached_load, run_wrk
from tests.support.clients import (
    completed_per_second,
    exchange,
    kept_throughput,
    p99,
    parse_response,
    probe,
)
from tests.support.hosttools import require_tool
from tests.support.procinfo import HOST
from tests.support.serverproc import ServerProcess

# README "HTTP API": at most 40 characters of client input are quoted.
ECHO_LIMIT = 40
# docs/worker.md: a connection's whole head must arrive within 10 s.
HEAD_TIMEOUT = 10.0
IDLE = 200
SLOWLORIS = 50
# The issue asks for p99 over at least 20 probes; over 20 the p99 is the largest,
# which one scheduling hiccup of a shared 2-core machine decides.
PROBES = 100


@pytest.fixture(scope="module")
def prod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One PROD server as a pod runs it: one worker, four threads."""
    tmp = tmp_path_factory.mktemp("hostile")
    with ServerProcess({"env": "PROD", "maxseq": 100000}, tmp, env={"WEB_CONCURRENCY": "1"}) as srv:
        srv.wait_for("worker booted", timeout=30)
        yield srv


def _pad_fields(count: int, size: int) -> bytes:
    return b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * size) for i in range(count))


HTTP_LAYER_ERRORS = {
    "malformed request line": (b"GARBAGE\r\nX-Request-ID: bad-line\r\n\r\n", 400, "bad-line"),
    "invalid header name": (
        b"GET /prod/readyz HTTP/1.1\r\nHost: t\r\nX-Request-ID: bad-field\r\nBad Name: x\r\n\r\n",
        400,
        "bad-field",
    ),
    # Refused as soon as the line is longer than gunicorn's limit (4094): the
    # X-Request-ID after it is never read, so the answer carries a new id.
    "9,000-character URI": (
        b"GET /prod/fibo?n=" + b"1" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n",
        414,
        None,
    ),
    "100 KB of header fields": (
        b"GET /prod/readyz HTTP/1.1\r\nHost: t\r\nX-Request-ID: big-head\r\n"
        + _pad_fields(100, 1000)
        + b"\r\n",
        431,
        "big-head",
    ),
    "one 100 KB header field": (
        b"GET /prod/readyz HTTP/1.1\r\nX-Request-ID: big-field\r\nX-Pad: "
        + b"a" * 100_000
        + b"\r\n\r\n",
        431,
        "big-field",
    ),
}


@pytest.mark.parametrize("case", HTTP_LAYER_ERRORS)
def test_http_layer_errors_are_json_with_request_id_and_a_record(
    prod: ServerProcess, case: str
) -> None:
    data, status, incoming_id = HTTP_LAYER_ERRORS[case]
    mark = len(prod.records)
    raw, _ = exchange(prod.port, data)
    got, headers, body = parse_response(raw)
    assert got == status, raw[:300]
    assert headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert isinstance(error, str) and error and len(error) < 60
    request_id = headers["x-request-id"]
    assert request_id == incoming_id if incoming_id else len(request_id) == 36
    record = prod.wait_for(
        "request refused", start=mark, where=lambda r: r.get("request_id") == request_id
    )
    assert record["level"] == "WARNING" and record["status"] == status
    # What the client sent is quoted at most ECHO_LIMIT characters long.
    assert len(record["path"]) <= ECHO_LIMIT + 3 and len(record["errmsg"]) < 120
    assert prod.bad_lines == []


@pytest.mark.parametrize("digits", ["1" * 4000, "9" + "x" * 3999])
def test_a_4000_character_n_is_quoted_at_most_40_characters(
    prod: ServerProcess, digits: str
) -> None:
    path = f"/prod/fibo?n={digits}"
    assert len(f"GET {path} HTTP/1.1") < 4094  # inside the request line: the app sees it
    mark = len(prod.records)
    status, _headers, body = prod.get(path, headers={"X-Request-ID": "long-n"})
    assert status == 400
    message = json.loads(body)["error"]
    echoed = message.split(", got ", 1)[1].strip("'").removesuffix("...")
    assert digits.startswith(echoed) and len(echoed) <= ECHO_LIMIT, message
    record = prod.wait_for(
        "fibo calculate failed", start=mark, where=lambda r: r.get("request_id") == "long-n"
    )
    assert record["errmsg"] == message
    end = prod.wait_for("end", start=mark, where=lambda r: r.get("request_id") == "long-n")
    assert end["status"] == 400


class Attackers:
    """IDLE connections that send nothing and SLOWLORIS ones that send a head one
    byte a second, all opened at once."""

    def __init__(self, port: int) -> None:
        self.opened = time.monotonic()
        self.idle = [socket.create_connection((HOST, port)) for _ in range(IDLE)]
        self.slow = [socket.create_connection((HOST, port)) for _ in range(SLOWLORIS)]
        self._head = b"GET /prod/readyz HTTP/1.1\r\nHost: slow\r\nX-Slow: " + b"a" * 60
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._dribble)
        self._thread.start()

    def _dribble(self) -> None:
        sent = 0
        while not self._stop.wait(0 if sent == 0 else 1.0) and sent < len(self._head):
            for sock in self.slow:
                # A socket the server closed fails here: its answer is checked below.
                with contextlib.suppress(OSError):
                    sock.send(self._head[sent : sent + 1])
            sent += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def close(self) -> None:
        self.stop()
        for sock in self.idle + self.slow:
            sock.close()


def _watch_closes(
    socks: list[socket.socket], opened: float, limit: float
) -> tuple[list[float], list[bytes]]:
    """For each socket: seconds from `opened` until the server closed it (inf if not
    by `opened + limit`), and what the server sent before closing."""
    closed: dict[socket.socket, float] = {}
    received = {sock: b"" for sock in socks}
    with selectors.DefaultSelector() as sel:
        for sock in socks:
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ)
        while len(closed) < len(socks) and time.monotonic() < opened + limit:
            for key, _ in sel.select(0.1):
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                sock = ready
                try:
                    data = sock.recv(65536)
                except ConnectionError:
                    data = b""
                if data:
                    received[sock] += data
                    continue
                closed[sock] = time.monotonic() - opened
                sel.unregister(sock)
    return [closed.get(sock, float("inf")) for sock in socks], [received[s] for s in socks]


ROUNDS = 5  # alternating runs with and without the attackers, each set pooled


def test_idle_and_slowloris_connections_hold_no_thread(tmp_path: Path) -> None:
    require_tool("wrk")
    load = cached_load("/prod")
    ws = WrkSettings(threads=1, connections=8, duration_s=2, warmup_s=1, rounds=ROUNDS)
    log_path = tmp_path / "server.log"  # not parsed while loaded: parsing costs CPU
    server = Server(
        "fiboserver",
        {"env": "PROD", "maxseq": 100000},
        tmp_path,
        env={"WEB_CONCURRENCY": "1"},
        log_path=log_path,
    )
    alone: list[dict[str, Any]] = []
    attacked: list[dict[str, Any]] = []
    latencies: list[float] = []
    with server:
        server.wait_ready("/prod/readyz")
        run_wrk(server.port, load, ws, ws.warmup_s)
        for round_no in range(ROUNDS):
            alone.append(measured_wrk(server, load, ws))
            attackers = Attackers(server.port)
            try:
                count = PROBES // ROUNDS + (round_no < PROBES % ROUNDS)
                prober = threading.Thread(
                    target=_probe_readyz, args=(server.port, count, ws.duration_s, latencies)
                )
                prober.start()
                attacked.append(measured_wrk(server, load, ws))
                prober.join()
                if round_no < ROUNDS - 1:
                    continue
                # The last round's attackers stay until the server closes them.
                assert time.monotonic() - attackers.opened < HEAD_TIMEOUT, "measured too late"
                closes, answers = _watch_closes(
                    attackers.idle + attackers.slow, attackers.opened, HEAD_TIMEOUT + 5
                )
            finally:
                attackers.close()
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    refused = [r for r in records if r["msg"] == "request refused" and r["status"] == 408]
    kept, basis = kept_throughput(attacked, alone)
    print(
        f"\nreadyz with {IDLE} idle + {SLOWLORIS} slowloris connections: "
        f"p99 {p99(latencies) * 1000:.1f} ms over {len(latencies)}; wrk kept {kept:.2f} "
        f"{basis} ({[round(completed_per_second(r)) for r in attacked]} req/s with them, "
        f"{[round(completed_per_second(r)) for r in alone]} without); "
        f"closed after {min(closes):.2f}..{max(closes):.2f} s"
    )
    assert len(latencies) == PROBES and p99(latencies) < 0.050
    for run in attacked:
        assert sum(run[k] for k in ("err_connect", "err_read", "err_write", "err_timeout")) == 0
    assert kept >= 0.8, basis
    # Closed after the documented head timeout, not before it and not much after.
    for seconds in closes:
        assert HEAD_TIMEOUT - 0.5 <= seconds <= HEAD_TIMEOUT + 3, closes
    # An idle client is closed silently; a slowloris one that sent part of a head
    # is told why, in JSON.
    assert answers[:IDLE] == [b""] * IDLE
    for raw in answers[IDLE:]:
        status, headers, body = parse_response(raw)
        assert status == 408 and json.loads(body) == {"error": "request head timeout"}
        assert headers["x-request-id"]
    assert len(refused) == SLOWLORIS


def _probe_readyz(port: int, count: int, within: float, latencies: list[float]) -> None:
    for _ in range(count):
        time.sleep(within / count / 2)  # spread over the run, from after its start
        status, seconds = probe(port, "/prod/readyz")
        assert status == 200
        latencies.append(seconds)
