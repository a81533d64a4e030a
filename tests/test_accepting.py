"""fiboserver.worker.accepting: one worker's accepting, on a real listening socket,
a real poller and a private balancing board (another worker's slot written by
the test).

- above its share, a worker leaves a connection queued and stops accepting for a
  short pause; while draining it takes it all the same;
- when a balancing pause ends, what the others left queued is taken at once; a
  later resume takes nothing of its own accord;
- out of descriptors with no idle connection to close: a short pause, not a
  spin on a listener that stays readable; with one to close: it is closed and
  the new connection taken.
"""

from __future__ import annotations

import contextlib
import os
import resource
import selectors
import socket
import time
from collections.abc import Iterator

import pytest

from fiboserver.worker.accepting import Acceptor
from fiboserver.worker.balance import Balancer, Board
from fiboserver.worker.connections import Conn, Connections, State
from tests.support.procinfo import HOST

# README "HTTP API": a head not complete in 10 s is refused.
HEAD_WITHIN = 10.0
# "No pause is long": a full listen queue would make the kernel drop a probe's SYN.
LONGEST_PAUSE = 1.0


class Worker:
    """An Acceptor with what the loop would give it, and what it did."""

    def __init__(self, poller: selectors.BaseSelector, board: Board) -> None:
        self.conns = Connections(poller)
        self.enabled: list[bool] = []
        self.arrived: list[Conn] = []
        self.acceptor = Acceptor(
            None, self.conns, Balancer(age=1, board=board), self.enabled.append,
            self.arrived.append,
        )  # fmt: skip

    def close(self) -> None:
        for conn in self.arrived:
            conn.sock.close()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server((HOST, 0), backlog=16) as sock:
        sock.setblocking(False)
        yield sock


@pytest.fixture
def worker() -> Iterator[Worker]:
    with selectors.DefaultSelector() as poller:
        w = Worker(poller, Board(slots=4))
        try:
            yield w
        finally:
            w.close()


@pytest.fixture
def clients() -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []
    yield made
    for sock in made:
        sock.close()


def connect(listener: socket.socket, clients: list[socket.socket], count: int = 1) -> None:
    for _ in range(count):
        clients.append(socket.create_connection(listener.getsockname(), timeout=5))
    time.sleep(0.05)  # the handshakes complete in the kernel's queue


def another_worker_idle(worker: Worker) -> None:
    """A second live worker, holding no connection."""
    Balancer(age=2, board=worker.acceptor.balancer.board).publish(0, time.monotonic())


def test_above_its_share_a_worker_pauses_and_leaves_the_connection_queued(
    worker: Worker, listener: socket.socket, clients: list[socket.socket]
) -> None:
    another_worker_idle(worker)
    connect(listener, clients, 2)
    before = time.monotonic()
    assert worker.acceptor.on_listener(listener, serving=True) == 1  # its share: one of two
    assert worker.acceptor.on_listener(listener, serving=True) == 0
    assert worker.enabled == [False]
    assert before < worker.acceptor.paused_until <= before + LONGEST_PAUSE
    assert len(worker.arrived) == 1
    # Draining, it takes what is queued whatever its share.
    assert worker.acceptor.on_listener(listener, serving=False) == 1
    assert len(worker.arrived) == 2
    assert worker.conns.open == 2
    # Each has until HEAD_WITHIN from its accept to send its whole head.
    assert all(before < c.deadline - HEAD_WITHIN <= time.monotonic() for c in worker.arrived)


def test_a_balancing_pause_ends_by_taking_what_the_others_left(
    worker: Worker, listener: socket.socket, clients: list[socket.socket]
) -> None:
    another_worker_idle(worker)
    connect(listener, clients, 1)
    assert worker.acceptor.on_listener(listener, serving=True) == 1
    connect(listener, clients, 3)
    assert worker.acceptor.on_listener(listener, serving=True) == 0  # a pause
    worker.acceptor.resume([listener])
    assert worker.enabled == [False, True]
    assert len(worker.arrived) == 4  # all three the others left, at once
    # A resume after a pause of another kind takes nothing by itself.
    connect(listener, clients, 1)
    worker.acceptor.pause(0.01)
    worker.acceptor.resume([listener])
    assert worker.enabled == [False, True, False, True]
    assert len(worker.arrived) == 4


@contextlib.contextmanager
def descriptors_exhausted() -> Iterator[None]:
    """This process at its open-files limit: the next descriptor fails with EMFILE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
    try:
        with contextlib.suppress(OSError):
            while True:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_out_of_descriptors_with_nothing_to_free_pauses(
    worker: Worker, listener: socket.socket, clients: list[socket.socket]
) -> None:
    connect(listener, clients, 1)
    with descriptors_exhausted():
        before = time.monotonic()
        assert worker.acceptor.take(listener, 4) == 0
    assert worker.enabled == [False]
    assert before < worker.acceptor.paused_until <= before + LONGEST_PAUSE
    assert worker.acceptor.take(listener, 4) == 1  # once a descriptor is free


def test_out_of_descriptors_an_idle_connection_makes_room(
    worker: Worker, listener: socket.socket, clients: list[socket.socket]
) -> None:
    connect(listener, clients, 1)
    assert worker.acceptor.take(listener, 1) == 1
    idle = worker.arrived[0]
    worker.conns.wait(idle, State.IDLE, time.monotonic() + 60)
    connect(listener, clients, 1)
    with descriptors_exhausted():
        assert worker.acceptor.take(listener, 1) == 1
    assert idle.state is State.CLOSED
    assert worker.enabled == []
    assert len(worker.arrived) == 2
