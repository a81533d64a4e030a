"""A flood of costly requests against one pod's worker, with the kubelet's probes
and a client's own requests during it: the one run that tests/test_overload.py
judges by behaviour and `make bench` (bench/overload.py) measures for speed.

2,000 wrk connections ask uncached n in 90,000..100,000 from a PROD server with
one worker (four threads). Real gunicorn, real sockets, 127.0.0.1 only. wrk and
its bookkeeping come from bench/ (bench.wrk, bench.pairs), as for every test that
loads a server.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import resource
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.pairs import measured_wrk
from bench.procstat import server_cpu_ticks
from bench.servers import Server
from bench.wrk import Load, WrkSettings, random_load, run_wrk
from tests.support.clients import probe
from tests.support.procinfo import HOST, established, wait_until

FLOOD = 2000
LOWEST_N = 90_000
LOAD: Load = random_load("/prod", 100_000, seed=12, lowest=LOWEST_N)
# wrk's own timeout (10 s) counts as a socket error: no request may wait that long.
# Two threads spread 2,000 connections' bookkeeping.
FLOOD_WRK = WrkSettings(
    threads=2, connections=FLOOD, duration_s=24, warmup_s=0, rounds=1, timeout_s=10
)
# The unloaded peak (the bench's kept ratio only). One wrk thread drives far more
# than this server answers; 10 s or more per window, since a shared 2-core
# machine's throughput drifts by several percent between windows of a few seconds.
PEAK = WrkSettings(threads=1, connections=16, duration_s=10, warmup_s=3, rounds=1, timeout_s=10)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float


@dataclass
class FloodRun:
    """What one flood showed; the fields after `after` are filled with measure_peak."""

    flood: dict[str, Any] = field(default_factory=dict)  # bench.pairs.measured_wrk's keys
    probes: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # (status, s)
    direct: list[Answer] = field(default_factory=list)  # asked until one was refused
    after: Answer | None = None  # once the flood's connections were closed
    records: list[dict[str, Any]] = field(default_factory=list)  # the server's log
    unloaded: list[dict[str, Any]] = field(default_factory=list)  # peak before and after
    normal_s: float = 0.0  # one uncached request, unloaded (median of 5)
    # (time.time(), server CPU ticks) at the steady state's start and end.
    window: tuple[float, int, float, int] | None = None


@contextlib.contextmanager
def open_files(count: int) -> Iterator[None]:
    """wrk keeps one descriptor per connection, and inherits this process's limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < count:
        raise RuntimeError(f"RLIMIT_NOFILE hard limit {hard} < {count}: raise it for wrk")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, count), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextlib.contextmanager
def on_cpus(cpus: set[int]) -> Iterator[None]:
    """This process, and what it starts meanwhile, runs on `cpus` only."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def fibo_answer(port: int, n: int) -> Answer:
    """GET fibo?n on a fresh connection."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request("GET", f"/prod/fibo?n={n}")
        resp = conn.getresponse()
        body = resp.read()
        return Answer(resp.status, dict(resp.headers), body, time.perf_counter() - started)
    finally:
        conn.close()


def shed_count(log_text: str) -> int:
    """Requests refused for overload so far, from the `requests refused` records."""
    return sum(
        json.loads(line)["count"] for line in log_text.splitlines() if "requests refused" in line
    )


def run_flood(log_path: Path, probes: int, *, measure_peak: bool) -> FloodRun:
    """One flood against a new server logging to `log_path`; `probes` of each path.
    With `measure_peak`, the unloaded peak before and after and a steady state."""
    server = Server(
        "fiboserver",
        {"env": "PROD", "maxseq": 100_000, "cacheresult": False},
        log_path.parent,
        env={"WEB_CONCURRENCY": "1"},
        log_path=log_path,
    )
    run = FloodRun()
    # A PROD pod is Guaranteed with one whole CPU: with the kubelet's static CPU
    # manager it has that CPU to itself, and its clients run elsewhere. So here:
    # the server on one CPU, wrk and the caller on the other. Unpinned, the
    # scheduler's placement of the worker's five threads over two CPUs changes
    # the unloaded throughput from one run to the next (docs/worker.md).
    server_cpu, client_cpu = sorted(os.sched_getaffinity(0))[-2:]
    with on_cpus({server_cpu}):
        server.start()
    with contextlib.closing(server), on_cpus({client_cpu}), open_files(FLOOD + 100):
        server.wait_ready("/prod/readyz")
        if measure_peak:
            run_wrk(server.port, LOAD, PEAK, PEAK.warmup_s)
            run.normal_s = statistics.median(
                fibo_answer(server.port, 95_000).seconds for _ in range(5)
            )
            run.unloaded.append(measured_wrk(server, LOAD, PEAK))
        _flood(server, probes, measure_peak, run)
        wait_until(lambda: established(server.port) < 10, 30, "the flood's connections closed")
        run.after = fibo_answer(server.port, 95_000)
        if measure_peak:
            run.unloaded.append(measured_wrk(server, LOAD, PEAK))
        server.stop()
    run.records = [json.loads(line) for line in log_path.read_text().splitlines()]
    return run


def _flood(server: Server, probes: int, steady: bool, run: FloodRun) -> None:
    assert server.log_path is not None  # not parsed while loaded: parsing costs CPU
    log_path = server.log_path
    flooding = threading.Thread(
        target=lambda: run.flood.update(measured_wrk(server, LOAD, FLOOD_WRK))
    )
    flooding.start()
    # The steady state ends a little before wrk stops sending.
    steady_until = time.time() + FLOOD_WRK.duration_s - 1.5
    try:
        # Under way once every connection could have had a 503: the log says so.
        # The seconds before (2,000 connections accepted, the queue filling) are
        # the flood's start, not the flood.
        wait_until(
            lambda: shed_count(log_path.read_text()) >= FLOOD, 15, f"{FLOOD} refusals", interval=0.1
        )
        start = (time.time(), server_cpu_ticks(server))
        run.probes = {"healthz": [], "readyz": []}
        for i in range(2 * probes):
            path = "healthz" if i % 2 == 0 else "readyz"
            run.probes[path].append(probe(server.port, f"/prod/{path}"))
            time.sleep(0.01)
        slowest = max(s for answers in run.probes.values() for _, s in answers)
        assert flooding.is_alive(), f"the flood ended before the probes (slowest {slowest:.1f} s)"
        # A client's own view of a refusal while the flood goes on: it asks
        # until it is refused (a request may also find room in the queue).
        while not any(a.status == 503 for a in run.direct) and len(run.direct) < 50:
            run.direct.append(fibo_answer(server.port, LOWEST_N + len(run.direct)))
        if steady:
            time.sleep(max(0.0, steady_until - time.time()))
            run.window = (*start, time.time(), server_cpu_ticks(server))
            assert flooding.is_alive(), "the flood ended before its steady state was measured"
            assert run.window[2] - run.window[0] >= 10, "a steady state too short to measure"
    finally:
        flooding.join(FLOOD_WRK.duration_s + 60)
