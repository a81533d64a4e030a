"""What the Prometheus metrics cost: the service with metrics on against metrics off.

The budget (docs/metrics.md, "What it costs"): with metrics on, cached throughput falls by at most
5 % against metrics off. On the cached path a request is cheapest, so the metrics'
fixed cost per request (four updates of memory-mapped values, and one for the
cache lookup) weighs the most there. Both variants run the PROD config; "on"
serves /metrics on a free port (tests/support/serverproc.py picks it), "off" sets
`metrics_port: 0`. The ceiling runs in the same rounds, so the report also gives
the cached ratio to the ceiling with metrics on.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from bench.pairs import measure_pair, round_ratio
from bench.servers import CEILING, SERVICE, Bench
from bench.wrk import WrkSettings, cached_load

METRICS_ON = replace(SERVICE, label="metrics on")
METRICS_OFF = replace(SERVICE.with_config(metrics_port=0), label="metrics off")
# At most 5 % less cached throughput with metrics on.
BUDGET_RATIO = 0.95


def section_metrics(bench: Bench, ws: WrkSettings) -> dict[str, Any]:
    result, servers = measure_pair(
        bench,
        "metrics",
        METRICS_ON,
        METRICS_OFF,
        cached_load(bench.prefix),
        ws,
        others=[CEILING],
        same_responses=[f"{bench.prefix}/fibo?n={n}" for n in (0, 30, 1000)],
    )
    on, off = result[METRICS_ON.label], result[METRICS_OFF.label]
    key = "server_cpu_us_per_req"
    result["cost_us_per_req"] = on[key] - off[key]
    result["on_ceiling_ratio"] = round_ratio(result["rounds"], METRICS_ON.label, CEILING.label)
    result["off_ceiling_ratio"] = round_ratio(result["rounds"], METRICS_OFF.label, CEILING.label)
    # Proof that the pair measured what it says: only "on" served /metrics.
    on_server, off_server = servers[0], servers[1]
    result["metrics_ports"] = {
        METRICS_ON.label: on_server.metrics_port,
        METRICS_OFF.label: off_server.metrics_port,
    }
    return result
