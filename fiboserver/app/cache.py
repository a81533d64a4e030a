"""Per-worker result cache: a Flask extension with a byte budget and LRU eviction.

It stores the decimal digits rather than the number, so a hit costs no
conversion at all. An entry is accounted at what it costs the worker, so that
walking every n up to maxseq keeps a worker's memory within `cache_max_bytes`
(tests/test_cache_memory.py measures it): its key and value (`sys.getsizeof`),
its share of the ordered dict, and for a value of a page or more, the page that
the C allocator keeps around it. One lock guards it: gthread serves requests
from several threads, and every operation is a few dict moves.

With metrics, each lookup counts as a hit or a miss (one counter update, the
same event as the `cache hit` / `cache miss` record), and each store updates
the size and entry gauges and counts evictions.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import OrderedDict

from flask import Flask

from fiboserver.app import heap
from fiboserver.metrics.definitions import Metrics, MetricsSource

EXTENSION_KEY = "fibo_cache"
# What an entry costs the OrderedDict beyond its key and value (CPython 3.11):
# a 32-byte list node and its hash slots, 26 bytes each (index, node pointer,
# two thirds of a 24-byte entry). A table rebuilt on growth has 3 to 6 slots per
# entry, so at most 6 * 26 + 32 = 188 bytes (200 once indices take 4 bytes);
# put() rebuilds a table that eviction left larger than that.
ENTRY_OVERHEAD_BYTES = 200
# Values over 512 bytes come from the C allocator's heap (pymalloc serves the
# smaller ones). Once the values around one are evicted, the partly used pages at
# its two ends stay resident, half a page each on average: a value of a page or
# more is charged one page more.
HEAP_PAGE_BYTES = 4096
# Evicted values leave free pages inside the heap, which glibc keeps resident
# (fiboserver/app/heap.py); they are given back each time evictions have freed this
# share of the budget, so they never amount to more.
RELEASE_EVERY = 1 / 64
# Digits of a value shown in the `cache fibo` log record; longer ones are elided.
LOGGED_VALUE_CHARS = 32

log = logging.getLogger("fiboserver.cache")
_EMPTY_BYTES = sys.getsizeof(OrderedDict())


def elide(text: str, limit: int = LOGGED_VALUE_CHARS) -> str:
    """`text` if it fits in `limit` characters, else its two ends around '...'."""
    if len(text) <= limit:
        return text
    head = (limit - 3) // 2
    tail = limit - 3 - head
    return f"{text[:head]}...{text[-tail:]}"


class FiboCache:
    """LRU map n -> digits of F(n), bounded by `max_bytes` of accounted memory."""

    def __init__(
        self,
        app: Flask | None = None,
        max_bytes: int | None = None,
        metrics: MetricsSource | None = None,
    ) -> None:
        self.max_bytes = max_bytes if max_bytes is not None else 0
        self._entries: OrderedDict[int, str] = OrderedDict()
        self._size = 0
        self._evicted_since_release = 0
        self._lock = threading.Lock()
        self._metrics_source = metrics
        self._metrics: Metrics | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register on `app`; the budget comes from `FIBO_CACHE_MAX_BYTES` unless given."""
        if not self.max_bytes:
            self.max_bytes = int(app.config["FIBO_CACHE_MAX_BYTES"])
        app.extensions[EXTENSION_KEY] = self

    @property
    def size_bytes(self) -> int:
        return self._size

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def entry_bytes(n: int, digits: str) -> int:
        value = sys.getsizeof(digits)
        if value >= HEAP_PAGE_BYTES:
            value += HEAP_PAGE_BYTES
        return sys.getsizeof(n) + value + ENTRY_OVERHEAD_BYTES

    def _make_room(self, n: int, cost: int) -> tuple[int, int]:
        """Drop `n`'s old value and the least recently used entries until `cost`
        fits; how many entries and accounted bytes were evicted (the caller holds
        the lock)."""
        old = self._entries.pop(n, None)
        if old is not None:
            self._size -= self.entry_bytes(n, old)
        evictions = evicted_bytes = 0
        while self._entries and self._size + cost > self.max_bytes:
            evicted_n, evicted = self._entries.popitem(last=False)
            freed = self.entry_bytes(evicted_n, evicted)
            self._size -= freed
            evicted_bytes += freed
            evictions += 1
        return evictions, evicted_bytes

    def _bind_metrics(self) -> Metrics:
        assert self._metrics_source is not None
        self._metrics = self._metrics_source()
        return self._metrics

    def get(self, n: int) -> str | None:
        with self._lock:
            digits = self._entries.get(n)
            if digits is not None:
                self._entries.move_to_end(n)
        if self._metrics_source is not None:
            metrics = self._metrics or self._bind_metrics()
            (metrics.cache_hits if digits is not None else metrics.cache_misses).inc()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("cache hit" if digits is not None else "cache miss", extra={"key": n})
        return digits

    def put(self, n: int, digits: str) -> None:
        cost = self.entry_bytes(n, digits)
        if cost > self.max_bytes:
            return  # could never fit; storing it would only evict everything else
        with self._lock:
            evictions, evicted_bytes = self._make_room(n, cost)
            self._evicted_since_release += evicted_bytes
            self._entries[n] = digits
            self._size += cost
            # A dict never shrinks its table on deletion, and when values grow,
            # fewer entries fit: rebuild the table for the entries left once it
            # costs more than they are charged for.
            if sys.getsizeof(self._entries) > _EMPTY_BYTES + len(self) * ENTRY_OVERHEAD_BYTES:
                self._entries = OrderedDict(self._entries)
            release = self._evicted_since_release >= self.max_bytes * RELEASE_EVERY
            if release:
                self._evicted_since_release = 0
            if self._metrics_source is not None:
                # Under the lock, so the gauges are written in the order of the changes.
                metrics = self._metrics or self._bind_metrics()
                metrics.cache_bytes.set(self._size)
                metrics.cache_entries.set(len(self._entries))
                if evictions:
                    metrics.cache_evictions.inc(evictions)
        if release:
            heap.release_free_pages()
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "cache fibo",
                extra={"key": n, "digits": len(digits), "value": elide(digits)},
            )
