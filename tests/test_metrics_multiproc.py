"""The multiprocess directory (fiboserver.metrics.multiproc; docs/metrics.md, "How one scrape
sees every worker"): dead workers' files archived with every count, the directory
emptied and locked at start, a private one when none is set; and with the real
server: a second server refused, a restart from zero, a USR2 master sharing the
directory and taking the port over."""

from __future__ import annotations

import collections
import fcntl
import os
import signal
import stat
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families

from fiboserver.metrics import multiproc
from tests.support.metrictools import (
    merge_lock,
    never_went_down,
    request_counts,
    samples,
    server,
    value,
    wait_booted,
    wait_records,
)
from tests.support.procinfo import child_pids, is_listening

# -- on files written as prometheus_client writes them ------------------------------


def write_db(path: Path, values: dict[tuple[str, str, tuple[tuple[str, str], ...]], float]) -> None:
    """A file as prometheus_client writes it: (metric, sample, labels) -> value."""
    out = MmapedDict(str(path))  # type: ignore[no-untyped-call]
    try:
        for (metric, sample, labels), value in values.items():
            key = mmap_key(metric, sample, [k for k, _ in labels], [v for _, v in labels], "help")
            out.write_value(key, value, 0.0)  # type: ignore[no-untyped-call]
    finally:
        out.close()  # type: ignore[no-untyped-call]


