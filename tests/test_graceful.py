"""Graceful stop of the real process: SIGTERM under load, when idle, and /readyz
draining; and a worker whose master is killed.

A request whose TCP connection was established must get a complete, correct 200,
even when SIGTERM arrives while it waits in the kernel's listen queue. A connect
that is refused or times out after the signal is expected (the server no longer
takes new connections); a reset, an EOF or a truncated body after connect is a
failure.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import signal
import socket
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest

from tests.support.clients import (
    GRACEFUL_TIMEOUT,
    Counts,
    next_json_answer,
    one_request,
    reference,
)
from tests.support.procinfo import (
    HOST,
    child_pids,
    has_exited,
    wait_until,
)
from tests.support.serverproc import ServerProcess

CLIENTS = 16
PER_CLIENT_MAX = 400  # bounds every client loop in count...
LOAD_DEADLINE = 60.0  # ...and in time
# Mix of cheap and expensive n; the cache is off so each one is computed.
N_VALUES = [0, 10, 93, 1000, 5000, 30000, 60000, 100000]


def test_sigterm_under_load_loses_no_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = reference(N_VALUES)
    counts = Counts()
    signalled = threading.Event()
    with ServerProcess(
        {"env": "PROD", "maxseq": 100000, "cacheresult": False},
        tmp_path,
        env={"WEB_CONCURRENCY": "2"},
    ) as srv:
        srv.wait_for("server start", timeout=30)
        start = time.monotonic()

        def client(seed: int) -> None:
            rnd = random.Random(seed)
            for _ in range(PER_CLIENT_MAX):
                if time.monotonic() - start > LOAD_DEADLINE:
                    return
                n = rnd.choice(N_VALUES)
                if not one_request(srv.port, n, ref[n], counts, signalled):
                    if signalled.is_set():
                        return
                    time.sleep(0.05)  # not stopping yet: a transient, try again

        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        # Let the load build up, then signal in the middle of it.
        deadline = time.monotonic() + 30
        while counts.ok < 100 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert counts.ok >= 100, f"no load reached the server: {counts}"
        signalled.set()
        t_signal = time.monotonic()
        srv.terminate(signal.SIGTERM)
        rc = srv.wait(GRACEFUL_TIMEOUT + 10)
        stop_seconds = time.monotonic() - t_signal
        for t in threads:
            t.join(timeout=LOAD_DEADLINE)
        assert not any(t.is_alive() for t in threads)

    with capsys.disabled():  # shown in the CI log even when the test passes
        print(
            f"\ngraceful under load: sent={counts.sent} ok={counts.ok} "
            f"refused={counts.refused} failed={counts.failed} "
            f"ok_after_signal={counts.after_signal_ok} stop_s={stop_seconds:.2f}"
        )
    assert counts.failures == [], counts.failures[:10]
    assert counts.failed == 0 and counts.ok == counts.sent
    assert rc == 0
    assert stop_seconds < GRACEFUL_TIMEOUT
    msgs = [r["msg"] for r in srv.records]
    assert "graceful stopping server" in msgs and "server stopped" in msgs
    assert msgs.index("graceful stopping server") < msgs.index("server stopped")
    assert msgs[-1] == "server stopped"
    (stopping,) = srv.find("graceful stopping server")
    assert stopping["level"] == "INFO" and stopping["graceful_timeout"] == GRACEFUL_TIMEOUT
    assert srv.bad_lines == []


def test_idle_sigterm_exits_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with ServerProcess(
        {"env": "DEV", "maxseq": 100}, tmp_path, env={"WEB_CONCURRENCY": "2"}
    ) as srv:
        srv.wait_for("server start", timeout=30)
        status, _, _ = srv.get("/dev/fibo?n=10")
        assert status == 200
        t_signal = time.monotonic()
        srv.terminate(signal.SIGTERM)
        rc = srv.wait(GRACEFUL_TIMEOUT + 10)
        elapsed = time.monotonic() - t_signal
    with capsys.disabled():
        print(f"\nidle SIGTERM to exit: {elapsed:.2f}s")
    assert rc == 0
    # The contract: an idle server exits within a second of SIGTERM (docs/graceful.md).
    assert elapsed < 1.0, f"idle stop took {elapsed:.2f}s"
    msgs = [r["msg"] for r in srv.records]
    assert msgs.index("graceful stopping server") < msgs.index("server stopped")


def test_readyz_answers_503_on_open_connection_after_sigterm(tmp_path: Path) -> None:
    with ServerProcess(
        {"env": "DEV", "maxseq": 100}, tmp_path, env={"WEB_CONCURRENCY": "1"}
    ) as srv:
        srv.wait_for("server start", timeout=30)
        conn = http.client.HTTPConnection(HOST, srv.port, timeout=10)
        try:
            conn.request("GET", "/dev/readyz")
            resp = conn.getresponse()
            assert resp.status == 200 and json.loads(resp.read()) == {"status": "ready"}
            sock = conn.sock
            assert sock is not None, "the server closed a keep-alive connection"

            srv.terminate(signal.SIGTERM)
            srv.wait_for("graceful stopping server", timeout=5)
            # The worker logs this once its loop has seen SIGTERM, which is after
            # its signal handler marked it draining.
            stopping = srv.wait_for("worker stopping", timeout=5)
            # Which worker, and what it still holds: this kept-alive connection.
            assert stopping["pid"] in srv.worker_pids() and stopping["connections"] == 1
            conn.request("GET", "/dev/readyz", headers={"X-Request-ID": "drain-1"})
            assert conn.sock is sock, "must be the connection opened before SIGTERM"
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 503, body
            assert resp.headers["Content-Type"].startswith("application/json")
            assert resp.headers["X-Request-ID"] == "drain-1"
            assert json.loads(body) == {"status": "draining"}
        finally:
            conn.close()
        assert srv.wait(GRACEFUL_TIMEOUT + 10) == 0
    assert srv.find("server stopped")


def test_sigterm_to_a_booting_worker_is_not_lost(tmp_path: Path) -> None:
    # Until a new worker installs its own handlers it runs the master's, which only
    # queue the signal for a loop the worker never runs. Signal each worker the
    # moment it logs gunicorn's "Booting worker with pid: N", i.e. inside that
    # window: each must still stop (and be replaced), not live on until the
    # master kills it at graceful_timeout.
    signalled: list[int] = []

    def on_line(_stream: str, line: str) -> None:
        found = re.search(r"Booting worker with pid: (\d+)", line)
        if found and len(signalled) < 3:
            pid = int(found.group(1))
            os.kill(pid, signal.SIGTERM)
            signalled.append(pid)

    with ServerProcess(
        {"env": "PROD", "maxseq": 100},
        tmp_path,
        env={"WEB_CONCURRENCY": "3"},
        on_line=on_line,
    ) as srv:
        srv.wait_for("server start", timeout=30)
        deadline = time.monotonic() + 30
        while len(signalled) < 3:
            assert time.monotonic() < deadline, srv.output()[-2000:]
            time.sleep(0.05)
        deadline = time.monotonic() + 5  # a stopping idle worker needs well under 1 s
        while child_pids(srv.pid) & set(signalled):
            alive = child_pids(srv.pid) & set(signalled)
            assert time.monotonic() < deadline, f"workers ignored SIGTERM at boot: {alive}"
            time.sleep(0.05)
        # The master replaced them and the service answers.
        deadline = time.monotonic() + 30
        while len(child_pids(srv.pid)) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        status, _, body = srv.get("/prod/fibo?n=10", timeout=10)
        assert status == 200 and json.loads(body) == {"result": 55}
        t_signal = time.monotonic()
        srv.terminate(signal.SIGTERM)
        assert srv.wait(GRACEFUL_TIMEOUT + 10) == 0
        assert time.monotonic() - t_signal < 3


# Far more connections than the workers' loops accept in one turn (one each,
# fiboserver.worker.accepting ACCEPT_BATCH), so only a drain of the listen queue serves all.
QUEUED_CLIENTS = 200


def test_sigterm_serves_every_connection_already_in_the_listen_queue(tmp_path: Path) -> None:
    """Deterministic: the connections are put in the listen queue on purpose.

    The workers are stopped (SIGSTOP), clients connect and send their requests
    (the kernel completes the handshakes and queues them), the master gets
    SIGTERM and signals the workers, and only then do they continue. Every
    client must get its answer; a worker that stops accepting at SIGTERM
    (plain gthread) makes the kernel reset the queued connections when it
    closes the listener. Each step waits for the event itself, never a sleep.
    """
    with ServerProcess(
        {"env": "PROD", "maxseq": 1000}, tmp_path, env={"WEB_CONCURRENCY": "2"}
    ) as srv:
        srv.wait_for("server start", timeout=30)
        workers = srv.freeze_workers(2)
        clients = []
        try:
            for i in range(QUEUED_CLIENTS):
                sock = socket.create_connection((HOST, srv.port), timeout=30)
                clients.append(sock)
                request = f"GET /prod/fibo?n={i} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                sock.sendall(request.encode() + b"\r\n")
            srv.sigterm_with_queue(workers, QUEUED_CLIENTS)
            ref = reference(list(range(QUEUED_CLIENTS)))
            failures = []
            for i, sock in enumerate(clients):
                try:
                    resp = http.client.HTTPResponse(sock)
                    resp.begin()
                    body = resp.read()
                    if resp.status != 200:
                        failures.append(f"n={i}: status {resp.status}")
                    elif json.loads(body, parse_int=Decimal)["result"] != ref[i]:
                        failures.append(f"n={i}: wrong result")
                except Exception as exc:  # a reset or an EOF: the connection was lost
                    failures.append(f"n={i}: {type(exc).__name__}: {exc}")
        finally:
            for sock in clients:
                sock.close()
        assert failures == [], f"{len(failures)} of {QUEUED_CLIENTS} lost: {failures[:5]}"
        assert srv.wait(GRACEFUL_TIMEOUT + 10) == 0
    assert srv.find("server stopped")


# Past the 0.2 s in which a stopping worker still accepts, well inside the 2 s
# it still waits for kept-alive and not yet complete connections (docs/graceful.md).
AFTER_LINGER = 0.5


@pytest.mark.parametrize("held", ["kept-alive", "half a head"])
def test_a_connection_held_at_sigterm_is_served_after_the_accept_linger(
    tmp_path: Path, held: str
) -> None:
    """A stopping worker stops accepting after 0.2 s but keeps serving what it holds."""
    head = b"GET /dev/fibo?n=10 HTTP/1.1\r\nHost: t\r\n"
    with ServerProcess(
        {"env": "DEV", "maxseq": 100}, tmp_path, env={"WEB_CONCURRENCY": "1"}
    ) as srv:
        srv.wait_for("server start", timeout=30)
        with socket.create_connection((HOST, srv.port), timeout=10) as sock:
            # A first exchange: the worker has accepted this connection.
            sock.sendall(head + b"\r\n")
            assert next_json_answer(sock) == (200, {"result": 55})
            if held == "half a head":
                sock.sendall(head)
                rest = b"\r\n"
            else:
                rest = head + b"\r\n"
            srv.terminate(signal.SIGTERM)
            stopping = srv.wait_for("worker stopping", timeout=5)
            assert stopping["connections"] == 1
            time.sleep(AFTER_LINGER)
            sock.sendall(rest)
            assert next_json_answer(sock) == (200, {"result": 55})
            sock.settimeout(GRACEFUL_TIMEOUT)
            assert sock.recv(1) == b"", "the stopping worker must close the connection"
        assert srv.wait(GRACEFUL_TIMEOUT + 10) == 0


def test_a_worker_whose_master_is_killed_serves_what_it_holds_then_stops(
    tmp_path: Path,
) -> None:
    """A worker left without its master (SIGKILL, OOM) stops as on SIGTERM: it
    says so, finishes the connection it holds, and leaves."""
    head = b"GET /dev/fibo?n=10 HTTP/1.1\r\nHost: t\r\n"
    with ServerProcess(
        {"env": "DEV", "maxseq": 100}, tmp_path, env={"WEB_CONCURRENCY": "1"}
    ) as srv:
        srv.wait_for("server start", timeout=30)
        (worker,) = srv.wait_workers(1)
        with socket.create_connection((HOST, srv.port), timeout=10) as sock:
            sock.sendall(head + b"\r\n")
            assert next_json_answer(sock) == (200, {"result": 55})
            sock.sendall(head)
            srv.terminate(signal.SIGKILL)
            assert srv.wait(10, log_eof=False) == -signal.SIGKILL
            # gunicorn's worker sees its parent gone within one turn of its loop (1 s).
            stopping = srv.wait_for("worker stopping", timeout=5)
            assert (stopping["pid"], stopping["connections"]) == (worker, 1)
            sock.sendall(b"\r\n")
            assert next_json_answer(sock) == (200, {"result": 55})
            sock.settimeout(GRACEFUL_TIMEOUT)
            assert sock.recv(1) == b"", "the stopping worker must close the connection"
        wait_until(lambda: has_exited(worker), GRACEFUL_TIMEOUT, "the worker's exit")
