"""Before/after: the service and its ceiling at an older commit against the working tree.

Extracts REF with `git archive` into a temporary directory and starts both
trees' service and ceiling as `make bench` does (gunicorn -c gunicorn.conf.py,
PROD config on a free port, each tree's own gunicorn settings), then loads
them in turn, round after round, with cached n=30 (bench/pairs.py `alternate`).
Prints req/s and server CPU per request: what an optimisation bought, measured
side by side.

    .venv/bin/python -m bench.compare 0629cc8 [--rounds 4] [--duration 4]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from bench.pairs import alternate, summary
from bench.servers import CEILING, SERVICE, Bench, Server
from bench.wrk import WrkSettings, cached_load
from tests.support.repo import REPO_ROOT


def tree_at(ref: str, into: Path) -> Path:
    """The repository as it was at `ref` (git archive), extracted below `into`; a
    Variant's cwd. A commit older than the ceiling app gets today's (it is a bare
    WSGI callable)."""
    tree = into / "tree-at-ref"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "archive", ref], cwd=REPO_ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    for name in ("__init__.py", "ceiling.py"):
        target = tree / "bench" / name
        if not target.exists():
            target.parent.mkdir(exist_ok=True)
            shutil.copy(REPO_ROOT / "bench" / name, target)
    return tree


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ref", help="the older commit (anything git archive takes)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--connections", type=int, default=16)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="fiboserver-compare-") as tmp:
        old_tree = tree_at(args.ref, Path(tmp))
        bench = Bench(Path(tmp))
        servers: list[Server] = []
        for label, tree in ((args.ref, old_tree), ("working tree", REPO_ROOT)):
            for kind, variant in (("service", SERVICE), ("ceiling", CEILING)):
                name = f"{kind} @ {label}"
                key = f"{kind}-{len(servers)}"
                servers.append(bench.server(key, replace(variant, label=name, cwd=tree)))
        ws = WrkSettings(1, args.connections, args.duration, 1.0, args.rounds)
        with bench.running(*servers):
            for s in servers:
                s.wait_workers(int(s.print_config()["workers"]))
            runs = alternate("compare", servers, cached_load(bench.prefix), ws)
    print(
        f"cached n=30, wrk -t1 -c{args.connections}, {args.rounds} x {args.duration:g} s, medians"
    )
    print(f"{'':28} {'req/s':>8} {'server CPU us/req':>18} {'p99 ms':>8}")
    for name, rs in runs.items():
        m = summary(rs)
        print(f"{name:28} {m['rps']:8.0f} {m['server_cpu_us_per_req']:18.0f} {m['p99_ms']:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
