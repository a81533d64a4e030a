"""Overload (README "Graceful start and stop", docs/worker.md): a flood of costly
requests is shed, not queued for seconds, and the kubelet's probes keep answering.

2,000 wrk connections ask uncached n in 90,000..100,000 from a pod's server (one
worker, four threads). Real gunicorn, real sockets, 127.0.0.1 only. Speeds are
only compared with the same server's own unloaded runs in the same minute.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import json
import os
import resource
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.pairs import measured_wrk
from bench.procstat import CLK_TCK, server_cpu_ticks
from bench.servers import Server
from bench.wrk import Load, WrkSettings, random_load, run_wrk
from tests.support.clients import completed_per_second, kept_throughput, p99, probe
from tests.support.hosttools import require_tool
from tests.support.procinfo import HOST, established, wait_until

FLOOD = 2000
# Of each path. The issue asks for p99 over at least 20; over 20 the p99 is the
# largest, which one scheduling hiccup of a shared 2-core machine decides.
PROBES = 100
LOWEST_N = 90_000
# One wrk thread drives far more than this server answers; the flood's second
# thread spreads 2,000 connections' bookkeeping. The unloaded runs and the flood's
# steady state are each measured over 10 s or more: a shared 2-core machine's
# throughput drifts by several percent between windows of a few seconds.
PEAK = WrkSettings(threads=1, connections=16, duration_s=10, warmup_s=3, rounds=1, timeout_s=10)
# wrk's own timeout (10 s) counts as a socket error: no request may wait that long.
FLOOD_WRK = WrkSettings(
    threads=2, connections=FLOOD, duration_s=24, warmup_s=0, rounds=1, timeout_s=10
)


@pytest.fixture
def open_files_for_wrk() -> Iterator[None]:
    """wrk keeps one descriptor per connection, and inherits this process's limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < FLOOD + 100:
        pytest.fail(f"RLIMIT_NOFILE hard limit {hard} < {FLOOD + 100}: raise it for wrk")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, FLOOD + 100), hard))
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


def single_request_seconds(port: int, n: int) -> float:
    status, seconds = probe(port, f"/prod/fibo?n={n}")
    assert status == 200
    return float(seconds)


