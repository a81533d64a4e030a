"""Admission and load shedding: which request starts now, which waits, which gets 503.

Runs in the worker's event loop. Pure policy, no I/O: the loop
(fiboserver/worker/loop.py) asks it with the time from its own clock, so the
tests drive it with a fake one.

- `Admission` keeps at most as much work waiting as the threads can start
  within QUEUE_DEADLINE (about a second, README "Overload"), judged by how long
  requests have recently taken. A request past that is refused at once with
  `503 overloaded` instead of waiting for seconds; one that waited in the queue
  longer than the deadline anyway (the estimate was low) is refused when its
  turn comes instead of being started late.
- `Pacer` bounds the share of the event loop's CPU spent writing such refusals.
  A client that ignores Retry-After (wrk does) re-sends at once, so without a
  bound a few thousand connections can demand tens of thousands of 503s per
  second, each taking the GIL from the threads doing the real work. Refusals
  beyond the budget wait (their request already read, nothing else done) until
  the budget refills.
- `ProbeLane` bounds how many probe requests wait for the probe thread; beyond
  that a probe path is admitted like any other request.
"""

from __future__ import annotations

import enum
import sys
from collections import deque
from typing import Generic, TypeVar

# Work past what a worker can finish in about a second is shed (README "Overload").
QUEUE_DEADLINE = 1.0
# Weight of the newest request in the running mean of service times: about the
# last 20 requests count, so the estimate follows a change of load in a fraction
# of a second under load and ignores a single outlier.
SERVICE_WEIGHT = 0.05
# Service time assumed before the first request finishes, of the order of an
# uncached F(100000) (docs/performance.md): the first flood is queued for at
# most a few hundred requests before real measurements take over.
INITIAL_SERVICE = 0.010
# Share of one core the loop may spend on refusals, and the most it spends in
# one go (seconds of CPU): see the module docstring; docs/worker.md has what each
# point of share costs the threads and how many refusals a second it buys.
REFUSAL_SHARE = 0.03
REFUSAL_BURST = 0.010
# Probe requests waiting for the probe thread beyond which a probe path is
# admitted like any other request: a flood of probes gets no priority.
PROBE_LANE_MAX = 16

T = TypeVar("T")


class Verdict(enum.Enum):
    START = "start"  # a thread is free: run it now
    QUEUED = "queued"  # it can start within the deadline: wait for a thread
    SHED = "shed"  # it cannot: answer 503 at once


class Admission(Generic[T]):
    """A bounded FIFO in front of `slots` threads; see the module docstring."""

    def __init__(
        self,
        slots: int,
        deadline: float = QUEUE_DEADLINE,
        initial_service: float = INITIAL_SERVICE,
        weight: float = SERVICE_WEIGHT,
    ) -> None:
        if slots < 1:
            raise ValueError("slots must be >= 1")
        self.slots = slots
        self.deadline = deadline
        self.service = initial_service  # running mean of seconds per request
        self.weight = weight
        self.running = 0
        self._waiting: deque[tuple[T, float]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def capacity(self) -> int:
        """How many requests may wait: what `slots` threads start within the deadline."""
        if self.service <= 0:  # nothing measured to bound it by
            return sys.maxsize
        return int(self.slots * self.deadline / self.service)

    def offer(self, item: T, now: float) -> Verdict:
        """Admit `item`, which arrived at `now`. START means the caller runs it now
        (it counts as running); QUEUED means `take` hands it out later."""
        if self.running < self.slots and not self._waiting:
            self.running += 1
            return Verdict.START
        if len(self._waiting) >= self.capacity():
            return Verdict.SHED
        self._waiting.append((item, now))
        return Verdict.QUEUED

    def done(self, seconds: float) -> None:
        """A running request finished after `seconds`; its thread is free."""
        self.running -= 1
        self.service += self.weight * (seconds - self.service)

    def cancel(self) -> None:
        """A request counted as running never started (its client left)."""
        self.running -= 1

    def take(self, now: float) -> tuple[T | None, list[T]]:
        """The next waiting item to start (it counts as running), or None; and the
        items passed over because they waited longer than the deadline (to shed)."""
        expired: list[T] = []
        while self.running < self.slots and self._waiting:
            item, since = self._waiting.popleft()
            if now - since > self.deadline:
                expired.append(item)
                continue
            self.running += 1
            return item, expired
        return None, expired


class Pacer:
    """A token bucket of event-loop CPU seconds: `share` per second, at most `burst`."""

    def __init__(
        self, now: float, share: float = REFUSAL_SHARE, burst: float = REFUSAL_BURST
    ) -> None:
        self.share = share
        self.burst = burst
        self._tokens = burst
        self._at = now

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.share)
            self._at = now

    def ready(self, now: float) -> bool:
        """Whether some budget is left at `now`."""
        self._refill(now)
        return self._tokens > 0

    def spend(self, seconds: float) -> None:
        """Charge `seconds` of CPU; the balance may go negative (paid back by waiting)."""
        self._tokens -= seconds

    def wait(self, now: float) -> float:
        """Seconds from `now` until some budget is left (0 if there is some)."""
        self._refill(now)
        return 0.0 if self._tokens > 0 else -self._tokens / self.share + 1e-6


class ProbeLane:
    """The probe thread's lane: a probe enters while fewer than `limit` are in it
    (waiting or running), and leaves when it is answered."""

    def __init__(self, limit: int = PROBE_LANE_MAX) -> None:
        self.limit = limit
        self.pending = 0

    def enter(self) -> bool:
        """Take a place in the lane; False when it is full."""
        if self.pending >= self.limit:
            return False
        self.pending += 1
        return True

    def leave(self) -> None:
        self.pending -= 1
