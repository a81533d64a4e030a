"""fiboserver.gunicorn_internals: what the master's handlers queued in a booting worker."""

from __future__ import annotations

import queue
import signal

from fiboserver.gunicorn_internals import signals_queued_before_init


class _Arbiter:
    """The part of gunicorn's Arbiter its signal handler uses: a queue."""

    def __init__(self) -> None:
        self.SIG_QUEUE: queue.SimpleQueue[int] = queue.SimpleQueue()

    def signal(self, sig: int, frame: object) -> None:
        self.SIG_QUEUE.put(sig)


def test_signals_queued_before_init_are_found_once() -> None:
    arbiter = _Arbiter()
    arbiter.signal(signal.SIGTERM, None)
    arbiter.signal(signal.SIGTERM, None)
    arbiter.signal(signal.SIGQUIT, None)
    assert signals_queued_before_init(arbiter.signal) == {signal.SIGTERM, signal.SIGQUIT}
    assert arbiter.SIG_QUEUE.empty()
    assert signals_queued_before_init(arbiter.signal) == set()


def test_a_handler_that_is_not_the_masters_queues_nothing() -> None:
    assert signals_queued_before_init(signal.SIG_DFL) == set()
    assert signals_queued_before_init(None) == set()
    assert signals_queued_before_init(print) == set()  # a builtin: __self__ is a module
