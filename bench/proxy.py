"""The proxy pair: the service behind a handful of long-lived keep-alive connections.

An ingress controller keeps a few keep-alive upstream connections to each pod,
not sixteen fresh ones per run. With 4 of them and 2 workers, the pod runs on
both CPUs only if the workers share the connections (docs/worker.md,
"Balancing"); on one worker it gets half the throughput. So the service is
loaded by wrk with 4 connections and with the bench's usual count (16), in
alternating rounds on the same server, and 4 must reach at least 0.9 of 16.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from bench.log import log
from bench.pairs import (
    Runs,
    cores_text,
    idle_round_share,
    measured_wrk,
    round_ratio,
    round_ratios,
    summary,
)
from bench.servers import SERVICE, Bench
from bench.wrk import WrkSettings, cached_load, run_wrk

# An ingress controller's handful of upstream connections to one pod (the model).
PROXY_CONNECTIONS = 4
# At least this share of the throughput the same server reaches with the usual count.
PROXY_TARGET = 0.9


def labels(ws: WrkSettings) -> tuple[str, str]:
    return f"{PROXY_CONNECTIONS} connections", f"{ws.connections} connections"


def section_proxy(bench: Bench, ws: WrkSettings) -> dict[str, Any]:
    few, usual = labels(ws)
    settings = {few: replace(ws, connections=PROXY_CONNECTIONS), usual: ws}
    load = cached_load(bench.prefix)
    server = bench.server("proxy", SERVICE)
    runs: Runs = {few: [], usual: []}
    with bench.running(server):
        for label in (few, usual):
            run_wrk(server.port, load, settings[label], ws.warmup_s)
        for i in range(ws.rounds):
            order = (few, usual) if i % 2 == 0 else (usual, few)
            for label in order:
                r = measured_wrk(server, load, settings[label])
                log(
                    f"proxy round {i + 1}/{ws.rounds} {label}: {r['rps']:.0f} req/s "
                    f"p99 {r['p99_us'] / 1000:.2f} ms workers {r['worker_cores']} cores"
                    + (" (a worker idle)" if r["idle_worker"] else "")
                )
                runs[label].append(r)
    return {
        "path": load.path,
        few: summary(runs[few]),
        usual: summary(runs[usual]),
        "rps_ratio": round_ratio(runs, few, usual),
        "rps_ratio_worst": min(round_ratios(runs, few, usual)),
        "idle_round_share": idle_round_share(runs),
        "other_cores_max": max(r["other_cores"] for rs in runs.values() for r in rs),
        "rounds": runs,
    }


def proxy_targets(res: dict[str, Any]) -> list[tuple[str, str, bool]]:
    p = res.get("proxy")
    if not p:
        return []
    return [
        (
            f"{PROXY_CONNECTIONS} keep-alive connections >= {PROXY_TARGET} x "
            f"{res['settings']['connections']}",
            f"{p['rps_ratio']:.2f} (worst round {p['rps_ratio_worst']:.2f})",
            p["rps_ratio"] >= PROXY_TARGET,
        )
    ]


def proxy_markdown(res: dict[str, Any]) -> list[str]:
    p = res.get("proxy")
    if not p:
        return []
    few, usual = f"{PROXY_CONNECTIONS} connections", f"{res['settings']['connections']} connections"
    lines = [
        "## The proxy pair, cached `n=30`",
        "",
        f"The same service loaded by wrk with {few} and with {usual}, alternating. "
        f"Other load: at most {p['other_cores_max']:.2f} cores.",
        "",
        "| wrk | req/s (median) | worst | p99 ms | CPU per worker, each run (cores) |",
        "|---|---|---|---|---|",
    ]
    for label in (few, usual):
        s = p[label]
        lines.append(
            f"| {label} | {s['rps']:.0f} | {s['rps_worst']:.0f} | {s['p99_ms']:.2f} | "
            f"{cores_text(s['worker_cores'])} |"
        )
    lines += [
        "",
        f"Ratio {p['rps_ratio']:.2f} (median of the rounds), worst round "
        f"{p['rps_ratio_worst']:.2f}; rounds with a worker idle: {p['idle_round_share']:.0%}.",
        "",
    ]
    return lines