def fibo_answer(port: int, n: int) -> tuple[int, dict[str, str], bytes, float]:
    """GET fibo?n on a fresh connection: status, headers, body, seconds."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request("GET", f"/prod/fibo?n={n}")
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, dict(resp.headers), body, time.perf_counter() - started
    finally:
        conn.close()


def steady_run(
    records: list[dict[str, Any]], window: tuple[float, int, float, int], other_cores: float
) -> dict[str, Any]:
    """The requests completed between window's two (time.time(), server CPU ticks)
    samples, from the `end` records' own timestamps, as a measured run
    (bench.pairs.measured_wrk's keys) that tests/support/clients.py compares."""
    t0, cpu0, t1, cpu1 = window
    completed = sum(
        1
        for r in records
        if r["msg"] == "end"
        and r["path"] == "/prod/fibo"
        and r["status"] == 200
        and t0 <= dt.datetime.fromisoformat(r["ts"].replace("Z", "+00:00")).timestamp() <= t1
    )
    return {
        "requests": completed,
        "err_status": 0,
        "duration_us": (t1 - t0) * 1e6,
        "server_cpu_us_per_req": (cpu1 - cpu0) / CLK_TCK * 1e6 / max(completed, 1),
        "other_cores": other_cores,
    }


def shed_count(log_text: str) -> int:
    """Requests refused for overload so far, from the `requests refused` records."""
    return sum(
        json.loads(line)["count"] for line in log_text.splitlines() if "requests refused" in line
    )


def log_records(path: Path) -> list[dict[str, Any]]:
    # Every line is one JSON object (README "Logs").
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_flood_is_shed_while_probes_answer_and_work_goes_on(
    tmp_path: Path, open_files_for_wrk: None, capsys: pytest.CaptureFixture[str]
) -> None:
    require_tool("wrk")
    load: Load = random_load("/prod", 100_000, seed=12, lowest=LOWEST_N)
    log_path = tmp_path / "server.log"  # not parsed while loaded: parsing costs CPU
    server = Server(
        "fiboserver",
        {"env": "PROD", "maxseq": 100_000, "cacheresult": False},
        tmp_path,
        env={"WEB_CONCURRENCY": "1"},
        log_path=log_path,
    )
    flood: dict[str, Any] = {}
    # A PROD pod is Guaranteed with one whole CPU: with the kubelet's static CPU
    # manager it has that CPU to itself, and its clients run elsewhere. So here:
    # the server on one CPU, wrk and this test on the other. Unpinned, the
    # scheduler's placement of the worker's five threads over two CPUs changes
    # the unloaded throughput from one run to the next (docs/performance.md).
    server_cpu, client_cpu = sorted(os.sched_getaffinity(0))[-2:]
    with on_cpus({server_cpu}):
        server.start()
    with contextlib.closing(server), on_cpus({client_cpu}):
        server.wait_ready("/prod/readyz")
        run_wrk(server.port, load, PEAK, PEAK.warmup_s)
        normal = statistics.median(single_request_seconds(server.port, 95_000) for _ in range(5))
        before = measured_wrk(server, load, PEAK)

        flooding = threading.Thread(
            target=lambda: flood.update(measured_wrk(server, load, FLOOD_WRK))
        )
        flooding.start()
        # The steady state ends a little before wrk stops sending.
        steady_until = time.time() + FLOOD_WRK.duration_s - 1.5
        try:
            # Under way once every connection could have had a 503: the log says so.
            wait_until(
                lambda: shed_count(log_path.read_text()) >= FLOOD,
                15,
                f"{FLOOD} refusals",
                interval=0.1,
            )
            # The steady state is measured from here to the flood's last seconds:
            # the first seconds (2,000 connections accepted, the queue filling)
            # are the flood's start, not the flood.
            start = (time.time(), server_cpu_ticks(server))
            latencies: dict[str, list[float]] = {"healthz": [], "readyz": []}
            for i in range(2 * PROBES):
                path = "healthz" if i % 2 == 0 else "readyz"
                status, seconds = probe(server.port, f"/prod/{path}")
                assert status == 200, path
                latencies[path].append(seconds)
                time.sleep(0.01)
            assert flooding.is_alive(), "the flood ended before the probes"
            # A client's own view of a refusal while the flood goes on: it asks
            # until it is refused (a request may also find room in the queue).
            direct: list[tuple[int, dict[str, str], bytes, float]] = []
            while not any(d[0] == 503 for d in direct) and len(direct) < 50:
                direct.append(fibo_answer(server.port, LOWEST_N + len(direct)))
            time.sleep(max(0.0, steady_until - time.time()))
            window = (*start, time.time(), server_cpu_ticks(server))
            assert flooding.is_alive(), "the flood ended before its steady state was measured"
            assert window[2] - window[0] >= 10, "a steady state too short to measure"
        finally:
            flooding.join(FLOOD_WRK.duration_s + 60)
        # After the flood: once the server has closed its 2,000 connections.
        wait_until(lambda: established(server.port) < 10, 30, "the flood's connections closed")
        after = single_request_seconds(server.port, 95_000)
        unloaded_after = measured_wrk(server, load, PEAK)
        server.stop()
    records = log_records(log_path)

    steady = steady_run(records, window, flood["other_cores"])
    kept, basis = kept_throughput([steady], [before, unloaded_after])
    # An overload's refusals are logged in batches: one record and its count each.
    shed = [r for r in records if r["msg"] == "requests refused"]
    refused = [r for r in records if r["msg"] == "request refused"]
    ends = [r for r in records if r["msg"] == "end" and r["path"] == "/prod/fibo"]
    shed_ms = sorted(r["duration_ms"] for r in shed)  # the longest wait of each batch
    with capsys.disabled():
        print(
            f"\nflood of {FLOOD}: completed {completed_per_second(steady):.0f}/s "
            f"(whole run {completed_per_second(flood):.0f}/s), unloaded "
            f"{completed_per_second(before):.0f}/s and "
            f"{completed_per_second(unloaded_after):.0f}/s; "
            f"kept {kept:.2f} {basis}; "
            f"{flood['err_status'] / (flood['duration_us'] / 1e6):.0f} 503/s, the longest wait "
            f"of a batch {statistics.median(shed_ms):.0f} ms median, {p99(shed_ms):.0f} ms p99 "
            f"({len(shed)} batches); "
            f"probes p99 healthz {p99(latencies['healthz']) * 1000:.0f} ms, readyz "
            f"{p99(latencies['readyz']) * 1000:.0f} ms; after the flood "
            f"{after * 1000:.1f} ms (unloaded {normal * 1000:.1f} ms); "
            f"a client's 503s after {[round(t, 2) for st, _, _, t in direct if st == 503]} s"
        )
    for path, samples in latencies.items():
        assert len(samples) == PROBES and p99(samples) < 0.250, (path, samples)
    # No connection was reset or left unanswered: wrk saw no socket error.
    for error in ("err_connect", "err_read", "err_write", "err_timeout"):
        assert flood[error] == 0, flood
    # Every answer was a 200 or a 503 overloaded, and the 503s were many.
    assert {r["status"] for r in ends} == {200}
    assert not refused, refused[:3]  # nothing but overload was refused
    assert {r["status"] for r in shed} == {503}
    assert all(r["errmsg"].startswith("overloaded") for r in shed)
    assert sum(r["count"] for r in shed) >= flood["err_status"] > FLOOD
    assert {d[0] for d in direct} <= {200, 503}
    refusals = [(h, b, t) for status, h, b, t in direct if status == 503]
    assert refusals, [d[0] for d in direct]
    for headers, body, _ in refusals:
        assert json.loads(body) == {"error": "overloaded"}
        assert headers["Retry-After"] == "1" and headers["X-Request-ID"]
        assert headers["Content-Type"] == "application/json"
    assert kept >= 0.9, basis
    assert after < max(5 * normal, normal + 0.1)
