"""The real process: `gunicorn -c gunicorn.conf.py` on a free loopback port.

Startup, the JSON shape of every line, DEV/PROD log levels, the settings gunicorn
resolves, a worker killed with SIGKILL, and Ctrl-C.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from tests.support.logpipeline import json_type
from tests.support.procinfo import child_pids
from tests.support.serverlog import Record
from tests.support.serverproc import ServerProcess

TS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
RESERVED = {"time", "@timestamp", "log", "stream", "_p", "kubernetes"}
INT64 = (-(2**63), 2**63 - 1)


def check_log_shape(srv: ServerProcess) -> None:
    """Every line is one JSON object with the common keys; types stay per key (the
    types Elasticsearch tells apart: tests.support.logpipeline.json_type)."""
    assert srv.bad_lines == [], srv.bad_lines[:5]
    assert srv.records, "the process logged nothing"
    now = datetime.now(UTC)
    types: dict[str, set[str]] = {}
    for rec in srv.records:
        fields = {k: v for k, v in rec.items() if k != "_stream"}
        assert isinstance(fields.get("ts"), str) and TS.fullmatch(fields["ts"]), fields
        ts = datetime.strptime(fields["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        assert abs((now - ts).total_seconds()) < 600, f"ts is not UTC now: {fields['ts']}"
        assert fields.get("level") in LEVELS, fields
        assert isinstance(fields.get("msg"), str), fields
        assert isinstance(fields.get("logger"), str), fields
        assert not RESERVED & fields.keys(), fields
        for key, value in fields.items():
            types.setdefault(key, set()).add(json_type(value))
            if isinstance(value, int) and not isinstance(value, bool):
                assert INT64[0] <= value <= INT64[1], (key, value)
    mixed = {k: t for k, t in types.items() if len(t) > 1}
    assert mixed == {}, f"keys with more than one JSON type: {mixed}"


def by_request(srv: ServerProcess, rid: str) -> list[Record]:
    return [r for r in srv.records if r.get("request_id") == rid]


def test_dev_startup_request_logs_and_ctrl_c(tmp_path: Path) -> None:
    with ServerProcess(
        {"env": "DEV", "maxseq": 100000}, tmp_path, env={"WEB_CONCURRENCY": "1"}
    ) as srv:
        started = srv.wait_for("server start", timeout=30)
        assert started["level"] == "INFO"
        assert str(srv.port) in str(started["addr"])

        status, headers, body = srv.get("/dev/fibo?n=1000", {"X-Request-ID": "proc-dev-1"})
        assert status == 200
        assert headers["Content-Type"].startswith("application/json")
        assert headers["X-Request-ID"] == "proc-dev-1"
        assert json.loads(body, parse_int=Decimal)["result"] > 10**200
        srv.wait_for("end", where=lambda r: r.get("request_id") == "proc-dev-1")
        flow = [
            r["msg"]
            for r in by_request(srv, "proc-dev-1")
            if r["msg"] in ("start", "cache miss", "cache fibo", "end")
        ]
        assert flow == ["start", "cache miss", "cache fibo", "end"]
        end = srv.find("end", where=lambda r: r.get("request_id") == "proc-dev-1")[0]
        assert end["status"] == 200 and end["path"] == "/dev/fibo" and end["method"] == "GET"

        # No incoming id: the generated one is the one in the records.
        status, headers, _ = srv.get("/dev/fibo?n=1000")
        rid = headers["X-Request-ID"]
        assert uuid.UUID(rid).version == 4
        srv.wait_for("end", where=lambda r: r.get("request_id") == rid)
        assert "cache hit" in [r["msg"] for r in by_request(srv, rid)]

        srv.terminate(signal.SIGINT)
        assert srv.wait(30) == 0
        assert srv.find("server stopped"), srv.output()[-2000:]
        assert srv.records[-1]["msg"] == "server stopped"
    check_log_shape(srv)
    assert any(r["level"] == "DEBUG" for r in srv.records)
    # gunicorn's own records are written once, not once more through the root logger.
    for first_words in ("Starting gunicorn", "Listening at:"):
        once = [r for r in srv.records if r["msg"].startswith(first_words)]
        assert len(once) == 1 and once[0]["logger"] == "gunicorn.error", once


def test_prod_logs_no_debug(tmp_path: Path) -> None:
    with ServerProcess(
        {"env": "PROD", "maxseq": 100000}, tmp_path, env={"WEB_CONCURRENCY": "1"}
    ) as srv:
        srv.wait_for("server start", timeout=30)
        for n in ("1000", "1000", "x"):
            srv.get(f"/prod/fibo?n={n}", {"X-Request-ID": f"prod-{n}"})
        status, _, body = srv.get("/prod/healthz", {"X-Request-ID": "prod-last"})
        assert status == 200 and json.loads(body) == {"status": "ok"}
        srv.wait_for("end", where=lambda r: r.get("request_id") == "prod-last")
        srv.terminate(signal.SIGTERM)
        assert srv.wait(30) == 0
    check_log_shape(srv)
    assert [r for r in srv.records if r["level"] == "DEBUG"] == []
    assert len(srv.find("start")) == 4 and len(srv.find("end")) == 4
    (failed,) = srv.find("fibo calculate failed")
    assert failed["level"] == "WARNING" and failed["request_id"] == "prod-x"


def test_loglevel_key_overrides_the_env_default(tmp_path: Path) -> None:
    # loglevel WARNING on DEV: not even the INFO access records.
    with ServerProcess(
        {"env": "DEV", "maxseq": 100, "loglevel": "WARNING"},
        tmp_path,
        env={"WEB_CONCURRENCY": "1"},
    ) as srv:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if srv.get("/dev/healthz", timeout=2)[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        srv.get("/dev/fibo?n=x", {"X-Request-ID": "warn-1"})
        srv.wait_for("fibo calculate failed", where=lambda r: r.get("request_id") == "warn-1")
        srv.terminate(signal.SIGTERM)
        assert srv.wait(30) == 0
    assert srv.bad_lines == []
    levels = {r["level"] for r in srv.records}
    assert levels <= {"WARNING", "ERROR", "CRITICAL"}, levels


def test_resolved_gunicorn_settings(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("env: PROD\nmaxseq: 10\nport: 18081\n")
    settings = ServerProcess(config, tmp_path, env={"WEB_CONCURRENCY": "3"}).print_config()
    assert settings["bind"] == "['0.0.0.0:18081']"
    assert settings["workers"] == "3"
    assert settings["graceful_timeout"] == "20"
    # gthread, or a subclass of it.
    from gunicorn.util import load_class
    from gunicorn.workers.gthread import ThreadWorker

    assert issubclass(load_class(settings["worker_class"]), ThreadWorker)
    # worker_tmp_dir on a tmpfs, so a read-only root filesystem works.
    tmp_dir = settings["worker_tmp_dir"]
    mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    fs = max((m for m in mounts if tmp_dir.startswith(m[1])), key=lambda m: len(m[1]))
    assert fs[2] == "tmpfs", fs


def test_killed_worker_is_replaced(tmp_path: Path) -> None:
    with ServerProcess(
        {"env": "PROD", "maxseq": 100000}, tmp_path, env={"WEB_CONCURRENCY": "2"}
    ) as srv:
        srv.wait_for("server start", timeout=30)
        master = srv.pid

        def worker_pid(r: Record) -> bool:
            # Worker lifecycle records carry the worker's `pid` (the master's is not one).
            return isinstance(r.get("pid"), int) and r["pid"] != master

        deadline = time.monotonic() + 30
        while len({r["pid"] for r in srv.find(where=worker_pid)}) < 2:
            assert time.monotonic() < deadline, srv.output()[-2000:]
            time.sleep(0.1)
        workers = child_pids(master)
        assert len(workers) == 2, workers
        assert {r["pid"] for r in srv.find(where=worker_pid)} == workers

        victim = min(workers)
        mark = len(srv.records)
        os.kill(victim, signal.SIGKILL)
        # The survivor keeps answering while the master replaces the victim.
        for i in range(10):
            status, _, body = srv.get(f"/prod/fibo?n={90 + i}", timeout=10)
            assert status == 200, body
        srv.wait_for(None, where=lambda r: r.get("pid") == victim, start=mark, timeout=30)
        newcomer = srv.wait_for(
            None,
            where=lambda r: worker_pid(r) and r["pid"] not in workers,
            start=mark,
            timeout=30,
        )
        deadline = time.monotonic() + 30
        while child_pids(master) != (workers - {victim}) | {newcomer["pid"]}:
            assert time.monotonic() < deadline, (child_pids(master), workers, newcomer)
            time.sleep(0.1)
        for i in range(20):
            status, _, body = srv.get(f"/prod/fibo?n={10 + i % 2}", timeout=10)
            assert status == 200
            assert json.loads(body)["result"] == (55 if i % 2 == 0 else 89)
        srv.terminate(signal.SIGTERM)
        assert srv.wait(30) == 0
    check_log_shape(srv)


def test_worker_exiting_alone_keeps_the_service_answering(tmp_path: Path) -> None:
    # A worker that leaves on its own (here gunicorn's max_requests recycle,
    # settable through GUNICORN_CMD_ARGS) must not take the shared listening
    # socket down with it: every later request is still answered.
    with ServerProcess(
        {"env": "PROD", "maxseq": 100},
        tmp_path,
        env={"WEB_CONCURRENCY": "1", "GUNICORN_CMD_ARGS": "--max-requests 4"},
    ) as srv:
        srv.wait_for("server start", timeout=30)
        deadline = time.monotonic() + 30
        for i in range(100):  # bounded; three recycles take about 15 requests
            status, _, body = srv.get(f"/prod/fibo?n={i % 50}", timeout=10)
            assert status == 200, (i, body)
            if len(child_pids(srv.pid) | {r["pid"] for r in srv.find("worker booted")}) >= 4:
                break
            assert time.monotonic() < deadline
            # Paced: a retiring worker still takes what arrives while it drains.
            time.sleep(0.1)
        booted = {r["pid"] for r in srv.find("worker booted")}
        assert len(booted) >= 3, booted
        srv.terminate(signal.SIGTERM)
        assert srv.wait(30) == 0
