"""Connections spread over the workers (docs/worker.md, "Balancing").

A proxy keeps a handful of keep-alive connections to a pod; nothing in the
kernel spreads them over the pod's workers. Here 4 keep-alive connections send
requests in a loop against 2 workers, and each worker must answer at least a
quarter of them. Which worker answered is read from the kernel (which process
holds the server's end of the connection), so the count does not depend on how
fast anything is. Every request must get its 200: balancing may end a
connection only with `Connection: close` on an answer, never under a request.

The worst case is set up on purpose: one worker is stopped (SIGSTOP) long
enough to count as gone, the 4 connections open and get their first answer
from the other, and only then does the stopped one go on: all 4 sit on one
worker, as after a worker restart, and a worker that never gives a connection
back fails here every time.
"""

from __future__ import annotations

import http.client
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from fiboserver.worker import balance
from tests.support.procinfo import HOST, process_state, socket_owner, wait_until
from tests.support.serverproc import ServerProcess
from tests.support.testlog import say

CONNECTIONS = 4  # a proxy's handful of upstream connections (the case)
WORKERS = 2
REQUESTS = 400  # per connection: enough for many turns of each worker's loop
PATH = "/prod/fibo?n=30"
# Longer than the 3 s after which a worker that has not written its count is
# taken for gone (docs/worker.md, "Balancing").
GONE = 4.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    config = {"env": "PROD", "maxseq": 100000}
    with ServerProcess(config, tmp_path, env={"WEB_CONCURRENCY": str(WORKERS)}) as srv:
        wait_until(lambda: len(srv.find("worker booted")) == WORKERS, 30, "workers booted")
        yield srv


class Client:
    """One keep-alive client: sends `REQUESTS` requests, reconnecting when an
    answer says `Connection: close`, and counts them by the worker that held the
    connection."""

    def __init__(self, srv: ServerProcess, workers: list[int]) -> None:
        self.srv = srv
        self.workers = workers
        self.served: Counter[int] = Counter()
        self.statuses: Counter[int] = Counter()
        self.connections = 0
        self._conn: http.client.HTTPConnection | None = None
        self._worker = 0

    def one(self) -> None:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(HOST, self.srv.port, timeout=30)
            self._conn.connect()
            self.connections += 1
            self._worker = 0
        assert self._conn.sock is not None
        local_port = self._conn.sock.getsockname()[1]
        self._conn.request("GET", PATH)
        response = self._conn.getresponse()
        # Answered, so accepted: a worker holds the connection, until this client
        # closes it (after reading an answer that says `Connection: close`).
        if not self._worker:
            owner = socket_owner(self.srv.port, local_port, self.workers)
            assert owner is not None, "no worker holds the connection"
            self._worker = owner
        response.read()
        self.statuses[response.status] += 1
        self.served[self._worker] += 1
        if response.will_close:
            self._conn.close()
            self._conn = None

    def run(self, count: int) -> None:
        for _ in range(count):
            self.one()


