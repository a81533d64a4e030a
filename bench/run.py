"""`make bench`: what fiboserver costs against the ceiling of its own stack.

Measures, on loopback only and bounded in time:
  * throughput/latency pairs, fiboserver (PROD config as deployed) against a bare
    WSGI app on the same gunicorn settings (bench/ceiling.py), cached n=30 and
    uncached random n, alternating A, B, A, B so machine drift cancels;
  * the cost of the Prometheus metrics: metrics on against off, cached n=30;
  * the proxy pair: 4 long-lived keep-alive connections against the usual 16;
  * the cost of tracing: without an endpoint, and exporting to a local Jaeger,
    against the app without tracing, cached n=30 with a traceparent;
  * compute + serialize F(n) cold against a plain iterative loop;
  * start (process start -> first 200 on /readyz) and stop (SIGTERM -> exit);
  * overload (2,000 connections of costly requests) and hostile clients (idle
    and slowloris connections): probe p99 and throughput kept (bench/overload.py);
  * worker RSS after a walk over many large n against cache_max_bytes.
No run is discarded: each pair reports the median and the worst of its rounds,
each run's CPU per worker, and the share of rounds in which a worker sat idle.
Writes bench/results/latest.json and latest.md (README "Performance").
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench.bign import section_big_n
from bench.memory import section_memory
from bench.metrics_cost import section_metrics
from bench.overload import section_hostile, section_overload
from bench.proxy import section_proxy
from bench.report import render, write_results
from bench.servers import PROD_CONFIG, Bench
from bench.startstop import section_start_stop
from bench.targets import targets
from bench.throughput import section_throughput
from bench.tracing_cost import section_tracing
from bench.worker_cost import WORKER_BEFORE, section_worker_cost
from bench.wrk import WrkSettings
from tests.support.repo import REPO_ROOT

RESULTS = REPO_ROOT / "bench" / "results"


def machine_info() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "fiboserver", "gunicorn.conf.py"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "gunicorn": version("gunicorn"),
        "flask": version("flask"),
        "wrk": wrk.split(" [")[0].strip(),
        "git_commit": commit + ("+dirty" if dirty else ""),
        "loadavg_before": list(os.getloadavg()),
    }


def command_line() -> str:
    """How to reproduce this run: `make bench` runs the module without arguments."""
    if len(sys.argv) == 1:
        return "make bench"
    return " ".join([".venv/bin/python -m bench.run", *sys.argv[1:]])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # One wrk thread: a single epoll loop drives far more requests than this Python
    # server answers, and every core wrk does not take is one the server can use.
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seed", type=int, default=20261126)
    p.add_argument("--big-n-samples", type=int, default=5)
    p.add_argument("--start-trials", type=int, default=5)
    p.add_argument("--stop-trials", type=int, default=3)
    p.add_argument(
        "--cache-max-bytes",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[8 * 2**20, 32 * 2**20],
        help="budgets for the memory walk, comma-separated (32 MiB is the default budget)",
    )
    # Slack on top of cache_max_bytes and the cache-off growth: allocator
    # fragmentation from evicting and storing strings of ~20 KB, which glibc
    # keeps in the heap rather than returning.
    p.add_argument("--rss-overhead-mib", type=int, default=8)
    p.add_argument(
        "--only",
        default=(
            "cached,uncached,metrics,proxy,tracing,worker,big_n,start_stop,memory,overload,hostile"
        ),
        help="comma-separated sections to run",
    )
    p.add_argument(
        "--worker-before",
        default=WORKER_BEFORE,
        help="commit whose worker the 'worker' section compares today's with",
    )
    p.add_argument("--out", default=str(RESULTS), help="directory for latest.json/latest.md")
    p.add_argument("--tag", default="", help="also keep a timestamped copy named with this tag")
    p.add_argument(
        "--render", metavar="JSON", help="only rewrite the Markdown next to a results JSON"
    )
    return p


def run_sections(bench: Bench, args: argparse.Namespace, ws: WrkSettings) -> dict[str, Any]:
    """The result of each section `--only` names, under its name."""
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    res: dict[str, Any] = {}
    if "cached" in sections:
        res["cached"] = section_throughput(bench, ws, cached=True, seed=args.seed)
    if "uncached" in sections:
        res["uncached"] = section_throughput(bench, ws, cached=False, seed=args.seed)
    if "metrics" in sections:
        res["metrics"] = section_metrics(bench, ws)
    if "proxy" in sections:
        res["proxy"] = section_proxy(bench, ws)
    if "tracing" in sections:
        res["tracing"] = section_tracing(bench, ws, args.seed)
    if "big_n" in sections:
        res["big_n"] = section_big_n(args.big_n_samples)
    if "start_stop" in sections:
        res["start_stop"] = section_start_stop(bench, ws, args.start_trials, args.stop_trials)
    if "worker" in sections:
        res["worker"] = section_worker_cost(bench, ws, args.worker_before)
    if "memory" in sections:
        res["memory"] = [section_memory(bench, min(args.cache_max_bytes), cache=False)]
        res["memory"] += [section_memory(bench, b) for b in args.cache_max_bytes]
    if "overload" in sections:
        res["overload"] = section_overload(bench)
    if "hostile" in sections:
        res["hostile"] = section_hostile(bench)
    return res


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.render:
        render(Path(args.render))
        return 0
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk (README, Performance)", file=sys.stderr)
        return 2
    ws = WrkSettings(args.wrk_threads, args.connections, args.duration, args.warmup, args.rounds)
    started = dt.datetime.now(dt.UTC)
    with tempfile.TemporaryDirectory(prefix="fiboserver-bench-") as tmp:
        bench = Bench(Path(tmp))
        res: dict[str, Any] = {
            "started": started.isoformat(timespec="seconds"),
            "command": command_line(),
            "machine": machine_info(),
            "settings": {
                "wrk_threads": args.wrk_threads,
                "connections": args.connections,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "rounds": args.rounds,
                "seed": args.seed,
                "prod_config": str(PROD_CONFIG.relative_to(REPO_ROOT)),
                "rss_overhead_allowance": args.rss_overhead_mib * 2**20,
            },
            "notes": [],
        }
        try:
            res |= run_sections(bench, args, ws)
        except Exception:
            for log_path in bench.logs:
                if log_path.exists():
                    tail = log_path.read_text(errors="replace").splitlines()[-15:]
                    print(f"--- {log_path.name}", *tail, sep="\n", file=sys.stderr)
            raise
    finished = dt.datetime.now(dt.UTC)
    res["finished"] = finished.isoformat(timespec="seconds")
    res["elapsed_s"] = (finished - started).total_seconds()
    res["machine"]["loadavg_after"] = list(os.getloadavg())
    res["targets"] = [{"target": t, "measured": v, "met": ok} for t, v, ok in targets(res)]
    print(write_results(Path(args.out), res, finished, args.tag))
    return 0


if __name__ == "__main__":
    sys.exit(main())
