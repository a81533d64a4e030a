"""Per-worker result cache: a Flask extension with a byte budget and LRU eviction.

It stores the decimal digits rather than the number, so a hit costs no
conversion at all. Sizes are accounted with `sys.getsizeof` plus the cost of
an entry in the ordered dict, so walking every n up to maxseq keeps a worker
within `cache_max_bytes`. One lock guards it: gthread serves requests from
several threads, and every operation is a few dict moves.

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

from fiboserver.metrics import Metrics, MetricsSource

EXTENSION_KEY = "fibo_cache"
# What an OrderedDict entry costs beyond its key and value (hash slot, linked
# list node): about 75 bytes measured with tracemalloc on CPython 3.11, doubled
# because the hash table grows in steps.
ENTRY_OVERHEAD_BYTES = 160
# Digits of a value shown in the `cache fibo` log record; longer ones are elided.
LOGGED_VALUE_CHARS = 32

log = logging.getLogger("fiboserver.cache")


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
        return sys.getsizeof(n) + sys.getsizeof(digits) + ENTRY_OVERHEAD_BYTES

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
            old = self._entries.pop(n, None)
            if old is not None:
                self._size -= self.entry_bytes(n, old)
            evictions = 0
            while self._entries and self._size + cost > self.max_bytes:
                evicted_n, evicted = self._entries.popitem(last=False)
                self._size -= self.entry_bytes(evicted_n, evicted)
                evictions += 1
            self._entries[n] = digits
            self._size += cost
            if self._metrics_source is not None:
                # Under the lock, so the gauges are written in the order of the changes.
                metrics = self._metrics or self._bind_metrics()
                metrics.cache_bytes.set(self._size)
                metrics.cache_entries.set(len(self._entries))
                if evictions:
                    metrics.cache_evictions.inc(evictions)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "cache fibo",
                extra={"key": n, "digits": len(digits), "value": elide(digits)},
            )
