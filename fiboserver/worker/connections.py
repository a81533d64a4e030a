"""The connections a worker's event loop holds: each one's state, and its deadline.

Runs in the worker's event loop. A connection is in exactly one `State`; the
table (`Connections`) owns the transitions. Three states are timed, each with
its own set kept in deadline order (every entry of a set gets the same timeout,
so the order of insertion is the order of deadlines and the first entry expires
first):

- HEAD: a new connection, or a kept-alive one that has started its next
  request, until its whole head has arrived (HEAD_TIMEOUT);
- IDLE: a kept-alive connection between requests (gunicorn's `keepalive`);
- CLOSING: after our last answer, until the client closes too (CLOSE_LINGER),
  its input read and dropped meanwhile.

The others: NEW (just accepted, nothing read yet), QUEUED (its request waits in
admission's queue), SERVING (a pool thread has it), REFUSING (its refusal waits
for the loop's budget; still watched, in case the client leaves), EXPIRED (its
deadline passed; the loop answers or closes it at once) and CLOSED.
"""

from __future__ import annotations

import contextlib
import enum
import resource
import selectors
import socket
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from fiboserver.gunicorn_internals import GthreadConn
from fiboserver.logs import client_name

# How long a closed connection's unread input is still read and dropped, so the
# kernel does not answer it with a reset that can destroy our last answer.
CLOSE_LINGER = 2.0
_NEVER = float("inf")


def raise_open_files_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class State(enum.Enum):
    NEW = "new"
    HEAD = "head"
    IDLE = "idle"
    CLOSING = "closing"
    QUEUED = "queued"
    SERVING = "serving"
    REFUSING = "refusing"
    EXPIRED = "expired"
    CLOSED = "closed"


# The timed states, in the order their expired connections are handled.
TIMED = (State.HEAD, State.IDLE, State.CLOSING)


class Conn(GthreadConn):
    """A client connection and what the loop knows about it.

    Its socket stays in blocking mode, as the pool threads want it; the loop
    passes MSG_DONTWAIT instead (fiboserver.gunicorn_internals.GthreadConn).
    """

    def __init__(
        self, cfg: Any, sock: socket.socket, client: Any, server: Any, deadline: float
    ) -> None:
        super().__init__(cfg, sock, client, server)
        self.peer = client_name(client)
        self.state = State.NEW
        self.buf = b""  # a head read so far, not complete yet
        self.head = b""  # the complete head being served (and what followed it)
        self.head_only = True  # `head` holds nothing after the head itself
        self.deadline = deadline  # when the loop gives up waiting for it (its head, first)
        self.registered = False  # with the loop's poller
        # When the server began waiting for its current request (time.monotonic()):
        # the durations of refusals are counted from here.
        self.started = time.monotonic()
        self.service = 0.0  # seconds a pool thread spent on its last request
        self.probe = False  # served in the probe lane

    def client_left(self) -> bool:
        """Whether the client has closed its side (for a request that waited)."""
        try:
            return bool(self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"")
        except BlockingIOError:
            return False
        except OSError:
            return True


class Connections:
    """The loop's connections: their states, the timed sets and the poller registrations."""

    def __init__(self, poller: selectors.BaseSelector) -> None:
        self.poller = poller
        self._timed: dict[State, OrderedDict[Conn, None]] = {s: OrderedDict() for s in TIMED}
        self.open = 0  # connections accepted and not closed yet
        # Once the worker stops: no wait goes past this (time.monotonic()).
        self.last_deadline = _NEVER

    def in_state(self, state: State) -> list[Conn]:
        """The connections waiting in timed `state`, earliest deadline first."""
        return list(self._timed[state])

    def accepted(self, conn: Conn) -> None:
        self.open += 1

    def kept(self) -> int:
        """Open connections that may bring another request (not closing)."""
        return self.open - len(self._timed[State.CLOSING])

    def wait(self, conn: Conn, state: State, deadline: float) -> None:
        """Let `conn` wait in timed `state` (registered for reading) until `deadline`."""
        self._leave(conn)
        conn.deadline = min(deadline, self.last_deadline)
        conn.state = state
        self._timed[state][conn] = None
        if not conn.registered:
            self.poller.register(conn.sock, selectors.EVENT_READ, conn)
            conn.registered = True

    def hold(self, conn: Conn, state: State) -> None:
        """Put `conn` in untimed `state`, still registered if it was: a connection
        answered by the loop itself waits again at once, and each registration is
        a system call (a chance for another thread to take the GIL)."""
        self._leave(conn)
        conn.state = state

    def release(self, conn: Conn, state: State) -> None:
        """Put `conn` in untimed `state` and stop watching its socket (a thread
        takes it over, or it waits in admission's queue)."""
        self.hold(conn, state)
        if conn.registered:
            self.poller.unregister(conn.sock)
            conn.registered = False

    def close(self, conn: Conn) -> None:
        self.release(conn, State.CLOSED)
        self.open -= 1
        conn.sock.close()

    def close_lingering(self, conn: Conn) -> None:
        """Close after the client has read our answer: shut our side (again, for
        answers a thread wrote), then read and drop its input until it closes."""
        self._leave(conn)
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close(conn)
            return
        self.wait(conn, State.CLOSING, time.monotonic() + CLOSE_LINGER)

    def _leave(self, conn: Conn) -> None:
        if conn.state in self._timed:
            del self._timed[conn.state][conn]

    def expired(self, now: float) -> Iterator[Conn]:
        """The connections whose deadline has come, each moved to EXPIRED: the
        caller answers or closes it."""
        for state in TIMED:
            waiting = self._timed[state]
            while waiting:
                conn = next(iter(waiting))
                if conn.deadline > now:
                    break
                del waiting[conn]
                conn.state = State.EXPIRED
                yield conn

    def next_deadline(self) -> float:
        """The earliest deadline of a waiting connection (inf if none waits)."""
        # Once per loop turn: plain code, no generator.
        earliest = _NEVER
        for waiting in self._timed.values():
            if waiting:
                earliest = min(earliest, next(iter(waiting)).deadline)
        return earliest

    def evict_idle(self) -> bool:
        """Close the longest-waiting connection that has sent nothing (kept-alive
        ones first), to free a descriptor; False if there is none."""
        for state in (State.IDLE, State.HEAD):
            for conn in self._timed[state]:
                if not conn.buf:
                    self.close(conn)
                    return True
        return False

    def stop_by(self, deadline: float) -> None:
        """From now on no connection waits past `deadline`, those waiting included.

        Capping every deadline of a set at the same time keeps the set's order.
        """
        self.last_deadline = deadline
        for state in (State.HEAD, State.IDLE):
            for conn in self._timed[state]:
                conn.deadline = min(conn.deadline, deadline)

    def close_all(self) -> None:
        for waiting in self._timed.values():
            while waiting:
                with contextlib.suppress(OSError):
                    self.close(next(iter(waiting)))
