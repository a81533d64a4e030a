"""Taking connections from the listening socket, for one worker's event loop.

Runs in the worker's main thread (fiboserver/worker/loop.py calls it). The loop
accepts whenever it holds no more than its share of the server's connections
(fiboserver/worker/balance.py); otherwise it pauses and leaves them to the
other workers. A full listen queue would make the kernel drop a probe's SYN,
so no pause is long, and what the others left queued for a whole pause is
taken when it ends.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from typing import Any

from fiboserver.worker.balance import ACCEPT_DELAY, Balancer
from fiboserver.worker.connections import Conn, Connections
from fiboserver.worker.heads import HEAD_TIMEOUT

# Connections accepted per wake-up while serving: one, as gthread does. Every
# worker is woken for a new connection and one of them takes it, so a burst of
# connections (a proxy's, wrk's) spreads over the workers; a worker taking a
# batch would take the whole burst and leave the others idle. Draining at
# SIGTERM, and the end of a balancing pause, take the queue in batches of
# DRAIN_BATCH.
ACCEPT_BATCH = 1
DRAIN_BATCH = 64
# Out of file descriptors with none to free: how long accepting pauses.
FULL_PAUSE = 0.1
_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class Acceptor:
    """One worker's accepting: the balancing check, the accept calls, the pauses.

    `enable(on)` registers or unregisters the listeners with the loop's poller;
    `arrived(conn)` gets each new connection (the loop reads its head at once).
    """

    def __init__(
        self,
        cfg: Any,
        conns: Connections,
        balancer: Balancer,
        enable: Callable[[bool], None],
        arrived: Callable[[Conn], None],
    ) -> None:
        self.cfg = cfg
        self.conns = conns
        self.balancer = balancer
        self._enable = enable
        self._arrived = arrived
        self.paused_until = 0.0  # while not accepting: when to start again
        self._left_to_others = False  # the pause is a balancing one
        self._names: dict[Any, Any] = {}

    def held(self) -> int:
        """The connections this worker holds that may bring another request."""
        return self.conns.kept() - self.balancer.leaving

    def on_listener(self, listener: Any, serving: bool) -> int:
        """A listener is readable: take one connection, or (while `serving`, not
        draining) leave it to the others if this worker would go above its share."""
        if serving and not self.balancer.may_accept(self.held(), time.monotonic()):
            self._left_to_others = True
            self.pause(ACCEPT_DELAY)
            return 0
        return self.take(listener, ACCEPT_BATCH)

    def pause(self, seconds: float) -> None:
        self._enable(False)
        self.paused_until = time.monotonic() + seconds

    def resume(self, listeners: list[Any]) -> None:
        self._enable(True)
        if self._left_to_others:
            # What the other workers left queued for a whole pause is this one's.
            self._left_to_others = False
            for listener in listeners:
                self.take(listener, DRAIN_BATCH)

    def take(self, listener: Any, batch: int) -> int:
        """Accept what is queued, up to `batch` connections; each waits for its
        head. Returns how many were accepted."""
        name = self._names.get(listener)
        if name is None:
            name = self._names[listener] = listener.getsockname()
        deadline = time.monotonic() + HEAD_TIMEOUT
        accepted = 0
        while accepted < batch:
            try:
                sock, addr = listener.accept()
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ECONNABORTED:
                    continue
                if exc.errno not in _OUT_OF_DESCRIPTORS:
                    raise
                if not self.conns.evict_idle():
                    # Nothing to free: pause rather than spin on a readable listener.
                    self.pause(FULL_PAUSE)
                    break
                continue
            accepted += 1
            conn = Conn(self.cfg, sock, addr, name, deadline)
            self.conns.accepted(conn)
            self._arrived(conn)
        return accepted
