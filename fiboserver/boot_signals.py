"""Signals that reach a gunicorn worker before it has installed its own handlers.

From fork() until `init_signals` the child still runs the master's handlers,
which only queue the signal for the master's loop, a loop the child never runs:
a SIGTERM that reached a booting worker was lost, and the worker lived on until
the master killed it at graceful_timeout. The queue is the child's own copy of
the master's, so it holds exactly what arrived in between.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any


def caught_before_init(inherited_handler: Callable[..., Any] | int | None) -> set[int]:
    """The signals the master's handler (`inherited_handler`, a bound method of
    the arbiter, as `signal.getsignal` returns it) queued in this process."""
    pending = getattr(getattr(inherited_handler, "__self__", None), "SIG_QUEUE", None)
    caught: set[int] = set()
    if not isinstance(pending, queue.SimpleQueue):
        return caught
    while True:
        try:
            caught.add(pending.get_nowait())
        except queue.Empty:
            return caught
