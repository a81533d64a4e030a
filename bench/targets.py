"""The targets a run is judged by: each one, as measured, met or not."""

from __future__ import annotations

from typing import Any

from bench import tracing_cost
from bench.metrics_cost import BUDGET_RATIO
from bench.overload import overload_targets
from bench.pairs import idle_round_share
from bench.proxy import proxy_targets
from bench.worker_cost import WORKER_COST_BUDGET

# The sections whose rounds are pairs of wrk runs on 2-worker servers.
PAIRED = ("cached", "uncached", "metrics", "proxy", "tracing", "worker")
# In the worker pair, "worker before" and its ceiling run an older commit's worker,
# which does not balance connections: an idle worker there is that worker's.
OLDER_WORKERS = {"worker": ("worker before", "ceiling")}


Target = tuple[str, str, bool]  # what, as measured, met


def targets(res: dict[str, Any]) -> list[Target]:
    """Every target the run measured, in latest.md's order."""
    return [
        *throughput_targets(res),
        *proxy_targets(res),
        *idle_targets(res),
        *tracing_cost.targets(res),
        *process_targets(res),
        *memory_targets(res),
        *overload_targets(res),
    ]


def throughput_targets(res: dict[str, Any]) -> list[Target]:
    rows: list[Target] = []
    c = res.get("cached")
    if c:
        rows += [
            (
                "cached throughput >= 0.5 x ceiling",
                f"{c['rps_ratio']:.2f} (worst round {c['rps_ratio_worst']:.2f})",
                c["rps_ratio"] >= 0.5,
            ),
            (
                "cached p99 <= 2 x ceiling p99",
                f"{c['p99_ratio']:.2f} x (worst round {c['p99_ratio_worst']:.2f} x)",
                c["p99_ratio"] <= 2.0,
            ),
        ]
    mc = res.get("metrics")
    if mc:
        rows.append(
            (
                f"cached throughput, metrics on >= {BUDGET_RATIO} x metrics off",
                f"{mc['rps_ratio']:.3f} (worst round {mc['rps_ratio_worst']:.3f}; "
                f"{mc['cost_us_per_req']:+.1f} us/req)",
                mc["rps_ratio"] >= BUDGET_RATIO,
            )
        )
    w = res.get("worker")
    if w:
        rows.append(
            (
                f"worker's cost on the cached ratio <= {WORKER_COST_BUDGET:.0%}",
                f"{w['cost']:.1%} ({w['ratio_before']:.3f} -> {w['ratio_after']:.3f})",
                w["cost"] <= WORKER_COST_BUDGET,
            )
        )
    return rows


def idle_targets(res: dict[str, Any]) -> list[Target]:
    paired = [todays_idle_share(k, res[k]) for k in PAIRED if res.get(k)]
    if not paired:
        return []
    idle = max(paired)
    return [("no round with a worker idle", f"{idle:.0%} of rounds at most", idle == 0)]


def process_targets(res: dict[str, Any]) -> list[Target]:
    rows: list[Target] = []
    b = res.get("big_n", {}).get("100000")
    if b:
        ms, speedup = b["fibonacci_digits_ms"], b["speedup"]
        rows.append(("cold F(100000) < 10 ms", f"{ms:.2f} ms", ms < 10))
        rows.append(("F(100000) >= 20 x faster than the loop", f"{speedup:.0f} x", speedup >= 20))
    s = res.get("start_stop")
    if s:
        rows.append(("ready < 1.5 s", f"{s['ready_s']:.2f} s", s["ready_s"] < 1.5))
        rows.append(
            ("idle SIGTERM -> exit < 1 s", f"{s['idle_stop_s']:.2f} s", s["idle_stop_s"] < 1.0)
        )
    return rows


def memory_targets(res: dict[str, Any]) -> list[Target]:
    memory = res.get("memory", [])
    control = next((m for m in memory if not m["cache"]), None)
    # The fixed overhead: what the same walks grow a worker by with the cache off.
    fixed = max(control["max_growth"], 0) if control else 0
    slack = res["settings"]["rss_overhead_allowance"]
    return [
        (
            f"worker RSS growth <= cache_max_bytes {m['cache_max_bytes'] / 2**20:.0f} MiB"
            f" + cache-off growth + {slack / 2**20:.0f} MiB",
            f"{m['max_growth'] / 2**20:.1f} MiB (cache off: {fixed / 2**20:.1f} MiB)",
            m["max_growth"] <= m["cache_max_bytes"] + fixed + slack,
        )
        for m in memory
        if m["cache"]
    ]


def todays_idle_share(key: str, result: dict[str, Any]) -> float:
    """The share of a pair's rounds in which a server running today's worker had
    a worker (nearly) idle."""
    older = OLDER_WORKERS.get(key, ())
    rounds = {label: runs for label, runs in result["rounds"].items() if label not in older}
    return idle_round_share(rounds)
