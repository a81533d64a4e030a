"""Fault injection (README "Fault injection") in the real server: a delay is work.

It runs in a request thread, so it holds that thread like real work: the worker's
admission sheds what cannot start within its deadline, and a graceful stop waits
for it. The probes and /metrics answer at once while every request thread sleeps.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.support.clients import GRACEFUL_TIMEOUT
from tests.support.serverproc import ServerProcess

Answer = tuple[int, dict[str, object], float]  # status, JSON body, time it arrived


def fetch(srv: ServerProcess, path: str) -> Answer:
    status, _, body = srv.get(path, timeout=60)
    return status, json.loads(body), time.monotonic()


def test_a_delayed_request_drains_on_sigterm(tmp_path: Path) -> None:
    """fault_delay_ms 3000, the worker's 4 threads all sleeping, then SIGTERM: every
    request is answered 200 and the server exits 0 within graceful_timeout."""
    config = {"env": "DEV", "maxseq": 1000, "fault_delay_ms": 3000}
    with ServerProcess(config, tmp_path, env={"WEB_CONCURRENCY": "1"}) as srv:
        srv.wait_ready("/dev/readyz")
        with ThreadPoolExecutor(4) as pool:
            # 4: one per request thread, so none waits in the queue (and none is shed).
            answers = [pool.submit(fetch, srv, f"/dev/fibo?n={n}") for n in (10, 11, 12, 13)]
            srv.wait_for("start", where=lambda r: r["path"] == "/dev/fibo")
            # The loop waits for all four `start` records; each answer waits 0..3 s.
            deadline = time.monotonic() + 10
            while len(srv.find("start", lambda r: r["path"] == "/dev/fibo")) < 4:
                assert time.monotonic() < deadline, "4 requests never in flight"
                time.sleep(0.01)
            signalled = time.monotonic()
            took, code = srv.stop(timeout=GRACEFUL_TIMEOUT + 10)
            results = [a.result(timeout=30) for a in answers]
    assert code == 0, srv.output()
    assert took < GRACEFUL_TIMEOUT, took
    assert [(s, b) for s, b, _ in results] == [
        (200, {"result": 55}), (200, {"result": 89}), (200, {"result": 144}),
        (200, {"result": 233}),
    ]  # fmt: skip
    # Some answers came after the signal: they were in flight, delayed, when it came.
    assert max(at for _, _, at in results) > signalled
    ends = srv.find("end", lambda r: r["path"] == "/dev/fibo")
    assert [r["fault"] for r in ends] == ["delay"] * 4
    assert max(r["duration_ms"] for r in ends) > 100


def test_a_delay_counts_against_admission_like_work(tmp_path: Path) -> None:
    """Two request threads, 12 requests at once, each delayed 0..2 s: about two
    finish per second, so the ones still waiting after the deadline (about a
    second) are shed with 503 overloaded; cached F(10) alone never would be."""
    config = {"env": "DEV", "maxseq": 1000, "fault_delay_ms": 2000}
    env = {"WEB_CONCURRENCY": "1", "GUNICORN_CMD_ARGS": "--threads 2"}
    with ServerProcess(config, tmp_path, env=env) as srv:
        srv.wait_ready("/dev/readyz")
        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(lambda _: fetch(srv, "/dev/fibo?n=10"), range(12)))
        statuses = sorted(s for s, _, _ in results)
        shed = [b for s, b, _ in results if s == 503]
        assert shed and all(b == {"error": "overloaded"} for b in shed), statuses
        assert statuses.count(200) >= 2, statuses
        assert all(b == {"result": 55} for s, b, _ in results if s == 200)
        srv.wait_for("end", where=lambda r: r.get("fault") == "delay")


def test_probes_and_metrics_answer_at_once_while_every_thread_sleeps(tmp_path: Path) -> None:
    """fault_error_ratio 1 and the longest delay: fibo requests hold every request
    thread for up to 10 s and then fail; the probes and /metrics never wait and
    never fail."""
    config = {"env": "DEV", "maxseq": 1000, "fault_delay_ms": 10000, "fault_error_ratio": 1}
    with ServerProcess(config, tmp_path, env={"WEB_CONCURRENCY": "1"}) as srv:
        srv.wait_ready("/dev/readyz")
        with ThreadPoolExecutor(4) as pool:
            faulted = [pool.submit(fetch, srv, "/dev/fibo?n=10") for _ in range(4)]
            deadline = time.monotonic() + 10
            while len(srv.find("start", lambda r: r["path"] == "/dev/fibo")) < 4:
                assert time.monotonic() < deadline, "4 requests never in flight"
                time.sleep(0.01)
            slow: list[tuple[str, float]] = []
            for _ in range(5):
                for path in ("/dev/healthz", "/dev/readyz"):
                    t0 = time.monotonic()
                    status, _, _ = srv.get(path, timeout=10)
                    assert status == 200, path
                    slow += [(path, time.monotonic() - t0)]
                t0 = time.monotonic()
                assert "fiboserver_workers 1.0" in srv.scrape()
                slow += [("/metrics", time.monotonic() - t0)]
            assert all(took < 1.0 for _, took in slow), slow
            results = [f.result(timeout=30) for f in faulted]
    assert [(s, b) for s, b, _ in results] == [(500, {"error": "injected fault"})] * 4
    ends = srv.find("end")
    assert {(r["path"], r.get("fault")) for r in ends} == {
        ("/dev/fibo", "error"), ("/dev/healthz", None), ("/dev/readyz", None),
    }  # fmt: skip
