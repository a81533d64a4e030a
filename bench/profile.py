"""Where a worker's time goes under wrk load: py-spy on the service as deployed.

Starts the PROD service the way `make bench` does, loads it with wrk (cached
n=30 by default), records one worker with py-spy (`.venv/bin/pip install -e ".[bench]"`) and
prints the share of samples by self time and by inclusive time of the layers
of the hot path (gunicorn, Flask/Werkzeug, logging, the app's own code).

    .venv/bin/python -m bench.profile [--seconds 10] [--uncached]
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bench.servers import SERVICE, Bench
from bench.wrk import cached_load, random_load, start_wrk, wrk_argv

# Inclusive buckets: a sample counts for the first pattern found in its stack (leaf first).
LAYERS = (
    ("logging: JSON formatting", ("pythonjsonlogger", "logs.py")),
    ("logging: write + flush", ("emit (logging/__init__.py", "flush (logging/__init__.py")),
    ("logging: records (makeRecord, handlers)", ("logging/__init__.py",)),
    ("request id (uuid4)", ("uuid.py",)),
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("tracing (fiboserver/tracing, opentelemetry)", ("fiboserver/tracing/", "opentelemetry/")),
    ("the worker's event loop (fiboserver/worker/)", ("fiboserver/worker/",)),
    ("app code (fiboserver/)", ("fiboserver/",)),
    ("Flask / Werkzeug", ("flask/", "werkzeug/")),
    ("gunicorn", ("gunicorn/",)),
)


def layer_of(stack: list[str]) -> str:
    for frame in reversed(stack):  # the leaf first
        for name, patterns in LAYERS:
            if any(p in frame for p in patterns):
                return name
    return "other (interpreter, stdlib)"


# Leaves where a thread waits (the poller, the pool's queue): not CPU time.
IDLE_LEAVES = ("select (selectors.py", "wait (threading.py", "_worker (concurrent")


@dataclass
class Profile:
    """py-spy's busy samples of one worker, counted three ways."""

    total: int = 0
    self_time: collections.Counter[str] = field(default_factory=collections.Counter)
    inclusive: collections.Counter[str] = field(default_factory=collections.Counter)
    layers: collections.Counter[str] = field(default_factory=collections.Counter)


def tally(raw: str) -> Profile:
    """py-spy's raw output (one `frame;frame;... count` line per stack) as a Profile."""
    profile = Profile()
    for line in raw.splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue  # not a stack line
        count = int(count_text)
        stack = stack_text.split(";")
        leaf = stack[-1]
        if any(w in leaf for w in IDLE_LEAVES):
            continue
        profile.total += count
        profile.self_time[leaf] += count
        for frame in set(f.split(":")[0] + ")" for f in stack):
            profile.inclusive[frame] += count
        profile.layers[layer_of(stack)] += count
    return profile


def record(spy: str, args: argparse.Namespace, tmp: Path) -> str:
    """py-spy's raw stacks of one PROD worker under wrk load."""
    bench = Bench(tmp)
    overrides = {"cacheresult": False} if args.uncached else {}
    server = bench.server("profiled", SERVICE.with_config(**overrides))
    raw = tmp / "stacks.txt"
    if args.uncached:
        load = random_load(bench.prefix, int(bench.prod["maxseq"]), 1)
    else:
        load = cached_load(bench.prefix)
    with bench.running(server):
        pid = server.wait_workers(int(server.print_config()["workers"]))[0]
        argv = wrk_argv(server.port, load, 1, args.connections, args.seconds + 3)
        wrk = start_wrk(argv, stdout=subprocess.DEVNULL)
        only_gil = [] if args.all_threads else ["--gil"]
        spy_argv = [spy, "record", "--pid", str(pid), "--duration", str(args.seconds)]
        spy_argv += ["--rate", "1000", "--format", "raw", "--output", str(raw)]
        subprocess.run([*spy_argv, "--nonblocking", *only_gil], check=True, capture_output=True)
        wrk.wait()
    return raw.read_text()


def show(profile: Profile, top: int) -> None:
    total = profile.total
    print(f"{total} busy samples of one worker")
    print("\nBy layer (a sample counts for the innermost layer it is in):")
    for name, count in profile.layers.most_common():
        print(f"  {100 * count / total:5.1f}%  {name}")
    print(f"\nTop {top} functions by inclusive time (self + callees):")
    for frame, count in profile.inclusive.most_common(top):
        print(f"  {100 * count / total:5.1f}%  {frame}")
    print(f"\nTop {top} functions by self time:")
    for frame, count in profile.self_time.most_common(top):
        print(f"  {100 * count / total:5.1f}%  {frame}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--uncached", action="store_true")
    p.add_argument("--top", type=int, default=25)
    p.add_argument(
        "--all-threads",
        action="store_true",
        help="sample every running thread (default: only the one holding the GIL, i.e. CPU)",
    )
    args = p.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("py-spy is not installed: .venv/bin/pip install -e '.[bench]'", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="fiboserver-profile-") as tmp:
        raw = record(spy, args, Path(tmp))
    show(tally(raw), args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
