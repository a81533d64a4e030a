"""Overload and hostile clients, measured: how fast the worker stays under a flood
of costly requests and beside idle and slowloris connections, against the
contract's targets. The runs are tests/support's (flood.py, attackers.py), the
very ones tests/test_overload.py and tests/test_hostile.py judge by behaviour;
only the speed is judged here, where a busy machine makes a figure late, not red.

Targets (docs/worker.md "Measurements", README "Graceful start and stop"):
  * 2,000 connections of uncached n: probes p99 < 250 ms, and the worker keeps
    >= 0.9 of its unloaded peak;
  * 200 idle + 50 slowloris connections: readyz p99 < 50 ms, and wrk keeps
    >= 0.8 of its throughput without them.
Kept is per second of wall clock, as a user sees it; per second of the server's
own CPU is shown beside it, with the other load that separates the two.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from bench.procstat import CLK_TCK
from bench.servers import Bench
from bench.stats import median
from tests.support.attackers import IDLE, SLOWLORIS, run_attacks
from tests.support.clients import p99
from tests.support.flood import FLOOD, FLOOD_WRK, FloodRun, run_flood

PROBE_P99_MS = 250.0
FLOOD_KEPT = 0.9
READYZ_P99_MS = 50.0
HOSTILE_KEPT = 0.8
PROBES = 100  # of each path: the p99 is then the second slowest, not the slowest
ROUNDS = 5  # with and without the attackers, alternating, each set pooled
HEAD_TIMEOUT = 10.0  # docs/worker.md: how long the attackers are watched, + 5 s
# Other load (cores) past which a wall-clock ratio is the machine's as much as the
# server's (the machine has 2 cores, shared).
QUIET = 0.25
SOCKET_ERRORS = ("err_connect", "err_read", "err_write", "err_timeout")


def _completed(run: dict[str, Any]) -> float:
    return float(run["requests"] - run["err_status"])


def per_second(runs: Sequence[dict[str, Any]]) -> float:
    """Requests the runs (bench.pairs.measured_wrk's keys) got a 2xx/3xx for, per second."""
    seconds = sum(float(r["duration_us"]) / 1e6 for r in runs)
    return sum(_completed(r) for r in runs) / seconds


def per_cpu_second(runs: Sequence[dict[str, Any]]) -> float:
    """The same per second of the server's own CPU."""
    cpu_s = sum(float(r["server_cpu_us_per_req"]) * float(r["requests"]) / 1e6 for r in runs)
    return sum(_completed(r) for r in runs) / max(cpu_s, 1e-9)


def kept(loaded: Sequence[dict[str, Any]], unloaded: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Completed requests of the loaded runs as a share of the unloaded ones', pooled."""
    return {
        "kept": per_second(loaded) / per_second(unloaded),
        "kept_per_cpu_s": per_cpu_second(loaded) / per_cpu_second(unloaded),
        "other_cores_max": max(r["other_cores"] for r in [*loaded, *unloaded]),
    }


def steady_run(run: FloodRun) -> dict[str, Any]:
    """The requests completed in the flood's steady state, from the `end` records'
    own timestamps, as a measured run (bench.pairs.measured_wrk's keys)."""
    assert run.window is not None, "flooded without measure_peak"
    t0, cpu0, t1, cpu1 = run.window
    completed = sum(
        1
        for r in run.records
        if r["msg"] == "end"
        and r["path"] == "/prod/fibo"
        and r["status"] == 200
        and t0 <= dt.datetime.fromisoformat(r["ts"].replace("Z", "+00:00")).timestamp() <= t1
    )
    return {
        "requests": completed,
        "err_status": 0,
        "duration_us": (t1 - t0) * 1e6,
        "server_cpu_us_per_req": (cpu1 - cpu0) / CLK_TCK * 1e6 / max(completed, 1),
        "other_cores": run.flood["other_cores"],
    }


def section_overload(bench: Bench) -> dict[str, Any]:
    log_path = bench.workdir / "overload.log"
    bench.logs.append(log_path)
    run = run_flood(log_path, PROBES, measure_peak=True)
    steady = steady_run(run)
    # An overload's refusals are logged in batches, with the longest wait of each.
    shed = [r for r in run.records if r["msg"] == "requests refused"]
    waits = sorted(float(r["duration_ms"]) for r in shed)
    refusal = next((a for a in run.direct if a.status == 503), None)
    assert run.after is not None
    return {
        "connections": FLOOD,
        "duration_s": FLOOD_WRK.duration_s,
        "probe_p99_ms": {p: p99([s for _, s in a]) * 1000 for p, a in run.probes.items()},
        "probe_statuses": sorted({st for a in run.probes.values() for st, _ in a}),
        **kept([steady], run.unloaded),
        "unloaded_rps": [per_second([r]) for r in run.unloaded],
        "steady_rps": per_second([steady]),
        "steady_s": steady["duration_us"] / 1e6,
        "refused_per_s": run.flood["err_status"] / (run.flood["duration_us"] / 1e6),
        "batches": len(shed),
        "batch_wait_ms": {"median": median(waits), "p99": p99(waits) if waits else float("nan")},
        "client_refused_after_s": refusal.seconds if refusal else None,
        "socket_errors": sum(run.flood[k] for k in SOCKET_ERRORS),
        "after_ms": run.after.seconds * 1000,
        "normal_ms": run.normal_s * 1000,
    }


def section_hostile(bench: Bench) -> dict[str, Any]:
    log_path = bench.workdir / "hostile.log"
    bench.logs.append(log_path)
    run = run_attacks(log_path, ROUNDS, PROBES, HEAD_TIMEOUT, baseline=True)
    latencies = [s for _, s in run.probes]
    return {
        "idle": IDLE,
        "slowloris": SLOWLORIS,
        "rounds": ROUNDS,
        "probes": len(latencies),
        "probe_statuses": sorted({st for st, _ in run.probes}),
        "readyz_p99_ms": p99(latencies) * 1000,
        "readyz_median_ms": median(latencies) * 1000,
        **kept(run.attacked, run.alone),
        "attacked_rps": [per_second([r]) for r in run.attacked],
        "alone_rps": [per_second([r]) for r in run.alone],
        "socket_errors": sum(r[k] for r in run.attacked for k in SOCKET_ERRORS),
        "closed_after_s": [min(run.closes), max(run.closes)],
    }


def _kept_measured(r: dict[str, Any]) -> str:
    return (
        f"{r['kept']:.2f} per second ({r['kept_per_cpu_s']:.2f} per server CPU second; "
        f"other load up to {r['other_cores_max']:.2f} cores)"
    )


def overload_targets(res: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for each section that ran."""
    rows: list[tuple[str, str, bool]] = []
    if o := res.get("overload"):
        p = o["probe_p99_ms"]
        probes = f"healthz {p['healthz']:.0f} ms, readyz {p['readyz']:.0f} ms"
        rows += [
            (
                f"probes p99 under {FLOOD:,} connections < {PROBE_P99_MS:.0f} ms",
                probes,
                max(p.values()) < PROBE_P99_MS,
            ),
            (
                f"kept under {FLOOD:,} connections >= {FLOOD_KEPT} x the unloaded peak",
                _kept_measured(o),
                o["kept"] >= FLOOD_KEPT,
            ),
        ]
    if h := res.get("hostile"):
        attack = f"{IDLE} idle + {SLOWLORIS} slowloris"
        rows += [
            (
                f"readyz p99 with {attack} < {READYZ_P99_MS:.0f} ms",
                f"{h['readyz_p99_ms']:.1f} ms",
                h["readyz_p99_ms"] < READYZ_P99_MS,
            ),
            (
                f"kept with {attack} >= {HOSTILE_KEPT} x without",
                _kept_measured(h),
                h["kept"] >= HOSTILE_KEPT,
            ),
        ]
    return rows


def _busy_note(r: dict[str, Any]) -> list[str]:
    if r["other_cores_max"] <= QUIET:
        return []
    return [
        f"Other load reached {r['other_cores_max']:.2f} cores: the server got a different "
        "share of the machine in each run, so the ratio per second is the machine's as "
        "much as the server's; per server CPU second it is what the load adds per request.",
        "",
    ]


def overload_markdown(res: dict[str, Any]) -> list[str]:
    """The two sections' Markdown, for each that ran."""
    o, h = res.get("overload"), res.get("hostile")
    return (_overload_lines(o) if o else []) + (_hostile_lines(h) if h else [])


def _overload_lines(o: dict[str, Any]) -> list[str]:
    wait, p = o["batch_wait_ms"], o["probe_p99_ms"]
    refused_after = o["client_refused_after_s"]
    return [
        f"## Overload: {o['connections']:,} connections of uncached n in 90,000..100,000",
        "",
        "One worker (4 threads) pinned to one CPU; wrk (2 threads, "
        f"{o['duration_s']:g} s), the probes (statuses {o['probe_statuses']}) and a "
        "client of its own on the other (tests/support/flood.py).",
        "",
        "| | |",
        "|---|---|",
        "| unloaded peak, before / after | "
        + " / ".join(f"{x:.0f}" for x in o["unloaded_rps"])
        + " req/s |",
        f"| completed in the flood's steady state ({o['steady_s']:.0f} s) | "
        f"{o['steady_rps']:.0f} req/s: kept {_kept_measured(o)} |",
        f"| probes p99 ({PROBES} each) | healthz {p['healthz']:.1f} ms, "
        f"readyz {p['readyz']:.1f} ms |",
        f"| 503s | {o['refused_per_s']:.0f}/s; the longest wait of a batch "
        f"{wait['median']:.0f} ms median, {wait['p99']:.0f} ms p99 "
        f"({o['batches']} batches) |",
        "| a client's own 503 | "
        + (f"after {refused_after:.2f} s |" if refused_after is not None else "none |"),
        f"| socket errors (wrk) | {o['socket_errors']} |",
        f"| the next request after the flood | {o['after_ms']:.1f} ms "
        f"(unloaded {o['normal_ms']:.1f} ms) |",
        "",
        *_busy_note(o),
    ]


def _hostile_lines(h: dict[str, Any]) -> list[str]:
    return [
        f"## Hostile clients: {h['idle']} idle + {h['slowloris']} slowloris connections",
        "",
        f"One worker (4 threads); wrk on cached n=30 (1 thread, 8 connections, 2 s), "
        f"{h['rounds']} rounds alternating without and with the attackers, each set "
        f"pooled; {h['probes']} readyz probes spread over the attacked runs "
        "(tests/support/attackers.py).",
        "",
        "| | |",
        "|---|---|",
        f"| readyz | p99 {h['readyz_p99_ms']:.1f} ms, median {h['readyz_median_ms']:.1f} ms, "
        f"statuses {h['probe_statuses']} |",
        "| wrk without / with the attackers | "
        + ", ".join(f"{x:.0f}" for x in h["alone_rps"])
        + " / "
        + ", ".join(f"{x:.0f}" for x in h["attacked_rps"])
        + f" req/s: kept {_kept_measured(h)} |",
        f"| socket errors (wrk, attacked) | {h['socket_errors']} |",
        f"| attackers closed after | {h['closed_after_s'][0]:.2f} to "
        f"{h['closed_after_s'][1]:.2f} s |",
        "",
        *_busy_note(h),
    ]
