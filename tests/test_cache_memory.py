"""The cache's byte budget against memory as measured, not as the cache counts it.

README "Configuration" (`cache_max_bytes`) and docs/performance.md "Memory": a
client that walks every n up to maxseq must not grow a worker's memory
past `cache_max_bytes`. Two measurements:

- tracemalloc sees every Python allocation: a walk of every n stored through the
  cache must stay within the budget at each step. This is where the entry
  overhead (the ordered dict's share) shows: small values, many entries.
- the RSS of a real gunicorn worker (tests/support/serverproc.py) walking large n, the
  walk of `make bench`: what the C allocator keeps beyond the Python objects
  (heap holes, partly used pages) shows here. A second server with the cache off
  walks the same n at the same time; its growth (buffers, allocator arenas) is
  what serving costs without a cache, and the difference is the cache's.
"""

from __future__ import annotations

import gc
import threading
import tracemalloc
from collections.abc import Iterable
from pathlib import Path

from bench.procstat import proc_rss_bytes
from fiboserver.app.cache import FiboCache
from fiboserver.app.fibo import fibonacci_digits
from tests.support.procinfo import child_pids
from tests.support.serverproc import ServerProcess

# What the interpreter's free lists (tuples from popitem, dict key tables) may
# hold on to during the walk: not the cache's memory.
INTERPRETER_SLACK = 4096


def test_walking_every_n_stays_within_the_budget_by_tracemalloc() -> None:
    budget = 256 * 1024
    maxseq = 3000  # values of 1 to 627 digits: about 1000 entries at most
    values = [fibonacci_digits(n) for n in range(maxseq + 1)]
    # Warm up what first calls create outside the cache (the logger's level cache;
    # under `make mutate`, mutmut's record of the functions reached): a small walk.
    warm = FiboCache(max_bytes=8192)
    for n in range(300):
        warm.put(n, values[n])
        warm.get(n)
    del warm
    worst = (0, -1)
    tracemalloc.start()
    try:
        cache = FiboCache(max_bytes=budget)
        gc.collect()
        base = tracemalloc.get_traced_memory()[0]
        for n in range(maxseq + 1):
            # A fresh key and value, as a request parses and computes them.
            cache.put(int(str(n)), (values[n] + "x")[:-1])
            used = tracemalloc.get_traced_memory()[0] - base
            worst = max(worst, (used, n))
        entries = len(cache)
        # Under `make mutate`, mutmut's trampolines keep a few KiB (argument lists in
        # the interpreter's free lists): not the cache's.
        tooling = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(True, "*/mutmut/*")]
        )
        used, at = worst[0] - sum(t.size for t in tooling.traces), worst[1]
    finally:
        tracemalloc.stop()
    print(f"tracemalloc: worst {used} bytes at n={at}, budget {budget}")
    assert used <= budget + INTERPRETER_SLACK, (
        f"the cache held {used} bytes at n={at}, over its {budget}-byte budget"
    )
    assert entries > 100  # the walk really filled and churned it
    assert used > budget * 0.9, f"the budget is far from used ({used}): the walk proves little"


def walk(srv: ServerProcess, ns: Iterable[int], clients: int = 4) -> None:
    """GET every n, from `clients` keep-alive connections at once (gthread threads)."""
    pending = iter(ns)
    lock = threading.Lock()
    errors: list[str] = []

    def client() -> None:
        conn = srv.connection(timeout=60)
        try:
            while True:
                with lock:
                    n = next(pending, None)
                if n is None:
                    return
                conn.request("GET", f"/prod/fibo?n={n}")
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    errors.append(f"n={n}: {resp.status}")
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors[:5]


def test_a_worker_walking_large_n_grows_by_at_most_the_budget(tmp_path: Path) -> None:
    budget = 8 * 1024 * 1024
    # From maxseq down, every 40th n: 1250 values of 10 to 21 KB, 2.3 times the
    # budget per walk; three walks over distinct n, as `make bench` does.
    walks = [range(100_000 - offset, 50_000, -40) for offset in (0, 20, 10)]
    config = {"env": "PROD", "maxseq": 100_000, "cache_max_bytes": budget}
    growth: dict[str, int] = {}

    def run(label: str, cacheresult: bool) -> None:
        with ServerProcess(
            {**config, "cacheresult": cacheresult},
            tmp_path,
            env={"WEB_CONCURRENCY": "1"},
            name=f"{label}.yaml",
        ) as srv:
            srv.wait_for("worker booted", timeout=30)
            (worker,) = child_pids(srv.pid)
            walk(srv, list(range(200)) * 2)  # a serving worker, code paths warm
            before = proc_rss_bytes(worker)
            for ns in walks:
                walk(srv, ns)
            assert child_pids(srv.pid) == {worker}, "the worker was replaced"
            growth[label] = proc_rss_bytes(worker) - before

    runs = [
        threading.Thread(target=run, args=("cache", True)),
        threading.Thread(target=run, args=("control", False)),
    ]
    for t in runs:
        t.start()
    for t in runs:
        t.join(timeout=600)
    assert set(growth) == {"cache", "control"}, "a walk failed"
    mib = {k: round(v / 2**20, 1) for k, v in growth.items()}
    print(f"worker RSS growth in MiB: {mib}")
    assert growth["cache"] - growth["control"] <= budget, (
        f"worker RSS growth in MiB {mib}: the cache took more than its 8 MiB"
    )
    assert growth["cache"] - growth["control"] > budget / 2, f"the walk proves little: {mib}"
