"""Pairs: two servers (or more) under the same load, in alternating rounds, and their ratio.

`measure_pair` takes server variants, starts them, checks that the comparison is
fair (same gunicorn settings, same responses), loads them in turn round after
round and reports medians and the median of the per-round A/B ratios, with the
worst round beside them and each run's CPU per worker. No run is discarded: a
round in which a worker sat idle counts, and the share of such rounds is
reported. The
service against its ceiling is one such pair (bench/throughput.py); so is any
before/after of one setting, e.g. in a section:

    on = replace(SERVICE.with_config(some_key=True), label="on")
    off = replace(SERVICE, label="off")
    result, _ = measure_pair(bench, "some-key", on, off, cached_load(bench.prefix), ws,
                             others=[CEILING])
    result["rps_ratio"]                                   # on / off, per-round median
    result["on"]["server_cpu_us_per_req"] - result["off"]["server_cpu_us_per_req"]
    round_ratio(result["rounds"], "on", "ceiling")        # on / ceiling, same rounds
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bench.log import log
from bench.procstat import (
    CLK_TCK,
    machine_busy_ticks,
    proc_cpu_ticks,
    server_cpu_ticks,
)
from bench.servers import (
    SAME_SETTINGS,
    Bench,
    Server,
    Variant,
    check_same_response,
    check_same_settings,
)
from bench.stats import median, median_ratio, ratios
from bench.wrk import Load, WrkSettings, idle_worker, run_wrk

Runs = dict[str, list[dict[str, Any]]]


def measured_wrk(server: Server, load: Load, ws: WrkSettings) -> dict[str, Any]:
    """One wrk run plus the server's and the rest of the machine's CPU during it."""
    server_t0, busy_t0 = server_cpu_ticks(server), machine_busy_ticks()
    pids = server.worker_pids()
    workers_t0 = [proc_cpu_ticks(p) for p in pids]
    result = run_wrk(server.port, load, ws, ws.duration_s)
    server_s = (server_cpu_ticks(server) - server_t0) / CLK_TCK
    workers_s = [(proc_cpu_ticks(p) - t0) / CLK_TCK for p, t0 in zip(pids, workers_t0, strict=True)]
    busy_s = (machine_busy_ticks() - busy_t0) / CLK_TCK
    wall = result["duration_us"] / 1e6
    result["server_cpu_us_per_req"] = server_s * 1e6 / max(result["requests"], 1)
    result["server_cores"] = server_s / wall
    result["client_cores"] = result["client_cpu_s"] / wall
    # Keep-alive connections stay with the worker that accepted them: an uneven
    # split leaves one worker idle while the other saturates its core.
    result["worker_cores"] = [round(w / wall, 2) for w in workers_s]
    result["idle_worker"] = idle_worker(workers_s)
    # CPU that neither the server nor wrk used: other people's work on the machine.
    result["other_cores"] = max(0.0, busy_s - server_s - result["client_cpu_s"]) / wall
    errors = sum(result[k] for k in result if k.startswith("err_"))
    result["errors"] = errors
    return result


def alternate(label: str, servers: Sequence[Server], load: Load, ws: WrkSettings) -> Runs:
    """Warm all up, then each in turn for ws.rounds rounds, the order reversed every
    round; every run, by server label."""
    for server in servers:
        run_wrk(server.port, load, ws, ws.warmup_s)
    runs: Runs = {s.label: [] for s in servers}
    for i in range(ws.rounds):
        # Reverse the order every round so none always runs first.
        order = servers if i % 2 == 0 else servers[::-1]
        for server in order:
            r = measured_wrk(server, load, ws)
            log(
                f"{label} round {i + 1}/{ws.rounds} {server.label}: {r['rps']:.0f} req/s "
                f"p50 {r['p50_us'] / 1000:.2f} ms p99 {r['p99_us'] / 1000:.2f} ms "
                f"errors {r['errors']} workers {r['worker_cores']} cores, "
                f"wrk {r['client_cores']:.2f}, others {r['other_cores']:.2f}"
                + (" (a worker idle)" if r["idle_worker"] else "")
            )
            runs[server.label].append(r)
    return runs


def summary(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Medians of one server's runs."""
    return {
        "rps": median([r["rps"] for r in runs]),
        "rps_worst": min(r["rps"] for r in runs),
        "p50_ms": median([r["p50_us"] / 1000 for r in runs]),
        "p99_ms": median([r["p99_us"] / 1000 for r in runs]),
        "p99_ms_worst": max(r["p99_us"] / 1000 for r in runs),
        "server_cpu_us_per_req": median([r["server_cpu_us_per_req"] for r in runs]),
        "server_cores": median([r["server_cores"] for r in runs]),
        "client_cores": median([r["client_cores"] for r in runs]),
        "errors": sum(r["errors"] for r in runs),
        # Each run's CPU per worker (cores), and how many runs had a worker idle.
        "worker_cores": [r["worker_cores"] for r in runs],
        "idle_runs": sum(1 for r in runs if r["idle_worker"]),
    }


