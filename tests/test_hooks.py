"""fiboserver.server.hooks and fiboserver.server.listener: the master's side of a graceful stop.

The socket filter is checked on a real listening socket on 127.0.0.1: after it
is attached a new connect gets no answer, while a connection the kernel had
already queued is still accepted and served.
"""

from __future__ import annotations

import errno
import signal
import socket
from pathlib import Path

import pytest

from fiboserver.server.listener import refuse_new_connections
from tests.support.hosttools import IN_CI
from tests.support.procinfo import HOST
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
