"""Metrics of the real server (SPEC section 11): `gunicorn -c gunicorn.conf.py` with
several workers, scraped on its metrics_port while requests, kills and
replacements happen. The single-process parts are in tests/test_metrics.py."""

from __future__ import annotations

import collections
import glob
import http.client
import os
import random
import signal
import statistics
import string
import subprocess
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from conftest import require_tool
from procinfo import HOST, child_pids, is_listening
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from serverlog import Record
from serverproc import ServerProcess

from fiboserver.metrics import KNOWN_METHODS, REQUEST_BUCKETS

DURATION = "http_server_request_duration_seconds"
ROUTES = ("/dev/fibo", "/dev/healthz", "/dev/readyz")
Key = tuple[str, frozenset[tuple[str, str]]]


def samples(text: str) -> dict[Key, float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(scraped: dict[Key, float], name: str, **labels: str) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


def request_counts(scraped: dict[Key, float]) -> collections.Counter[tuple[str, str, str]]:
    counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for (name, labels), v in scraped.items():
        if name == f"{DURATION}_count":
            d = dict(labels)
            counts[d["http_request_method"], d["http_route"], d["http_response_status_code"]] += (
                int(v)
            )
    return counts


def wait_workers(srv: ServerProcess, count: int, start: int = 0) -> list[int]:
    """Pids of the first `count` workers booted from record `start` on."""
    deadline = time.monotonic() + 60
    while True:
        booted = [r["pid"] for r in srv.find("worker booted", start=start)]
        if len(booted) >= count:
            return booted[:count]
        assert time.monotonic() < deadline, srv.output()[-3000:]
        time.sleep(0.05)


def wait_records(srv: ServerProcess, msg: str, count: int, start: int = 0) -> list[Record]:
    deadline = time.monotonic() + 30
    while len(found := srv.find(msg, start=start)) < count:
        assert time.monotonic() < deadline, f"{len(found)} of {count} {msg!r} records"
        time.sleep(0.05)
    return found


def worker_values(directory: Path, pid: int) -> dict[Key, float]:
    """What one process's files hold, summed as a scrape sums them."""
    files = glob.glob(str(directory / f"*_{pid}.db"))
    return {
        (s.name, frozenset((k, v) for k, v in s.labels.items() if k != "pid")): s.value
        for m in MultiProcessCollector.merge(files)  # type: ignore[no-untyped-call]
        for s in m.samples
    }


def never_went_down(before: dict[Key, float], after: dict[Key, float]) -> list[str]:
    """Counter and histogram samples that are lower (or gone) in `after`."""
    down = []
    for key, v in before.items():
        name = key[0]
        if name.endswith(("_total", "_count", "_sum", "_bucket")) and after.get(key, -1) < v:
            down.append(f"{name}{dict(key[1])}: {v} -> {after.get(key)}")
    return down


def server(tmp_path: Path, workers: int, config: dict[str, Any] | None = None,
           **env: str) -> ServerProcess:  # fmt: skip
    return ServerProcess(
        {"env": "DEV", "maxseq": 1000, **(config or {})},
        tmp_path,
        env={"WEB_CONCURRENCY": str(workers), **env},
    )


# -- 1. a known mix, exactly, over two workers ------------------------------------------

MIX: list[tuple[str, str, int, tuple[str, str]]] = [
    # (method, path, status, (method label, route label))
    *[("GET", f"/dev/fibo?n={n}", 200, ("GET", "/dev/fibo")) for n in range(1, 31)],  # misses
    *[("GET", f"/dev/fibo?n={n % 5 + 1}", 200, ("GET", "/dev/fibo")) for n in range(60)],  # hits
    *[("HEAD", f"/dev/fibo?n={n}", 200, ("HEAD", "/dev/fibo")) for n in (3, 40, 41)],
    *[("GET", f"/dev/fibo?n={bad}", 400, ("GET", "/dev/fibo")) for bad in ("x", "-1", "1001", "")],
    *[("GET", p, 404, ("GET", "unmatched")) for p in ("/dev/nope", "/", "/prod/fibo?n=1")],
    ("HEAD", "/dev/nope", 404, ("HEAD", "unmatched")),
    ("POST", "/dev/fibo?n=1", 405, ("POST", "/dev/fibo")),
    ("GET", "/dev/healthz", 200, ("GET", "/dev/healthz")),
    ("GET", "/dev/readyz", 200, ("GET", "/dev/readyz")),
]


def test_a_known_mix_is_counted_exactly_over_two_workers(tmp_path: Path) -> None:
    with server(tmp_path, 2) as srv:
        pids = wait_workers(srv, 2)
        for _ in range(3):  # three rounds: each worker surely serves some
            for method, path, status, _ in MIX:
                assert srv.get(path, method=method)[0] == status, (method, path)
        sent = 3 * len(MIX)
        ends = wait_records(srv, "end", sent)
        scraped = samples(srv.scrape())
        directory = srv.metrics_dir
        per_worker = [worker_values(directory, pid) for pid in pids]

    expected = collections.Counter(
        (labels[0], labels[1], str(status)) for _, _, status, labels in MIX * 3
    )
    assert request_counts(scraped) == expected
    # Summed over both workers: each served part of it, the parts add up.
    parts = [request_counts(w) for w in per_worker]
    assert all(sum(p.values()) > 0 for p in parts), parts
    assert parts[0] + parts[1] == expected
    # The cache counters are the `cache hit` / `cache miss` records, one for one.
    for result in ("hit", "miss"):
        logged = len(srv.find(f"cache {result}"))
        assert logged > 0
        assert value(scraped, "fiboserver_cache_requests_total", result=result) == logged
    assert value(scraped, "fiboserver_fibo_compute_seconds_count") == len(srv.find("cache fibo"))
    # The histogram and the `end` records agree request by request: every bucket
    # holds exactly the requests whose logged duration is within its bound.
    by_labels: dict[tuple[str, str, str], list[float]] = collections.defaultdict(list)
    for r in ends:
        route = r["path"] if r["path"] in ROUTES else "unmatched"
        by_labels[r["method"], route, str(r["status"])].append(r["duration_ms"] / 1000)
    for (method, route, code), durations in by_labels.items():
        labels = {"http_request_method": method, "http_route": route,
                  "http_response_status_code": code}  # fmt: skip
        for bound in REQUEST_BUCKETS:
            le = str(bound)
            want = sum(1 for d in durations if d <= bound)
            assert value(scraped, f"{DURATION}_bucket", **labels, le=le) == want, (labels, le)
        assert value(scraped, f"{DURATION}_sum", **labels) == pytest.approx(sum(durations))
    assert value(scraped, "http_server_active_requests") == 0
    assert value(scraped, "fiboserver_workers") == 2
    assert value(scraped, "fiboserver_draining") == 0
    assert srv.bad_lines == []


def test_promtool_check_metrics_is_clean(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    with server(tmp_path, 2) as srv:
        wait_workers(srv, 2)
        for method, path, status, _ in MIX:
            assert srv.get(path, method=method)[0] == status
        text = srv.scrape()
    out = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert (out.returncode, out.stdout, out.stderr) == (0, "", ""), out.stdout + out.stderr


def test_openmetrics_when_asked_and_no_metrics_on_the_api_port(tmp_path: Path) -> None:
    with server(tmp_path, 1) as srv:
        wait_workers(srv, 1)
        accept = {"Accept": "application/openmetrics-text; version=1.0.0"}
        status, headers, body = srv.get("/metrics", headers=accept, port=srv.metrics_port)
        assert status == 200
        assert headers["Content-Type"].startswith("application/openmetrics-text")
        assert body.endswith(b"# EOF\n")
        # The API's port has no /metrics, under the prefix or not.
        for path in ("/metrics", "/dev/metrics"):
            assert srv.get(path)[0] == 404
        # And the metrics port serves nothing else.
        assert srv.get("/dev/fibo?n=1", port=srv.metrics_port)[0] == 404


def test_metrics_port_zero_turns_metrics_off(tmp_path: Path) -> None:
    with server(tmp_path, 1, {"metrics_port": 0}) as srv:
        wait_workers(srv, 1)
        assert srv.get("/dev/fibo?n=10")[0] == 200
        assert not srv.find("metrics server start")
        assert not srv.metrics_dir.exists() or not list(srv.metrics_dir.iterdir())
        srv.terminate(signal.SIGTERM)
        assert srv.wait(30) == 0


# -- 2. workers that die: nothing goes backwards, the dead leave the live gauges ---------


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
        pids = wait_workers(srv, 2)
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
        wait_workers(srv, 1, start=mark)
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


def test_exit_reasons_exited_and_timeout(tmp_path: Path) -> None:
    # timeout 2 s: a stopped worker is aborted (and then killed) within seconds.
    with server(tmp_path, 1, GUNICORN_CMD_ARGS="--timeout 2") as srv:
        (first,) = wait_workers(srv, 1)
        mark = len(srv.records)
        os.kill(first, signal.SIGTERM)  # a worker asked to stop ends by itself
        (second,) = wait_workers(srv, 1, start=mark)
        mark = len(srv.records)
        os.kill(second, signal.SIGSTOP)  # silent: the master aborts it on timeout
        wait_workers(srv, 1, start=mark)
        scraped = samples(srv.scrape())
    reasons = {r["pid"]: r["reason"] for r in srv.find("worker exited")}
    assert (reasons[first], reasons[second]) == ("exited", "timeout")
    exits = {r: value(scraped, "fiboserver_worker_exits_total", reason=r) for r in
             ("exited", "killed", "timeout")}  # fmt: skip
    assert exits == {"exited": 1, "killed": 0, "timeout": 1}


def test_200_replacements_keep_the_scrape_fast(tmp_path: Path) -> None:
    with server(tmp_path, 1) as srv:
        (pid,) = wait_workers(srv, 1)
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
            (pid,) = wait_workers(srv, 1, start=mark)
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


# -- 3. whatever clients send, the series stay bounded -----------------------------------


def random_request(rnd: random.Random) -> tuple[str, str]:
    method = rnd.choice(
        [*KNOWN_METHODS, *KNOWN_METHODS, "PROPFIND", "BREW", "".join(rnd.choices("ABCXYZ", k=5))]
    )
    junk = "".join(
        rnd.choices(string.ascii_letters + string.digits + "-._~%/", k=rnd.randrange(30))
    )
    prefix = rnd.choice(["/dev", "/prod", "", "/dev/fibo", "//dev"])
    path = rnd.choice(
        [f"{prefix}/{junk}", "/dev/fibo", "/dev/healthz", "/dev/readyz", "/dev/fibo/"]
    )
    n = rnd.choice([str(rnd.randrange(1000)), str(-rnd.randrange(9)), "9" * rnd.randrange(1, 30),
                    junk, ""])  # fmt: skip
    return method, path + rnd.choice([f"?n={n}", f"?n={n}&x={junk}", "", f"?{junk}"])


def send(port: int, requests: list[tuple[str, str]]) -> None:
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    for method, path in requests:
        try:
            conn.request(method, path)
            conn.getresponse().read()
        except (http.client.HTTPException, OSError):
            conn.close()  # the server closed it (a request it refused): a new one
            conn = http.client.HTTPConnection(HOST, port, timeout=30)
    conn.close()


def test_random_requests_leave_the_series_count_unchanged(tmp_path: Path) -> None:
    """Every (method class, route, outcome) is visited once first: that is the bound.
    Then 10,000 requests with random paths, methods and n add no series."""
    with server(tmp_path, 2) as srv:
        wait_workers(srv, 2)
        visit = [
            (method, path)
            for method in [*sorted(KNOWN_METHODS), "PROPFIND"]
            for path in ["/dev/fibo?n=5", "/dev/fibo?n=x", "/dev/healthz", "/dev/readyz", "/x"]
        ]
        send(srv.port, visit)
        wait_records(srv, "end", len(visit) - 5)  # CONNECT may be refused before the app
        time.sleep(0.5)
        before = samples(srv.scrape())
        rnd = random.Random(20261128)
        batches = [[random_request(rnd) for _ in range(2500)] for _ in range(4)]
        threads = [threading.Thread(target=send, args=(srv.port, b)) for b in batches]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        time.sleep(0.5)
        after = samples(srv.scrape())
    answered = sum(request_counts(after).values()) - sum(request_counts(before).values())
    assert answered > 9000, answered  # most reached the app (some the HTTP layer refused)
    assert len(after) == len(before), sorted(set(after) - set(before), key=str)[:10]
    labels = {(dict(k[1]).get("http_request_method"), dict(k[1]).get("http_route")) for k in after
              if k[0] == f"{DURATION}_count"}  # fmt: skip
    assert {m for m, _ in labels} <= KNOWN_METHODS | {"_OTHER"}
    assert {r for _, r in labels} <= {"/dev/fibo", "/dev/healthz", "/dev/readyz", "unmatched"}


# -- the directory's life ------------------------------------------------------------------


def test_directory_emptied_at_start_and_kept_from_a_second_server(tmp_path: Path) -> None:
    directory = tmp_path / "shared-metrics"
    directory.mkdir()
    # What a previous container left: a counter of a process long gone.
    (tmp_path / "old").mkdir()
    with server(tmp_path / "old", 1, PROMETHEUS_MULTIPROC_DIR=str(directory)) as old:
        wait_workers(old, 1)
        for _ in range(5):
            old.get("/dev/fibo?n=7")
        wait_records(old, "end", 5)
        old.terminate(signal.SIGKILL)  # no clean exit: its files stay
        old.wait(10)
    assert list(directory.glob("counter_*.db"))
    (tmp_path / "new").mkdir()
    with server(tmp_path / "new", 1, PROMETHEUS_MULTIPROC_DIR=str(directory)) as srv:
        wait_workers(srv, 1)
        scraped = samples(srv.scrape())
        assert value(scraped, "fiboserver_cache_requests_total", result="miss") == 0
        assert request_counts(scraped) == collections.Counter()
        srv.get("/dev/fibo?n=7")
        # A second server given the same directory refuses to start, and leaves it alone.
        (tmp_path / "second").mkdir()
        with server(tmp_path / "second", 1, PROMETHEUS_MULTIPROC_DIR=str(directory)) as second:
            assert second.wait(30) == os.EX_CONFIG
        refused = second.find("invalid configuration")
        assert refused and "in use by another running server" in refused[0]["errmsg"]
        assert not second.find("server start")
        wait_records(srv, "end", 1)
        scraped = samples(srv.scrape())
        assert value(scraped, "fiboserver_cache_requests_total", result="miss") == 1
    assert "Traceback" not in second.output()


def test_without_the_variable_a_private_directory_lives_as_long_as_the_server(
    tmp_path: Path,
) -> None:
    with server(tmp_path, 1, PROMETHEUS_MULTIPROC_DIR="") as srv:
        wait_workers(srv, 1)
        directory = Path(srv.wait_for("metrics server start")["metrics_dir"])
        assert directory.is_dir() and directory != srv.metrics_dir
        srv.get("/dev/fibo?n=3")
        wait_records(srv, "end", 1)
        assert value(samples(srv.scrape()), "fiboserver_cache_requests_total", result="miss") == 1
        srv.terminate(signal.SIGTERM)
        assert srv.wait(30) == 0
    assert not directory.exists()


def test_draining_is_one_from_sigterm_until_exit(tmp_path: Path) -> None:
    with server(tmp_path, 1, GUNICORN_CMD_ARGS="--graceful-timeout 10") as srv:
        (worker,) = wait_workers(srv, 1)
        assert value(samples(srv.scrape()), "fiboserver_draining") == 0
        os.kill(worker, signal.SIGSTOP)  # holds the drain open
        try:
            srv.terminate(signal.SIGTERM)
            srv.wait_for("graceful stopping server")
            assert value(samples(srv.scrape()), "fiboserver_draining") == 1
        finally:
            os.kill(worker, signal.SIGCONT)
        assert srv.wait(30) == 0


def test_usr2_shares_the_directory_and_takes_the_port_over(tmp_path: Path) -> None:
    """A master started by USR2 beside the old one neither empties the directory nor
    fights for the port: it serves /metrics once the old master has gone, and no
    counter went backwards on the way."""
    with server(tmp_path, 1) as srv:
        wait_workers(srv, 1)
        for _ in range(10):
            srv.get("/dev/fibo?n=12")
        wait_records(srv, "end", 10)
        before = samples(srv.scrape())
        mark = len(srv.records)
        srv.terminate(signal.SIGUSR2)
        srv.wait_for("metrics port in use, waiting for it", start=mark, timeout=30)
        new_master = srv.wait_for("server start", start=mark)
        wait_workers(srv, 2, start=0)  # the old one's and the new master's
        workers = {r["pid"] for r in srv.find("worker booted")}
        new_pid = [p for p in child_pids(srv.pid) if p not in workers]  # the new master
        assert new_master and len(new_pid) == 1, new_pid
        # Both masters' files are in one directory, and nothing was emptied.
        during = samples(srv.scrape())
        assert never_went_down(before, during) == []
        mark = len(srv.records)
        srv.terminate(signal.SIGTERM)  # the old master goes
        srv.wait(30)
        deadline = time.monotonic() + 30
        while not is_listening(srv.metrics_port):
            assert time.monotonic() < deadline, "the new master never took the port"
            time.sleep(0.2)
        after = samples(srv.scrape())
        assert never_went_down(before, after) == []
        assert value(after, "fiboserver_workers") == 1
        os.kill(new_pid[0], signal.SIGTERM)


def test_hup_keeps_every_count(tmp_path: Path) -> None:
    """A reload replaces the workers in the same master: the directory, the port
    and every count stay; the old workers' exits are `exited`."""
    with server(tmp_path, 2) as srv:
        wait_workers(srv, 2)
        for method, path, status, _ in MIX:
            assert srv.get(path, method=method)[0] == status
        wait_records(srv, "end", len(MIX))
        before = samples(srv.scrape())
        mark = len(srv.records)
        srv.terminate(signal.SIGHUP)
        wait_workers(srv, 2, start=mark)
        wait_records(srv, "worker exited", 2, start=mark)
        after = samples(srv.scrape())
    assert never_went_down(before, after) == []
    assert request_counts(after) == request_counts(before)
    assert value(after, "fiboserver_worker_exits_total", reason="exited") == 2
    assert value(after, "fiboserver_workers") == 2
    assert value(after, "fiboserver_cache_entries") == 0  # the new workers' caches are empty
