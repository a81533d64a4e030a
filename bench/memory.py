"""Worker RSS over walks of distinct large n, against cache_max_bytes (and with the cache off)."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable
from typing import Any

from bench.log import log
from bench.procstat import proc_rss_bytes
from bench.servers import SERVICE, Bench
from tests.support.procinfo import HOST


def walk(port: int, path_of: Callable[[int], str], ns: list[int], threads: int) -> int:
    """GET every n in `ns` over `threads` keep-alive connections; return bytes received."""
    total = [0]
    lock = threading.Lock()
    failures: list[str] = []

    def worker(part: list[int]) -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        got = 0
        for n in part:
            conn.request("GET", path_of(n))
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                failures.append(f"n={n}: {resp.status}")
            got += len(body)
        conn.close()
        with lock:
            total[0] += got

    parts = [ns[i::threads] for i in range(threads)]
    pool = [threading.Thread(target=worker, args=(p,)) for p in parts]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if failures:
        raise RuntimeError(f"walk failed: {failures[:5]}")
    return total[0]


def section_memory(bench: Bench, budget: int, cache: bool = True) -> dict[str, Any]:
    """Worker RSS across three walks over large n; `cache=False` is the control run.

    With the cache off the same walks show what serving big responses costs
    by itself (allocator arenas, buffers): the fixed overhead that the cache's
    budget comes on top of.
    """
    label = f"memory-{budget}" if cache else "memory-nocache"
    overrides: dict[str, Any] = {"cache_max_bytes": budget}
    if not cache:
        overrides["cacheresult"] = False
    s = bench.server(label, SERVICE.with_config(**overrides))
    maxseq = int(bench.prod["maxseq"])
    workers = int(s.print_config()["workers"])
    # F(n) has about 0.209 n digits. Pick the step over n in maxseq/2..maxseq so that
    # one walk alone sends every worker about twice the budget in digits.
    per_walk = 2 * budget * workers
    step = max(4, int((maxseq / 2) * (0.75 * maxseq * 0.209) / per_walk))
    with bench.running(s):
        pids = s.wait_workers(workers)

        def path_of(n: int) -> str:
            return f"{bench.prefix}/fibo?n={n}"

        # Warm every worker's code paths on small n, so the baseline is a serving state.
        walk(s.port, path_of, list(range(200)) * 2, 4)
        base = {p: proc_rss_bytes(p) for p in pids}
        # Three walks over distinct large n; the later ones show whether RSS keeps growing.
        walks = [
            list(range(maxseq - offset, maxseq // 2, -step)) for offset in (0, step // 2, step // 4)
        ]
        after: list[dict[int, int]] = []
        received = 0
        t0 = time.perf_counter()
        for ns in walks:
            received += walk(s.port, path_of, ns, 4)
            after.append({p: proc_rss_bytes(p) for p in pids})
        walk_s = time.perf_counter() - t0
        if s.worker_pids() != pids:
            raise RuntimeError("a worker was replaced during the memory walk")
    growth = {p: after[-1][p] - base[p] for p in pids}
    log(f"memory ({label}): growth per worker {[g // 1024 for g in growth.values()]} KiB")
    return {
        "cache": cache,
        "cache_max_bytes": budget if cache else 0,
        "requests": sum(len(ns) for ns in walks),
        "response_bytes": received,
        "walk_seconds": walk_s,
        "n_range": [min(min(ns) for ns in walks), maxseq],
        "workers": [
            {
                "pid": p,
                "rss_baseline": base[p],
                "rss_after_walks": [a[p] for a in after],
                "growth": growth[p],
            }
            for p in pids
        ],
        "max_growth": max(growth.values()),
    }
