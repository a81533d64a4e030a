"""Draining: state of one worker process, set by its event loop, read by its request threads.

A worker that received SIGTERM keeps serving the requests it has, but
`/readyz` must then answer 503 so that nothing new is sent its way.
"""

from __future__ import annotations

import threading

_draining = threading.Event()


def begin_draining() -> None:
    """Mark this process as shutting down; called from the SIGTERM handler."""
    _draining.set()


def is_draining() -> bool:
    return _draining.is_set()