@pytest.mark.parametrize("start", ["together", "all on one worker"])
def test_four_keep_alive_connections_are_served_by_both_workers(
    server: ServerProcess, start: str
) -> None:
    workers = server.wait_workers(WORKERS)
    clients = [Client(server, workers) for _ in range(CONNECTIONS)]
    if start == "all on one worker":
        stopped = workers[1]
        os.kill(stopped, signal.SIGSTOP)
        try:
            wait_until(lambda: process_state(stopped) == "T", 10, "worker stopped")
            time.sleep(GONE)
            for client in clients:
                client.one()
        finally:
            os.kill(stopped, signal.SIGCONT)
        assert all(set(c.served) == {workers[0]} for c in clients)
        assert sum(c.connections for c in clients) == CONNECTIONS
    threads = [threading.Thread(target=c.run, args=(REQUESTS,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    served = sum((c.served for c in clients), Counter())
    statuses = sum((c.statuses for c in clients), Counter())
    total = sum(served.values())
    reconnects = sum(c.connections for c in clients) - CONNECTIONS
    say("balancing", f"{start}: served {dict(served)} of {total}, {reconnects} reconnects")
    assert statuses == Counter({200: total}), statuses
    assert total == CONNECTIONS * REQUESTS + (CONNECTIONS if start != "together" else 0)
    for pid in workers:
        assert served[pid] * 4 >= total, (pid, dict(served))


# --- the rules and the board, without a server ---------------------------------------


@pytest.mark.parametrize(
    ("mine", "others", "other_workers", "accept", "above"),
    [
        (0, 0, 1, True, False),  # the first connection anywhere
        (1, 0, 1, False, False),  # a second would put both on this worker
        (1, 1, 1, True, False),  # 2 of 3: the share of 3 over 2 is 2
        (2, 1, 1, False, False),
        (3, 1, 1, False, True),  # wrk's 4 connections, 3 on one worker
        (4, 0, 1, False, True),
        (4, 0, 0, True, False),  # alone (the other gone): everything is its share
        (8, 8, 1, True, False),
        (9, 7, 1, False, True),
        (3, 12, 3, True, False),  # 4 workers, 16 connections with the new one: share 4
        (5, 10, 3, False, True),
    ],
)
def test_the_share_rules(
    mine: int, others: int, other_workers: int, accept: bool, above: bool
) -> None:
    pod = balance.Pod(others, other_workers)
    assert balance.may_accept(mine, pod) is accept
    assert balance.above_share(mine, pod) is above


def test_the_board_is_shared_with_forked_workers_and_forgets_silent_ones() -> None:
    board = balance.Board(slots=4)
    now = time.monotonic()
    pid = os.fork()
    if pid == 0:  # a worker: writes its slot and leaves
        board.write(1, 7, now)
        board.write(2, 5, now - 10)  # a worker that went silent long ago
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    board.write(0, 3, now)
    assert board.pod(0, now) == balance.Pod(others=7, other_workers=1)
    assert board.pod(1, now) == balance.Pod(others=3, other_workers=1)


def test_the_others_add_up_and_three_seconds_of_silence_is_gone() -> None:
    board = balance.Board(slots=4)
    board.write(1, 7, 100.0)  # times chosen so that their differences are exact
    board.write(2, 5, 101.0)
    board.write(3, 2, 102.0)
    assert board.pod(0, 102.0) == balance.Pod(others=14, other_workers=3)
    # docs/worker.md: a worker silent for 3 s is taken for gone.
    assert board.pod(0, 103.0) == balance.Pod(others=7, other_workers=2)
    assert board.pod(0, 104.5) == balance.Pod(others=2, other_workers=1)


def test_a_worker_that_left_counts_for_nothing_at_any_time() -> None:
    board = balance.Board(slots=4)
    staying, leaving = balance.Balancer(age=1, board=board), balance.Balancer(age=2, board=board)
    now = time.monotonic()
    leaving.publish(5, now)
    assert board.pod(staying.slot, now) == balance.Pod(others=5, other_workers=1)
    leaving.leave()
    assert board.pod(staying.slot, now) == balance.Pod(others=0, other_workers=0)
    # A clock that started a moment ago (time.monotonic() counts from boot).
    assert board.pod(staying.slot, 0.5) == balance.Pod(others=0, other_workers=0)


def test_the_keep_alive_rule_reads_the_others_again_after_10_ms() -> None:
    board = balance.Board(slots=4)
    balancer, peer = balance.Balancer(age=1, board=board), balance.Balancer(age=2, board=board)
    peer.publish(0, 0.0)  # times chosen so that their differences are exact
    # Two connections with an idle peer: one is above the share.
    assert balancer.should_close(2, 0.0)
    peer.publish(2, 0.0)  # the peer took on two
    assert balancer.should_close(2, 0.005), "read again before 10 ms"
    assert not balancer.should_close(2, 0.01), "not read again at 10 ms"


def test_one_connection_leaves_at_a_time() -> None:
    balancer = balance.Balancer(age=1, board=balance.Board(slots=4))
    now = time.monotonic()
    balance.Balancer(age=2, board=balancer.board).publish(0, now)
    assert balancer.should_close(4, now)
    balancer.leaving += 1
    assert not balancer.should_close(4, now)
