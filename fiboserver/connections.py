"""The connections a worker's event loop holds, and how long it waits for each.

A connection the loop holds waits for one of three things, each in its own set
kept in deadline order (every entry of a set gets the same timeout, so the
order of insertion is the order of deadlines and the first entry expires first):

- `heads`: a new connection, or a kept-alive one that has started its next
  request, until its whole head has arrived (HEAD_TIMEOUT);
- `idle`: a kept-alive connection between requests (gunicorn's `keepalive`);
- `closing`: after our last answer, until the client closes too (CLOSE_LINGER),
  its input read and dropped meanwhile.

A connection in none of them is with a pool thread, in the admission queue, or
waiting for the loop to write a refusal.
"""

from __future__ import annotations

import contextlib
import resource
import selectors
import socket
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from gunicorn.workers.gthread import TConn

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


class Conn(TConn):  # type: ignore[misc]
    """A client connection and what the loop knows about it.

    Its socket stays in blocking mode, as the pool threads want it; the loop
    passes MSG_DONTWAIT instead. TConn's constructor is not called because it
    makes the socket non-blocking (a system call here and one in the thread for
    every request); it only sets the attributes below.
    """

    def __init__(self, cfg: Any, sock: socket.socket, client: Any, server: Any) -> None:
        self.cfg = cfg
        self.sock = sock
        self.client = client
        self.server = server
        self.timeout: float | None = None
        self.parser: Any = None
        self.initialized = False
        self.is_http2 = False
        # gthread's handle() waits for data unless told it is there: it always is.
        self.data_ready = True
        self.peer = f"{client[0]}:{client[1]}" if isinstance(client, tuple) else str(client)
        self.buf = b""  # a head read so far, not complete yet
        self.head = b""  # the complete head being served (and what followed it)
        self.head_only = True  # `head` holds nothing after the head itself
        self.deadline = 0.0  # when the loop gives up waiting for it
        self.waiting: OrderedDict[Conn, None] | None = None  # the set it waits in
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
    """The loop's connections: the three waiting sets and the poller registrations."""

    def __init__(self, poller: selectors.BaseSelector) -> None:
        self.poller = poller
        self.heads: OrderedDict[Conn, None] = OrderedDict()
        self.idle: OrderedDict[Conn, None] = OrderedDict()
        self.closing: OrderedDict[Conn, None] = OrderedDict()
        self.open = 0  # connections accepted and not closed yet
        # Once the worker stops: no wait goes past this (time.monotonic()).
        self.last_deadline = _NEVER

    def accepted(self, conn: Conn) -> None:
        self.open += 1

    def wait(self, conn: Conn, waiting: OrderedDict[Conn, None], deadline: float) -> None:
        """Let `conn` wait in `waiting` (registered for reading) until `deadline`."""
        conn.deadline = min(deadline, self.last_deadline)
        conn.waiting = waiting
        waiting[conn] = None
        if not conn.registered:
            self.poller.register(conn.sock, selectors.EVENT_READ, conn)
            conn.registered = True

    def unwait(self, conn: Conn) -> None:
        """Take `conn` out of its waiting set. It stays registered with the poller:
        a connection answered by the loop itself waits again at once, and each
        registration is a system call (a chance for another thread to take the GIL)."""
        waiting = conn.waiting
        if waiting is not None:
            del waiting[conn]
            conn.waiting = None

    def release(self, conn: Conn) -> None:
        """Stop watching `conn`'s socket (a thread takes it over, or it is closed)."""
        self.unwait(conn)
        if conn.registered:
            self.poller.unregister(conn.sock)
            conn.registered = False

    def close(self, conn: Conn) -> None:
        self.release(conn)
        self.open -= 1
        conn.sock.close()

    def close_lingering(self, conn: Conn) -> None:
        """Close after the client has read our answer: shut our side (again, for
        answers a thread wrote), then read and drop its input until it closes."""
        self.unwait(conn)
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close(conn)
            return
        self.wait(conn, self.closing, time.monotonic() + CLOSE_LINGER)

    def expired(self, now: float) -> Iterator[Conn]:
        """Take the connections whose deadline has passed out of their sets: the
        caller answers or closes each."""
        for waiting in (self.heads, self.idle, self.closing):
            while waiting:
                conn = next(iter(waiting))
                if conn.deadline > now:
                    break
                self.unwait(conn)
                yield conn

    def next_deadline(self) -> float:
        """The earliest deadline of a waiting connection (inf if none waits)."""
        # Once per loop turn: plain code, no generator.
        earliest = _NEVER
        if self.heads:
            earliest = next(iter(self.heads)).deadline
        if self.idle:
            earliest = min(earliest, next(iter(self.idle)).deadline)
        if self.closing:
            earliest = min(earliest, next(iter(self.closing)).deadline)
        return earliest

    def evict_idle(self) -> bool:
        """Close the longest-waiting connection that has sent nothing (kept-alive
        ones first), to free a descriptor; False if there is none."""
        for waiting in (self.idle, self.heads):
            for conn in waiting:
                if not conn.buf:
                    self.close(conn)
                    return True
        return False

    def stop_by(self, deadline: float) -> None:
        """From now on no connection waits past `deadline`, those waiting included.

        Capping every deadline of a set at the same time keeps the set's order.
        """
        self.last_deadline = deadline
        for waiting in (self.heads, self.idle):
            for conn in waiting:
                conn.deadline = min(conn.deadline, deadline)

    def close_all(self) -> None:
        for waiting in (self.heads, self.idle, self.closing):
            while waiting:
                with contextlib.suppress(OSError):
                    self.close(next(iter(waiting)))
