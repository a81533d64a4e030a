"""Workers that come and go under the real server (docs/metrics.md, "How one scrape
sees every worker"): after a SIGKILL, a timeout, 200 replacements or a HUP no
counter goes backwards, each exit is counted with its reason, the dead leave the
live gauges and the scrape stays fast; `fiboserver_draining` is 1 from SIGTERM until
exit."""

from __future__ import annotations

import glob
import http.client
import os
import signal
import statistics
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from fiboserver.metrics.master import exit_reason
from tests.support.metrictools import (
    DURATION,
    MIX,
    merge_lock,
    never_went_down,
    request_counts,
    samples,
    server,
    value,
    wait_booted,
    wait_records,
    worker_values,
)
from tests.support.serverproc import ServerProcess

# -- the reason a worker's exit is counted under ---------------------------------------


@pytest.mark.parametrize(
    ("aborted", "by_itself", "reason"),
    [(False, True, "exited"), (False, False, "killed"), (True, True, "timeout"),
     (True, False, "timeout")],
)  # fmt: skip
def test_exit_reason(aborted: bool, by_itself: bool, reason: str) -> None:
    assert exit_reason(aborted, by_itself).value == reason


# -- workers that die: nothing goes backwards, the dead leave the live gauges ---------


def serving_worker(conn: http.client.HTTPConnection, workers: Iterable[int]) -> int:
    """The worker process holding the server side of the open connection `conn`."""
    assert conn.sock is not None
    client_port = conn.sock.getsockname()[1]
    inodes = set()
    with open("/proc/net/tcp") as tcp:
        for line in tcp.readlines()[1:]:
            fields = line.split()
            # remote address = our client socket: the server's side of the connection
            if int(fields[2].split(":")[1], 16) == client_port:
                inodes.add(fields[9])
    for pid in workers:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                return pid
    raise AssertionError("no worker holds the connection")


def test_sigkill_of_a_worker(tmp_path: Path) -> None:
    with server(tmp_path, 2) as srv:
        pids = wait_booted(srv, 2)
        for method, path, status, _ in MIX:
            assert srv.get(path, method=method)[0] == status
        # A keep-alive connection fills one worker's cache with known entries.
        conn = srv.connection()
        for n in range(500, 520):
            conn.request("GET", f"/dev/fibo?n={n}")
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200
        victim = serving_worker(conn, pids)
        conn.close()
        wait_records(srv, "end", len(MIX) + 20)
        before = samples(srv.scrape())
        victim_entries = value(worker_values(srv.metrics_dir, victim), "fiboserver_cache_entries")
        assert victim_entries >= 20
        mark = len(srv.records)
        os.kill(victim, signal.SIGKILL)
        srv.wait_for("worker exited", where=lambda r: r["pid"] == victim, start=mark)
        wait_booted(srv, 1, start=mark)
        after = samples(srv.scrape())

    assert never_went_down(before, after) == []
    exits = {r: value(after, "fiboserver_worker_exits_total", reason=r) for r in
             ("exited", "killed", "timeout")}  # fmt: skip
    assert exits == {"exited": 0, "killed": 1, "timeout": 0}
    assert srv.find("worker exited", where=lambda r: r["pid"] == victim)[0]["reason"] == "killed"
    # The live gauges dropped the dead worker: its cache is gone from the sums, and
    # the workers are the survivor and the replacement.
    assert value(after, "fiboserver_cache_entries") == (
        value(before, "fiboserver_cache_entries") - victim_entries
    )
    assert value(after, "fiboserver_cache_bytes") < value(before, "fiboserver_cache_bytes")
    assert value(after, "fiboserver_workers") == 2
    assert value(after, "http_server_active_requests") == 0
    # Its counts stay, archived: no file of the dead process is left.
    assert not glob.glob(str(srv.metrics_dir / f"*_{victim}.db"))


def test_the_master_goes_on_when_it_cannot_archive_a_dead_worker(tmp_path: Path) -> None:
    """A dead worker's files that cannot be archived cost its counts, logged with
    the reason, and nothing else: the master replaces the worker as always."""
    with server(tmp_path, 1) as srv:
        (victim,) = wait_booted(srv, 1)
        srv.scrape()  # a scrape makes the lock file archiving takes
        lock = merge_lock(srv.metrics_dir)
        lock.unlink()
        lock.mkdir()  # the lock can no longer be opened
        mark = len(srv.records)
        os.kill(victim, signal.SIGKILL)
        (failed,) = wait_records(srv, "cannot account for the worker's metrics", 1, mark)
        wait_booted(srv, 1, start=mark)
        assert srv.get("/dev/fibo?n=7")[0] == 200
    assert failed["level"] == "ERROR" and failed["pid"] == victim
    assert "IsADirectoryError" in failed["exc_info"]


