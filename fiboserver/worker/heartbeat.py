"""The worker's heartbeat to the master, paced; runs in the worker's event loop.

gunicorn's master stops a worker whose heartbeat it has not seen for `timeout`
(30 s). A beat is a utime() call on the worker's heartbeat file: once a second
is plenty, and once per turn of the loop would be thousands a second under load.
"""

from __future__ import annotations

INTERVAL = 1.0


class Heartbeat:
    """When the loop beats: at its first turn, then at the first turn at least
    `interval` seconds after the last beat."""

    __slots__ = ("_last", "interval")

    def __init__(self, interval: float = INTERVAL) -> None:
        self.interval = interval
        self._last: float | None = None

    def due(self, now: float) -> bool:
        """Whether to beat at `now` (the loop then beats: this is the last beat)."""
        if self._last is not None and now - self._last < self.interval:
            return False
        self._last = now
        return True
