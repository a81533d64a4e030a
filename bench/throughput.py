"""Throughput and latency of the service against the bare-WSGI ceiling, cached and uncached."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.pairs import measure_pair
from bench.servers import CEILING, FLASK_FLOOR, SERVICE, Bench
from bench.wrk import WrkSettings, cached_load, random_load


def count_end_records(log_path: Path) -> int:
    """`end` records in a service log: proof that PROD request logging was on."""
    count = 0
    with open(log_path, encoding="utf-8", errors="replace") as stream:
        for line in stream:
            if '"msg":"end"' in line or '"msg": "end"' in line:
                count += 1
    return count


def section_throughput(bench: Bench, ws: WrkSettings, cached: bool, seed: int) -> dict[str, Any]:
    """Cached n=30 (with the Flask floor), or random n with the cache off."""
    label = "cached" if cached else "uncached"
    maxseq = int(bench.prod["maxseq"])
    config: dict[str, Any] = {} if cached else {"cacheresult": False}
    service, ceiling = SERVICE.with_config(**config), CEILING.with_config(**config)
    # The plain-Flask floor rides along in the cached case: it splits the gap into
    # what Flask costs and what the service's features cost.
    others = [FLASK_FLOOR.with_config(**config)] if cached else []
    load = cached_load(bench.prefix) if cached else random_load(bench.prefix, maxseq, seed)
    result, servers = measure_pair(
        bench,
        label,
        service,
        ceiling,
        load,
        ws,
        others=others,
        same_responses=[f"{bench.prefix}/fibo?n={n}" for n in (0, 30, 1000, maxseq)],
    )
    assert servers[0].log_path is not None
    result["service_end_records"] = count_end_records(servers[0].log_path)
    result["service_requests"] = sum(r["requests"] for r in result["rounds"][service.label])
    return result
