"""Idle and slowloris connections against one pod's worker while wrk loads it and
`readyz` is probed: the one run that tests/test_hostile.py judges by behaviour
and `make bench` (bench/overload.py) measures for speed.

Real gunicorn, real sockets, 127.0.0.1 only; wrk and its bookkeeping come from
bench/ (bench.wrk, bench.pairs), as for every test that loads a server.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.pairs import measured_wrk
from bench.servers import Server
from bench.wrk import Load, WrkSettings, cached_load, run_wrk
from tests.support.clients import probe
from tests.support.procinfo import HOST

IDLE = 200
SLOWLORIS = 50
LOAD: Load = cached_load("/prod")


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
                # A socket the server closed fails here: its answer is read apart.
                with contextlib.suppress(OSError):
                    sock.send(self._head[sent : sent + 1])
            sent += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for sock in self.idle + self.slow:
            sock.close()


def watch_closes(
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


@dataclass
class AttackRun:
    """What the rounds showed; `alone` is filled with baseline."""

    attacked: list[dict[str, Any]] = field(default_factory=list)  # wrk, attackers open
    alone: list[dict[str, Any]] = field(default_factory=list)  # wrk, no attackers
    probes: list[tuple[int, float]] = field(default_factory=list)  # readyz: (status, s)
    # The last round's attackers, watched until the server closed them.
    closes: list[float] = field(default_factory=list)  # seconds after they opened
    answers: list[bytes] = field(default_factory=list)  # idle ones first
    records: list[dict[str, Any]] = field(default_factory=list)  # the server's log


def run_attacks(
    log_path: Path, rounds: int, probes: int, head_timeout: float, *, baseline: bool
) -> AttackRun:
    """`rounds` wrk runs of 2 s on cached n with new attackers open, `probes` readyz
    spread over them; with `baseline`, a run without attackers before each. The
    last round's attackers stay until the server closes them, watched for
    `head_timeout` + 5 s from their opening."""
    ws = WrkSettings(threads=1, connections=8, duration_s=2, warmup_s=1, rounds=rounds)
    server = Server(
        "fiboserver",
        {"env": "PROD", "maxseq": 100000},
        log_path.parent,
        env={"WEB_CONCURRENCY": "1"},
        log_path=log_path,  # not parsed while loaded: parsing costs CPU
    )
    run = AttackRun()
    with server:
        server.wait_ready("/prod/readyz")
        run_wrk(server.port, LOAD, ws, ws.warmup_s)
        for round_no in range(rounds):
            if baseline:
                run.alone.append(measured_wrk(server, LOAD, ws))
            count = probes // rounds + (round_no < probes % rounds)
            last = round_no == rounds - 1
            _attacked_round(server, ws, count, run, head_timeout if last else None)
    run.records = [json.loads(line) for line in log_path.read_text().splitlines()]
    return run


def _attacked_round(
    server: Server, ws: WrkSettings, probes: int, run: AttackRun, watch: float | None
) -> None:
    attackers = Attackers(server.port)
    try:
        prober = threading.Thread(
            target=_probe_readyz, args=(server.port, probes, ws.duration_s, run.probes)
        )
        prober.start()
        run.attacked.append(measured_wrk(server, LOAD, ws))
        prober.join()
        if watch is None:
            return
        # Measured while every attacker was still open, or it measured nothing.
        assert time.monotonic() - attackers.opened < watch, "measured too late"
        run.closes, run.answers = watch_closes(
            attackers.idle + attackers.slow, attackers.opened, watch + 5
        )
    finally:
        attackers.close()


def _probe_readyz(port: int, count: int, within: float, out: list[tuple[int, float]]) -> None:
    for _ in range(count):
        time.sleep(within / count / 2)  # spread over the run, from after its start
        out.append(probe(port, "/prod/readyz"))