def cores_text(worker_cores: Sequence[Sequence[float]]) -> str:
    """Each run's CPU per worker, in cores: `1.02 / 0.98; 1.01 / 0.97`."""
    return "; ".join(" / ".join(f"{c:.2f}" for c in run) for run in worker_cores)


def round_ratio(
    rounds: Mapping[str, Sequence[Mapping[str, Any]]], a: str, b: str, key: str = "rps"
) -> float:
    """Median over the rounds of a's `key` / b's: any two labels of a pair's "rounds"."""
    return median_ratio([r[key] for r in rounds[a]], [r[key] for r in rounds[b]])


def round_ratios(
    rounds: Mapping[str, Sequence[Mapping[str, Any]]], a: str, b: str, key: str = "rps"
) -> list[float]:
    """a's `key` / b's, round by round."""
    return ratios([r[key] for r in rounds[a]], [r[key] for r in rounds[b]])


def idle_round_share(rounds: Mapping[str, Sequence[Mapping[str, Any]]]) -> float:
    """The share of rounds in which any server's run had a worker (nearly) idle."""
    count = len(next(iter(rounds.values())))
    idle = [any(runs[i]["idle_worker"] for runs in rounds.values()) for i in range(count)]
    return sum(idle) / count if count else 0.0


def pair(label: str, servers: Sequence[Server], load: Load, ws: WrkSettings) -> dict[str, Any]:
    """Alternating rounds of running servers; medians of each, ratios of the first two."""
    runs = alternate(label, servers, load, ws)
    a, b = servers[0].label, servers[1].label
    summaries = {s.label: summary(runs[s.label]) for s in servers}
    return {
        "path": load.path,
        "script": load.script,
        "script_args": list(load.script_args),
        **summaries,
        # Median of the per-round ratios: each pair ran back to back, so drift cancels.
        "rps_ratio": round_ratio(runs, a, b),
        "p99_ratio": round_ratio(runs, a, b, "p99_us"),
        # The worst round: the lowest throughput ratio, the highest p99 ratio.
        "rps_ratio_worst": min(round_ratios(runs, a, b)),
        "p99_ratio_worst": max(round_ratios(runs, a, b, "p99_us")),
        # Rounds in which some server's run had a worker (nearly) idle.
        "idle_round_share": idle_round_share(runs),
        "rps_ratio_of_medians": summaries[a]["rps"] / summaries[b]["rps"],
        "other_cores_max": max(r["other_cores"] for rs in runs.values() for r in rs),
        "rounds": runs,
    }


def measure_pair(
    bench: Bench,
    label: str,
    a: Variant,
    b: Variant,
    load: Load,
    ws: WrkSettings,
    *,
    others: Sequence[Variant] = (),
    same_settings: Sequence[str] = SAME_SETTINGS,
    same_responses: Sequence[str] = (),
) -> tuple[dict[str, Any], list[Server]]:
    """A against B (and `others` in the same rounds) under `load`: see pair().

    Fails before measuring if a server's gunicorn settings differ from A's in
    `same_settings`, or its answer to a path in `same_responses` does. Returns the
    result (with A's gunicorn settings and worker count) and the stopped servers
    (their log files stay until the session ends).
    """
    servers = [bench.server(f"{label}-{v.label}".replace(" ", "-"), v) for v in (a, b, *others)]
    settings = check_same_settings(servers, same_settings)
    with bench.running(*servers):
        for path in same_responses:
            for other in servers[1:]:
                check_same_response(servers[0], other, path)
        workers = [
            len(s.wait_workers(int(str(st["workers"]))))
            for s, st in zip(servers, settings, strict=True)
        ]
        result = pair(label, servers, load, ws)
    result["gunicorn"] = settings[0]
    result["worker_processes"] = workers[0]
    return result, servers
