"""fiboserver.worker.connections: the worker loop's connection states, on real sockets
and a real poller."""

from __future__ import annotations

import resource
import selectors
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from fiboserver.worker.connections import Conn, Connections, State, raise_open_files_limit


@pytest.fixture
def conns() -> Iterator[Connections]:
    with selectors.DefaultSelector() as poller:
        yield Connections(poller)


def _conn(conns: Connections) -> tuple[Conn, socket.socket]:
    server, client = socket.socketpair()
    conn = Conn(None, server, ("127.0.0.1", 1), ("127.0.0.1", 2), 0.0)
    conns.accepted(conn)
    return conn, client


def test_sockets_stay_blocking_for_the_threads(conns: Connections) -> None:
    conn, client = _conn(conns)
    with client:
        assert conn.sock.getblocking()
        assert conn.data_ready and conn.parser is None and not conn.initialized
        conns.close(conn)


def test_the_peer_is_the_address_accept_gave(tmp_path: Path) -> None:
    server, client = _tcp_pair()
    with server, client:
        conn = Conn(None, server, server.getpeername(), server.getsockname(), 0.0)
        assert conn.peer == f"127.0.0.1:{client.getsockname()[1]}"
    # gunicorn may listen on a UNIX socket too (`--bind unix:PATH`): its client has no address.
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(tmp_path / "s"))
        listener.listen()
        with socket.socket(socket.AF_UNIX) as unix_client:
            unix_client.connect(str(tmp_path / "s"))
            sock, addr = listener.accept()
            with sock:
                assert Conn(None, sock, addr, "s", 0.0).peer == ""


def test_client_left_sees_a_close_or_a_reset_and_nothing_else(conns: Connections) -> None:
    conn, client = _conn(conns)
    with client:
        assert not conn.client_left()  # open and silent
        client.sendall(b"GET / HTTP/1.1\r\n")
        assert not conn.client_left()  # open, with bytes the server has not read
        assert conn.sock.recv(64) == b"GET / HTTP/1.1\r\n"  # only peeked at
        client.close()
        assert conn.client_left()
        conns.close(conn)
    reset, peer = _tcp_pair()
    with reset, peer:
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()  # an RST: the server's next read fails
        conn = Conn(None, reset, ("127.0.0.1", 1), ("127.0.0.1", 2), 0.0)
        assert conn.client_left()


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return server, client


def test_a_connection_waits_in_one_set_in_deadline_order(conns: Connections) -> None:
    first, c1 = _conn(conns)
    second, c2 = _conn(conns)
    with c1, c2:
        conns.wait(first, State.HEAD, 10.0)
        conns.wait(second, State.HEAD, 20.0)
        assert conns.in_state(State.HEAD) == [first, second] and conns.next_deadline() == 10.0
        assert first.registered and conns.poller.get_key(first.sock).data is first
        assert list(conns.expired(9.5)) == []
        assert list(conns.expired(10.0)) == [first]  # at its deadline: expired
        assert first.state is State.EXPIRED and conns.in_state(State.HEAD) == [second]
        # Out of its set, still registered: it may wait again without a system call.
        assert first.registered
        conns.wait(first, State.IDLE, 30.0)
        conns.release(second, State.SERVING)
        assert not second.registered and second.state is State.SERVING
        assert conns.next_deadline() == 30.0
        conns.close(first)
        conns.close(second)
    assert conns.open == 0 and conns.next_deadline() == float("inf")


def test_expiring_looks_at_every_timed_state(conns: Connections) -> None:
    """A head still within its time does not hide a kept-alive connection past its own."""
    reading, c1 = _conn(conns)
    idle, c2 = _conn(conns)
    with c1, c2:
        conns.wait(reading, State.HEAD, 20.0)
        conns.wait(idle, State.IDLE, 10.0)
        assert list(conns.expired(15.0)) == [idle]
        conns.close_all()


def test_close_lingering_half_closes_and_waits_for_the_client(conns: Connections) -> None:
    conn, client = _conn(conns)
    with client:
        conns.close_lingering(conn)
        assert client.recv(10) == b""  # our side is shut: the client sees the end
        assert conn.state is State.CLOSING and conns.open == 1
        conns.close(conn)
    assert conns.open == 0


def test_eviction_frees_the_longest_idle_silent_connection(conns: Connections) -> None:
    talking, c1 = _conn(conns)
    silent, c2 = _conn(conns)
    idle, c3 = _conn(conns)
    with c1, c2, c3:
        talking.buf = b"GET /"
        conns.wait(talking, State.HEAD, 5.0)
        conns.wait(silent, State.HEAD, 6.0)
        conns.wait(idle, State.IDLE, 7.0)
        assert conns.evict_idle()  # kept-alive first
        assert idle.sock.fileno() == -1
        assert conns.evict_idle()
        assert silent.sock.fileno() == -1
        assert not conns.evict_idle()  # a partial head is not thrown away
        conns.close_all()
    assert conns.open == 0


def test_stopping_caps_every_wait(conns: Connections) -> None:
    waiting, c1 = _conn(conns)
    later, c2 = _conn(conns)
    with c1, c2:
        conns.wait(waiting, State.IDLE, 75.0)
        conns.stop_by(2.0)
        assert waiting.deadline == 2.0
        conns.wait(later, State.HEAD, 10.0)
        assert later.deadline == 2.0
        conns.close_all()


def test_open_files_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
        assert raise_open_files_limit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_conn_sets_every_attribute_gthread_gives_a_connection(conns: Connections) -> None:
    """Conn does not call TConn's constructor (it would make the socket non-blocking):
    a gunicorn that adds an attribute there must not go unnoticed."""
    from gunicorn.workers.gthread import TConn

    server, client = socket.socketpair()
    with server, client:
        theirs = set(vars(TConn(None, server, ("127.0.0.1", 1), ("127.0.0.1", 2))))
    conn, other = _conn(conns)
    with other:
        assert theirs <= set(vars(conn)), theirs - set(vars(conn))
        conns.close(conn)
