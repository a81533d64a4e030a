"""Before/after: the service and its ceiling at an older commit against the working tree.

Extracts REF with `git archive` into a temporary directory and starts both
trees' service and ceiling as bench/run.py does (gunicorn -c gunicorn.conf.py,
PROD config on a free port, each tree's own gunicorn settings), then loads
them in turn, round after round, with cached n=30. Prints req/s and server CPU
per request: what an optimisation bought, measured side by side.

    .venv/bin/python -m bench.compare 0629cc8 [--rounds 4] [--duration 4]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from bench.run import (
    CEILING_APP,
    PROD_CONFIG,
    ROOT,
    SUMMARY_LUA,
    Bench,
    Server,
    WrkSettings,
    balanced,
    measured_wrk,
    run_wrk,
    running,
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ref", help="the older commit (anything git archive takes)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--connections", type=int, default=16)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="fiboserver-compare-") as tmp:
        old_tree = Path(tmp) / "old"
        old_tree.mkdir()
        archive = subprocess.run(
            ["git", "archive", args.ref], cwd=ROOT, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(old_tree)], input=archive, check=True)
        # A commit older than the ceiling app gets today's (it is a bare WSGI callable).
        for name in ("__init__.py", "ceiling.py"):
            target = old_tree / "bench" / name
            if not target.exists():
                target.parent.mkdir(exist_ok=True)
                shutil.copy(ROOT / "bench" / name, target)
        bench = Bench(argparse.Namespace(), Path(tmp), yaml.safe_load(PROD_CONFIG.read_text()))
        servers: list[Server] = []
        for label, tree in ((args.ref, old_tree), ("working tree", ROOT)):
            for kind, app in (("service", None), ("ceiling", CEILING_APP)):
                name = f"{kind} @ {label}"
                server = bench.server(name, bench.config(f"{kind}-{len(servers)}"), app)
                server.log_path = Path(tmp) / f"{kind}-{len(servers)}.log"
                server.cwd = tree
                servers.append(server)
        ws = WrkSettings(1, args.connections, args.duration, 1.0, args.rounds)
        path = "/" + str(bench.prod["env"]).lower() + "/fibo?n=30"
        runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in servers}
        with running(*servers):
            for s in servers:
                s.wait_workers(int(s.print_config()["workers"]))
                run_wrk(f"http://127.0.0.1:{s.port}{path}", ws, ws.warmup_s, SUMMARY_LUA)
            for i in range(args.rounds):
                for s in servers if i % 2 == 0 else servers[::-1]:
                    for _ in range(ws.attempts):
                        r = measured_wrk(s, path, ws, SUMMARY_LUA)
                        if balanced(r["worker_cores"]) and not r["stopped_early"]:
                            break
                    runs[s.name].append(r)
    print(
        f"cached n=30, wrk -t1 -c{args.connections}, {args.rounds} x {args.duration:g} s, medians"
    )
    print(f"{'':28} {'req/s':>8} {'server CPU us/req':>18} {'p99 ms':>8}")
    for name, rs in runs.items():
        rps = statistics.median(r["rps"] for r in rs)
        cpu = statistics.median(r["server_cpu_us_per_req"] for r in rs)
        p99 = statistics.median(r["p99_us"] for r in rs) / 1000
        print(f"{name:28} {rps:8.0f} {cpu:18.0f} {p99:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
