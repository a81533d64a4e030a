"""gunicorn's gthread worker, taught to drain its listen queue on SIGTERM.

The kernel completes TCP handshakes on a listening socket by itself and queues
the connections until someone calls accept(). Closing the socket then resets
every connection still queued: clients that connected successfully get
ECONNRESET instead of an answer. gthread stops accepting as soon as SIGTERM
arrives and closes the socket when its last request is done, so under load
every connection made in between is lost.

This worker instead, on SIGTERM:
1. marks the process as draining, so `/readyz` answers 503;
2. relies on the master having attached, on a server-wide stop, a socket filter
   that drops new SYNs on the listener (so new clients see a refused or timed-out
   connect, never a reset), letting handshakes already under way complete;
3. keeps accepting for DRAIN_LINGER seconds, serving everything that was queued
   or was mid-handshake; then stops accepting and lets gthread finish the
   requests in flight within `graceful_timeout`.
"""

from __future__ import annotations

import logging
import queue
import select
import signal
import time
from types import FrameType
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

from fiboserver.lifecycle import begin_draining

# Long enough for any handshake that began before the filter to complete
# (a round trip inside a cluster is well under a millisecond), short enough
# that an idle worker still exits in a fraction of a second.
DRAIN_LINGER = 0.2

log = logging.getLogger("fiboserver.worker")


class DrainingThreadWorker(ThreadWorker):  # type: ignore[misc]
    """gthread worker whose SIGTERM loses no connection the kernel accepted."""

    _drained = False

    def init_signals(self) -> None:
        # From fork() until here the child still runs the master's handlers, which
        # only queue a signal for the master's loop, a loop this process never runs:
        # a SIGTERM that reached a booting worker was lost, and the worker lived on
        # until the master killed it at graceful_timeout. Act on what they queued in
        # this process's copy of the master.
        inherited = signal.getsignal(signal.SIGTERM)
        super().init_signals()
        pending = getattr(getattr(inherited, "__self__", None), "SIG_QUEUE", None)
        if not isinstance(pending, queue.SimpleQueue):
            return
        caught: set[object] = set()
        while True:
            try:
                caught.add(pending.get_nowait())
            except queue.Empty:
                break
        if caught & {signal.SIGINT, signal.SIGQUIT}:
            self.handle_quit(signal.SIGQUIT, None)
        elif signal.SIGTERM in caught:
            self.handle_exit(signal.SIGTERM, None)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        begin_draining()
        super().handle_exit(sig, frame)

    def set_accept_enabled(self, enabled: bool) -> None:
        # gthread calls this with False once the run loop ends on SIGTERM.
        if not enabled and not self.alive and not self._drained:
            self._drained = True
            self._drain_listeners()
        super().set_accept_enabled(enabled)

    def _drain_listeners(self) -> None:
        # The master has already made the shared listener drop new SYNs when the
        # server stops (fiboserver.hooks); a worker exiting alone must not.
        listeners: list[Any] = list(self.sockets)
        deadline = time.monotonic() + DRAIN_LINGER
        while True:
            for listener in listeners:
                self._accept_queued(listener)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            select.select(listeners, [], [], remaining)

    def _accept_queued(self, listener: Any) -> None:
        """Accept until the listen queue is empty (accept() says EAGAIN)."""
        while True:
            before = self.nr_conns
            self.accept(listener)
            if self.nr_conns == before:
                return
