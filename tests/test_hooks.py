"""fiboserver.server.hooks and fiboserver.server.listener: the master's side of a graceful stop.

The socket filter is checked on a real listening socket on 127.0.0.1: after it
is attached a new connect gets no answer, while a connection the kernel had
already queued is still accepted and served.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from fiboserver.server import hooks
from fiboserver.server.listener import refuse_new_connections
from tests.support.hosttools import IN_CI
from tests.support.logcapture import JsonCapture
from tests.support.procinfo import HOST, child_pids, wait_until
from tests.support.serverproc import ServerProcess


def _listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((HOST, 0))
    sock.listen(16)
    return sock


def _refuse_or_skip(listener: socket.socket) -> None:
    """Attach the filter; where the kernel refuses socket filters to this process
    (not root with unprivileged BPF disabled) the test skips, but never in CI,
    which runs as root where the filter must work."""
    try:
        refuse_new_connections(listener)
    except PermissionError:
        if IN_CI:
            raise
        pytest.skip("this kernel refuses socket filters to this process (not root?)")


def test_filter_refuses_new_connections_and_keeps_queued_ones() -> None:
    with _listener() as listener:
        addr = listener.getsockname()
        queued = socket.create_connection(addr, timeout=2)  # handshake done, not accepted
        _refuse_or_skip(listener)
        with pytest.raises(OSError) as refused:
            socket.create_connection(addr, timeout=0.5).close()
        # A dropped SYN is never answered: the connect times out, nothing resets it.
        assert isinstance(refused.value, TimeoutError) or refused.value.errno == errno.ETIMEDOUT
        served, _ = listener.accept()
        with served, queued:
            queued.sendall(b"ping")
            assert served.recv(4) == b"ping"


def test_filter_is_per_socket() -> None:
    """Another listener (a new master after USR2 binds its own) is untouched."""
    with _listener() as filtered, _listener() as other:
        _refuse_or_skip(filtered)
        with socket.create_connection(other.getsockname(), timeout=2):
            conn, _ = other.accept()
            conn.close()


def test_graceful_stop_logs_the_effective_timeout(tmp_path: Path) -> None:
    """`graceful stopping server` reports what gunicorn will use, overrides included."""
    with ServerProcess(
        {"env": "PROD", "maxseq": 100},
        tmp_path,
        env={"WEB_CONCURRENCY": "1", "GUNICORN_CMD_ARGS": "--graceful-timeout 7"},
    ) as srv:
        srv.wait_for("worker booted")
        srv.terminate(signal.SIGTERM)
        assert srv.wait(30) == 0
    stopping = srv.find("graceful stopping server")
    assert [r["graceful_timeout"] for r in stopping] == [7]
    assert srv.find("server stopped"), srv.output()


def test_a_worker_stopped_before_its_first_heartbeat_is_aborted_on_timeout(
    tmp_path: Path,
) -> None:
    """gunicorn's master compares a worker's heartbeat with its monotonic clock,
    and the heartbeat file starts with a wall-clock time: until the worker's
    first heartbeat it is never too old. The pre_fork hook starts it, so a worker
    that hangs as it starts is aborted on timeout like any other."""
    with ServerProcess(
        {"env": "DEV", "maxseq": 100},
        tmp_path,
        env={"WEB_CONCURRENCY": "1", "GUNICORN_CMD_ARGS": "--timeout 2"},
    ) as srv:
        # As soon as the worker exists: most often before its loop's first heartbeat.
        wait_until(lambda: child_pids(srv.pid), 30, "a worker", interval=0.001)
        (worker,) = child_pids(srv.pid)
        os.kill(worker, signal.SIGSTOP)
        exited = srv.wait_for("worker exited", timeout=20, where=lambda r: r["pid"] == worker)
        assert exited["reason"] == "timeout"


def test_the_abort_hook_names_the_worker(fibo_logs: JsonCapture) -> None:
    # The master's SIGKILL follows its SIGABRT as soon as the master wakes, which a
    # stopped worker let go on wakes it for: a process test cannot see this record.
    hooks.worker_abort(SimpleNamespace(pid=4242))
    (record,) = fibo_logs.find("worker aborted on timeout")
    assert (record["level"], record["pid"]) == ("ERROR", 4242)