def scrape_dir(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(multiproc.Collector(str(path)))
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def worker_files(directory: Path, pid: int, scale: float) -> None:
    write_db(
        directory / f"counter_{pid}.db",
        {("c", "c_total", (("r", "hit"),)): 2 * scale, ("c", "c_total", (("r", "miss"),)): scale},
    )
    write_db(
        directory / f"histogram_{pid}.db",
        {
            ("h", "h_sum", ()): 0.5 * scale,
            ("h", "h_bucket", (("le", "0.1"),)): scale,
            ("h", "h_bucket", (("le", "+Inf"),)): 2 * scale,
        },
    )
    write_db(directory / f"gauge_livesum_{pid}.db", {("g", "g", ()): scale})


def test_archiving_dead_workers_keeps_every_count(tmp_path: Path) -> None:
    for pid, scale in ((101, 1), (102, 10), (103, 100)):
        worker_files(tmp_path, pid, scale)
    before = scrape_dir(tmp_path)
    assert before[("c_total", (("r", "hit"),))] == 222
    assert before[("h_count", ())] == 333
    multiproc.worker_died(str(tmp_path), 101)
    multiproc.worker_died(str(tmp_path), 102)
    after = scrape_dir(tmp_path)
    # Counters and histograms unchanged; the dead workers' gauges gone.
    assert {k: v for k, v in after.items() if k[0] != "g"} == {
        k: v for k, v in before.items() if k[0] != "g"
    }
    assert after[("g", ())] == 100
    names = sorted(p.name for p in tmp_path.glob("*.db"))
    assert names == [
        "counter_103.db",
        "counter_archive.db",
        "gauge_livesum_103.db",
        "histogram_103.db",
        "histogram_archive.db",
    ]


def test_a_dead_worker_with_histograms_only_is_archived(tmp_path: Path) -> None:
    write_db(tmp_path / "histogram_104.db", {("h", "h_sum", ()): 1.5})
    multiproc.archive(str(tmp_path), 104)
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["histogram_archive.db"]
    assert scrape_dir(tmp_path)[("h_sum", ())] == 1.5


def test_scrapes_read_side_by_side_and_archiving_waits_for_them(tmp_path: Path) -> None:
    worker_files(tmp_path, 101, 1)
    multiproc.collect(str(tmp_path))  # makes the lock file
    # flock needs only an open file: a user who could open it could stall archiving.
    assert stat.S_IMODE(merge_lock(tmp_path).stat().st_mode) == 0o600
    fd = os.open(merge_lock(tmp_path), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # as a scrape in progress holds it
        scrape = threading.Thread(target=multiproc.collect, args=(str(tmp_path),))
        scrape.start()
        scrape.join(5)
        assert not scrape.is_alive(), "a scrape waited for another scrape"
        archiving = threading.Thread(target=multiproc.archive, args=(str(tmp_path), 101))
        archiving.start()
        archiving.join(0.2)
        assert archiving.is_alive(), "archiving went on during a scrape"
    finally:
        os.close(fd)  # releases the lock
    archiving.join(5)
    assert not (tmp_path / "counter_101.db").exists()


def test_prepare_empties_locks_and_refuses_a_second_server(tmp_path: Path) -> None:
    directory = tmp_path / "mp"
    directory.mkdir()
    worker_files(directory, 7, 1)
    (directory / "counter_archive.db").write_bytes(b"")
    (directory / "keep.txt").write_text("not ours")
    environ = {multiproc.ENV: str(directory)}
    first = multiproc.prepare(environ, upgrading=False)
    try:
        assert sorted(p.name for p in directory.iterdir()) == ["keep.txt"]
        # A second server pointed at it refuses, and leaves the files alone.
        worker_files(directory, 8, 1)
        with pytest.raises(multiproc.MultiprocDirError, match="in use"):
            multiproc.prepare(environ, upgrading=False)
        # A master started by USR2 shares it as it is.
        shared = multiproc.prepare(environ, upgrading=True)
        assert shared.lock_fd is None and (directory / "counter_8.db").exists()
    finally:
        multiproc.close(first)
    # Released at exit: the next server may take it.
    multiproc.close(multiproc.prepare(environ, upgrading=False))
    assert directory.is_dir(), "a directory we were given is never removed"


def test_prepare_makes_a_private_directory_when_none_is_set() -> None:
    environ: dict[str, str] = {multiproc.ENV: ""}
    directory = multiproc.prepare(environ, upgrading=False)
    try:
        assert directory.private and environ[multiproc.ENV] == directory.path
        assert os.path.isdir(directory.path)
        assert directory.path.startswith("/dev/shm/") or not os.access("/dev/shm", os.W_OK)
    finally:
        multiproc.close(directory)
    assert not os.path.exists(directory.path)


def test_prepare_refuses_a_directory_it_cannot_write(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("")
    with pytest.raises(multiproc.MultiprocDirError, match="cannot create"):
        multiproc.prepare({multiproc.ENV: str(target / "sub")}, upgrading=False)


# -- with the real server ------------------------------------------------------------


def test_directory_emptied_at_start_and_kept_from_a_second_server(tmp_path: Path) -> None:
    directory = tmp_path / "shared-metrics"
    directory.mkdir()
    # What a previous container left: a counter of a process long gone.
    (tmp_path / "old").mkdir()
    with server(tmp_path / "old", 1, PROMETHEUS_MULTIPROC_DIR=str(directory)) as old:
        wait_booted(old, 1)
        for _ in range(5):
            old.get("/dev/fibo?n=7")
        wait_records(old, "end", 5)
        old.terminate(signal.SIGKILL)  # no clean exit: its files stay
        old.wait(10)
    assert list(directory.glob("counter_*.db"))
    (tmp_path / "new").mkdir()
    with server(tmp_path / "new", 1, PROMETHEUS_MULTIPROC_DIR=str(directory)) as srv:
        wait_booted(srv, 1)
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
        wait_booted(srv, 1)
        directory = Path(srv.wait_for("metrics server start")["metrics_dir"])
        assert directory.is_dir() and directory != srv.metrics_dir
        srv.get("/dev/fibo?n=3")
        wait_records(srv, "end", 1)
        assert value(samples(srv.scrape()), "fiboserver_cache_requests_total", result="miss") == 1
        srv.terminate(signal.SIGTERM)
        assert srv.wait(30) == 0
    assert not directory.exists()


def test_usr2_shares_the_directory_and_takes_the_port_over(tmp_path: Path) -> None:
    """A master started by USR2 beside the old one neither empties the directory nor
    fights for the port: it serves /metrics once the old master has gone, and no
    counter went backwards on the way."""
    with server(tmp_path, 1) as srv:
        wait_booted(srv, 1)
        for _ in range(10):
            srv.get("/dev/fibo?n=12")
        wait_records(srv, "end", 10)
        before = samples(srv.scrape())
        mark = len(srv.records)
        srv.terminate(signal.SIGUSR2)
        srv.wait_for("metrics port in use, waiting for it", start=mark, timeout=30)
        new_master = srv.wait_for("server start", start=mark)
        wait_booted(srv, 2, start=0)  # the old one's and the new master's
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
        # The old master drained before it went; its live gauges went with it.
        assert value(after, "fiboserver_draining") == 0
        os.kill(new_pid[0], signal.SIGTERM)


def test_the_cached_process_id_follows_a_fork() -> None:
    """prometheus_client names a process's files by `process_id`: a forked worker
    must get its own id, not the master's (its values would land in the master's
    files)."""
    assert multiproc.process_id() == os.getpid()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.write(write, str(multiproc.process_id()).encode())
        os._exit(0)
    os.close(write)
    assert os.waitpid(child, 0)[1] == 0
    assert int(os.read(read, 32)) == child
    os.close(read)
