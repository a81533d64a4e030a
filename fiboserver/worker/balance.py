"""Connections spread over the workers: who takes a new one, which kept one leaves.

Runs in each worker's event loop (fiboserver/worker/loop.py), over a small array
shared by every worker of the server (`Board`).

All workers accept from the one listening socket, and the kernel wakes all of
them for a new connection: whichever comes first takes it. Keep-alive then
pins a connection to that worker for its whole life, so a proxy's few
long-lived upstream connections (or wrk's) can all sit on one worker while the
other idles. Two rules keep each worker near its share of the server's
connections (the pure functions below; docs/worker.md, "Balancing"):

- **Accepting.** A worker that would hold more than its share after taking a
  new connection leaves it to the others: it stops accepting for ACCEPT_DELAY,
  then takes whatever they left in the queue (nginx's accept mutex and delay,
  without the mutex). Some worker is always at or below the share, so a
  connection waits at most one delay, and only if no worker under it is free.
- **Keeping.** A worker above its share answers the next request of one of its
  connections with `Connection: close` (HTTP/1.1's way to end a connection
  without losing a request); the client reconnects, and the accepting rule sends
  it elsewhere. One connection at a time, so the counts settle instead of
  overshooting.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass

# Slots on the board: one per worker, at `age % SLOTS` (gunicorn numbers its
# workers 1, 2, 3, ... as it starts them). A pod runs one worker per CPU; two
# live workers share a slot only after SLOTS restarts while the older one
# lives, and then count as one (balancing gets less eager, never wrong).
SLOTS = 32
# A slot whose worker has not written it for this long belongs to a dead worker
# (killed, or aborted): ignored. A live worker writes it every loop turn, and
# its loop turns at least once a second (the poller's longest wait).
STALE_AFTER = 3.0
# How long a worker above its share stops accepting. Long enough for another
# worker's loop, waiting for the GIL behind its computing threads (1 ms switch
# interval, docs/worker.md "The GIL"), to come round to the listener; short
# enough that a connection no other worker takes waits only that long.
ACCEPT_DELAY = 0.02
# How often a worker reads the others' counts for the keep-alive rule (once per
# request would cost more than the decision is worth); accepting reads them
# fresh every time.
REFRESH = 0.01

_COUNT = struct.Struct("q")
_STAMP = struct.Struct("d")
# The stamp of a slot no live worker holds: older than any time.monotonic().
_VACANT = float("-inf")


@dataclass(frozen=True, slots=True)
class Pod:
    """The server's connections as one worker sees them: the others' sum and
    how many other workers are alive."""

    others: int
    other_workers: int


def share(total: int, workers: int) -> int:
    """Each worker's share of `total` connections, rounded up."""
    return -(-total // workers)


def may_accept(mine: int, pod: Pod) -> bool:
    """Whether a worker holding `mine` stays within its share with one more."""
    return mine + 1 <= share(mine + pod.others + 1, pod.other_workers + 1)


def above_share(mine: int, pod: Pod) -> bool:
    """Whether a worker holding `mine` holds more than its share."""
    return mine > share(mine + pod.others, pod.other_workers + 1)


class Board:
    """Each worker's connection count and when it last wrote it, in shared memory.

    An anonymous shared mapping, made when the master imports the worker class
    (before it forks a worker), so every worker the master forks shares it.
    Each slot has one writer and no lock: a reader may see a count a loop turn
    old (or, were an 8-byte write ever torn, a wrong one once), which misleads
    one decision at most; the next turn's write corrects it.
    """

    def __init__(self, slots: int = SLOTS) -> None:
        self.slots = slots
        self._map = mmap.mmap(-1, slots * (_COUNT.size + _STAMP.size))
        self._stamps_at = slots * _COUNT.size
        for slot in range(slots):  # no worker yet
            self.clear(slot)

    def write(self, slot: int, count: int, now: float) -> None:
        _COUNT.pack_into(self._map, slot * _COUNT.size, count)
        self._stamp(slot, now)

    def clear(self, slot: int) -> None:
        """No live worker holds `slot` (it left, or none came yet): it counts for nothing."""
        self._stamp(slot, _VACANT)

    def _stamp(self, slot: int, now: float) -> None:
        _STAMP.pack_into(self._map, self._stamps_at + slot * _STAMP.size, now)

    def pod(self, slot: int, now: float) -> Pod:
        """What every live slot but `slot` holds."""
        counts = struct.unpack_from(f"{self.slots}q", self._map)
        stamps = struct.unpack_from(f"{self.slots}d", self._map, self._stamps_at)
        others = workers = 0
        fresh = now - STALE_AFTER
        for i in range(self.slots):
            if i != slot and stamps[i] > fresh:
                others += counts[i]
                workers += 1
        return Pod(others, workers)


BOARD = Board()


class Balancer:
    """One worker's side of the board: what it publishes and what it decides."""

    def __init__(self, age: int, board: Board = BOARD) -> None:
        self.board = board
        self.slot = age % board.slots
        self.leaving = 0  # connections told `Connection: close`, not yet closed
        self._pod = Pod(0, 0)
        self._read_at = float("-inf")

    def publish(self, held: int, now: float) -> None:
        self.board.write(self.slot, held, now)

    def may_accept(self, held: int, now: float) -> bool:
        self.publish(held, now)
        self._pod = self.board.pod(self.slot, now)
        self._read_at = now
        return may_accept(held, self._pod)

    def should_close(self, held: int, now: float) -> bool:
        """Whether to answer a request with `Connection: close`: the worker is above
        its share and no other connection of it is leaving already."""
        if self.leaving or held < 2:  # one connection is never above a share
            return False
        if now - self._read_at >= REFRESH:
            self._pod = self.board.pod(self.slot, now)
            self._read_at = now
        return above_share(held, self._pod)

    def leave(self) -> None:
        """The worker exits: its slot no longer counts."""
        self.board.clear(self.slot)
