"""Signals to a running server (README "Graceful start and stop", docs/worker.md
"Signals"): HUP reloads and never kills, and a USR2 upgrade followed by TERM to the
old master loses no request."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.clients import GRACEFUL_TIMEOUT, Counts, one_request, reference
from tests.support.procinfo import child_pids, has_exited, wait_until
from tests.support.serverproc import ServerProcess


def _write_config(path: Path, config: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(config))


@pytest.mark.parametrize(
    ("change", "key"),
    [({"maxseq": -1}, "maxseq"), ({"maxseqq": 5}, "maxseqq"), ({"env": "no spaces"}, "env")],
)
def test_hup_with_a_broken_file_keeps_the_old_settings(
    tmp_path: Path, change: dict[str, Any], key: str
) -> None:
    config = {"env": "PROD", "maxseq": 100}
    with ServerProcess(config, tmp_path, env={"WEB_CONCURRENCY": "1"}) as srv:
        srv.wait_for("worker booted", timeout=30)
        assert srv.config_path is not None
        (worker,) = srv.wait_workers(1)
        _write_config(srv.config_path, {**config, "port": srv.port, **change})
        mark = len(srv.records)
        srv.terminate(signal.SIGHUP)
        error = srv.wait_for("invalid configuration", start=mark, timeout=10)
        assert error["level"] == "ERROR"
        assert error["file"] == str(srv.config_path) and error["config_key"] == key
        # The same worker serves, with the old maxseq.
        assert srv.get("/prod/fibo?n=100")[0] == 200
        status, _, body = srv.get("/prod/fibo?n=101")
        assert status == 400 and "maxseq (100)" in json.loads(body)["error"]
        assert srv.worker_pids() == [worker] and srv.running()
        _, rc = srv.stop()
    assert rc == 0
    assert srv.find("server stopped")
    assert srv.find("worker booted", start=mark) == []


def test_hup_applies_a_good_file_to_new_workers(tmp_path: Path) -> None:
    config = {"env": "PROD", "maxseq": 100}
    with ServerProcess(config, tmp_path, env={"WEB_CONCURRENCY": "2"}) as srv:
        srv.wait_for("server start", timeout=30)
        old = set(srv.wait_workers(2))
        assert srv.config_path is not None
        _write_config(srv.config_path, {**config, "port": srv.port, "maxseq": 50})
        mark = len(srv.records)
        srv.terminate(signal.SIGHUP)
        reloaded = srv.wait_for("configuration reloaded", start=mark, timeout=30)
        assert reloaded["file"] == str(srv.config_path)
        wait_until(
            lambda: len(srv.worker_pids()) == 2 and not old & set(srv.worker_pids()),
            30,
            "two new workers, the old ones gone",
        )
        status, _, body = srv.get("/prod/fibo?n=51")
        assert status == 400 and "maxseq (50)" in json.loads(body)["error"]
        assert srv.get("/prod/fibo?n=50")[0] == 200
        _, rc = srv.stop()
    assert rc == 0


LOAD_CLIENTS = 8
N_VALUES = [0, 10, 93, 500, 1000]


def _usr2_upgrade(srv: ServerProcess, mark: int) -> int:
    """USR2 to the master; the pid of the new master it forks, read from its log."""
    srv.terminate(signal.SIGUSR2)
    srv.wait_for("server start", start=mark, timeout=30)
    listening = srv.wait_for(
        None, start=mark, where=lambda r: r.get("msg", "").startswith("Listening at")
    )
    found = re.search(r"\((\d+)\)", listening["msg"])
    assert found is not None, listening
    new_master = int(found.group(1))
    assert new_master in child_pids(srv.pid)
    return new_master


def test_usr2_then_term_to_the_old_master_loses_no_request(tmp_path: Path) -> None:
    """The new master shares the old one's listening socket: the old one's stop must
    neither reset a queued connection nor make the kernel drop new ones."""
    ref = reference(N_VALUES)
    counts = Counts()
    stop = threading.Event()
    never = threading.Event()  # Counts' after-signal tally is not used here

    with ServerProcess(
        {"env": "PROD", "maxseq": 1000, "cacheresult": False},
        tmp_path,
        env={"WEB_CONCURRENCY": "2"},
    ) as srv:
        srv.wait_for("server start", timeout=30)

        def client(seed: int) -> None:
            rnd = random.Random(seed)
            while not stop.is_set():
                n = rnd.choice(N_VALUES)
                one_request(srv.port, n, ref[n], counts, never)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(LOAD_CLIENTS)]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: counts.ok >= 50, 30, "load reaches the old master")
            mark = len(srv.records)
            new_master = _usr2_upgrade(srv, mark)
            wait_until(lambda: len(srv.find("worker booted", start=mark)) == 2, 30, "new workers")
            srv.terminate(signal.SIGTERM)  # the old master
            assert srv.wait(GRACEFUL_TIMEOUT + 10, log_eof=False) == 0
            served_at_exit = counts.ok
            wait_until(lambda: counts.ok >= served_at_exit + 100, 30, "the new master serves on")
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
        new_workers = child_pids(new_master)
        assert len(new_workers) == 2
        srv.wait_for("Master has been promoted.", start=mark, timeout=10)
        assert srv.find("graceful stopping server", start=mark)
        stopping = srv.find("listeners shared with another master: not filtered", start=mark)
        assert len(stopping) == 1
        # Stop the new master too, and check it exits cleanly.
        mark = len(srv.records)
        os.kill(new_master, signal.SIGTERM)
        srv.wait_for("server stopped", start=mark, timeout=GRACEFUL_TIMEOUT + 10)
        wait_until(lambda: has_exited(new_master), 10, "the new master exits")

    print(f"\nUSR2 upgrade: ok={counts.ok} failed={counts.failed} refused={counts.refused}")
    assert counts.failures == [], counts.failures[:10]
    assert counts.failed == 0 and counts.refused == 0
    assert counts.ok == counts.sent