def test_exit_reasons_exited_and_timeout(tmp_path: Path) -> None:
    # timeout 2 s: a stopped worker is aborted (and then killed) within seconds.
    with server(tmp_path, 1, GUNICORN_CMD_ARGS="--timeout 2") as srv:
        (first,) = wait_booted(srv, 1)
        mark = len(srv.records)
        os.kill(first, signal.SIGTERM)  # a worker asked to stop ends by itself
        (second,) = wait_booted(srv, 1, start=mark)
        mark = len(srv.records)
        os.kill(second, signal.SIGSTOP)  # silent: the master aborts it on timeout
        wait_booted(srv, 1, start=mark)
        scraped = samples(srv.scrape())
    reasons = {r["pid"]: r["reason"] for r in srv.find("worker exited")}
    assert (reasons[first], reasons[second]) == ("exited", "timeout")
    exits = {r: value(scraped, "fiboserver_worker_exits_total", reason=r) for r in
             ("exited", "killed", "timeout")}  # fmt: skip
    assert exits == {"exited": 1, "killed": 0, "timeout": 1}


def test_200_replacements_keep_the_scrape_fast(tmp_path: Path) -> None:
    with server(tmp_path, 1) as srv:
        (pid,) = wait_booted(srv, 1)
        for method, path, status, _ in MIX:
            assert srv.get(path, method=method)[0] == status
        wait_records(srv, "end", len(MIX))
        fresh = timed_scrapes(srv)
        first = samples(srv.scrape())
        for i in range(200):
            # A request of its own, counted (its `end` written) before it dies.
            mark = len(srv.records)
            assert srv.get(f"/dev/fibo?n={i}")[0] == 200
            wait_records(srv, "end", 1, start=mark)
            mark = len(srv.records)
            os.kill(pid, signal.SIGKILL)
            (pid,) = wait_booted(srv, 1, start=mark)
        wait_records(srv, "worker exited", 200)
        churned = timed_scrapes(srv)
        last = samples(srv.scrape())
        files = sorted(p.name for p in srv.metrics_dir.glob("*.db"))
        size = sum(p.stat().st_blocks * 512 for p in srv.metrics_dir.iterdir())
    print(
        f"scrape ms, median of 5: fresh {statistics.median(fresh) * 1000:.1f}, after 200 "
        f"replacements {statistics.median(churned) * 1000:.1f}; {len(files)} files, "
        f"{size / 1024:.0f} KiB"
    )
    assert never_went_down(first, last) == []
    assert value(last, "fiboserver_worker_exits_total", reason="killed") == 200
    ok = {"http_request_method": "GET", "http_route": "/dev/fibo",
          "http_response_status_code": "200"}  # fmt: skip
    assert value(last, f"{DURATION}_count", **ok) == value(first, f"{DURATION}_count", **ok) + 200
    # The files of the master and the live worker (counter, histogram and two kinds
    # of live gauge each) and one archive per type: what a scrape reads does not
    # grow with the workers the server ever had.
    assert len(files) == 2 * 4 + 2, files
    assert statistics.median(churned) < 0.1, churned


def timed_scrapes(srv: ServerProcess, count: int = 5) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        srv.scrape()
        times.append(time.perf_counter() - started)
    return times


# -- a reload and a drain -------------------------------------------------------------


def test_hup_keeps_every_count(tmp_path: Path) -> None:
    """A reload replaces the workers in the same master: the directory, the port
    and every count stay; the old workers' exits are `exited`."""
    with server(tmp_path, 2) as srv:
        wait_booted(srv, 2)
        for method, path, status, _ in MIX:
            assert srv.get(path, method=method)[0] == status
        wait_records(srv, "end", len(MIX))
        before = samples(srv.scrape())
        mark = len(srv.records)
        srv.terminate(signal.SIGHUP)
        wait_booted(srv, 2, start=mark)
        wait_records(srv, "worker exited", 2, start=mark)
        after = samples(srv.scrape())
    assert never_went_down(before, after) == []
    assert request_counts(after) == request_counts(before)
    assert value(after, "fiboserver_worker_exits_total", reason="exited") == 2
    assert value(after, "fiboserver_workers") == 2
    assert value(after, "fiboserver_cache_entries") == 0  # the new workers' caches are empty


def test_draining_is_one_from_sigterm_until_exit(tmp_path: Path) -> None:
    with server(tmp_path, 1, GUNICORN_CMD_ARGS="--graceful-timeout 10") as srv:
        (worker,) = wait_booted(srv, 1)
        assert value(samples(srv.scrape()), "fiboserver_draining") == 0
        os.kill(worker, signal.SIGSTOP)  # holds the drain open
        try:
            srv.terminate(signal.SIGTERM)
            srv.wait_for("graceful stopping server")
            assert value(samples(srv.scrape()), "fiboserver_draining") == 1
        finally:
            os.kill(worker, signal.SIGCONT)
        assert srv.wait(30) == 0
