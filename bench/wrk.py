"""The wrk client: its command line, its summary line, and runs that measured one worker.

wrk runs from the repository root with a Lua script from bench/wrk/ that prints
one `BENCH_JSON {...}` line (summary.lua); random_n.lua adds a random n per request.
"""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.procstat import proc_cpu_ticks
from tests.support.procinfo import HOST
from tests.support.repo import REPO_ROOT

SUMMARY_LUA = "bench/wrk/summary.lua"
RANDOM_LUA = "bench/wrk/random_n.lua"


@dataclass
class WrkSettings:
    threads: int
    connections: int
    duration_s: float
    warmup_s: float
    rounds: int
    timeout_s: int = 10
    # A lopsided run (see balanced()) is measured again, at most this often in all.
    attempts: int = 8


@dataclass(frozen=True)
class Load:
    """What wrk sends: a path, and the script (with its arguments) that shapes it."""

    path: str
    script: str = SUMMARY_LUA
    script_args: tuple[str, ...] = ()

    def url(self, port: int) -> str:
        return f"http://{HOST}:{port}{self.path}"


def cached_load(prefix: str, n: int = 30) -> Load:
    """The same n on every request: after the first, a cache hit."""
    return Load(f"{prefix}/fibo?n={n}")


def random_load(prefix: str, maxseq: int, seed: int, lowest: int = 0) -> Load:
    """A random n in lowest..maxseq per request; the seed gives every server the same
    sequence."""
    return Load(f"{prefix}/fibo", RANDOM_LUA, (str(maxseq), prefix, str(seed), str(lowest)))


def wrk_argv(
    port: int,
    load: Load,
    threads: int,
    connections: int,
    duration_s: float,
    timeout_s: int | None = None,
) -> list[str]:
    """The wrk command line (None: wrk's own request timeout)."""
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s:g}s"]
    if timeout_s is not None:
        cmd.append(f"--timeout={timeout_s}s")
    cmd += ["-s", load.script, load.url(port)]
    if load.script_args:
        cmd += ["--", *load.script_args]
    return cmd


def start_wrk(argv: Sequence[str], stdout: int = subprocess.PIPE) -> subprocess.Popen[str]:
    """wrk in the background, from the repository root (the scripts' paths are relative)."""
    return subprocess.Popen(argv, cwd=REPO_ROOT, stdout=stdout, text=True)


def parse_summary(out: str) -> dict[str, Any] | None:
    """The `BENCH_JSON` line summary.lua prints when wrk ends (also on SIGINT)."""
    for line in out.splitlines():
        if line.startswith("BENCH_JSON "):
            result: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
            return result
    return None


def run_wrk(
    port: int,
    load: Load,
    ws: WrkSettings,
    duration_s: float,
    watch_pids: Sequence[int] = (),
) -> dict[str, Any]:
    """Run wrk; with `watch_pids` (the workers), stop it early if the run is lopsided.

    Whether one worker got every connection shows in the first second (see
    balanced()); stopping then (wrk reports on SIGINT) saves the rest of a run
    that the pair would discard anyway.
    """
    argv = wrk_argv(port, load, ws.threads, ws.connections, duration_s, ws.timeout_s)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = start_wrk(argv)
    stopped_early = False
    if watch_pids and duration_s > 3:
        time.sleep(0.5)  # connections made, requests flowing
        ticks0 = [proc_cpu_ticks(p) for p in watch_pids]
        time.sleep(1.0)
        ticks = [proc_cpu_ticks(p) - t for p, t in zip(watch_pids, ticks0, strict=True)]
        if not balanced(ticks):
            proc.send_signal(signal.SIGINT)
            stopped_early = True
    out, _ = proc.communicate(timeout=duration_s + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, -signal.SIGINT):
        raise RuntimeError(f"wrk failed ({proc.returncode}): {out}")
    result = parse_summary(out)
    if result is None:
        raise RuntimeError(f"no summary from wrk: {out}")
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["client_cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    result["stopped_early"] = stopped_early
    return result


def balanced(worker_cores: Sequence[float]) -> bool:
    """False when one worker did nearly all the work.

    wrk opens its connections in one burst; the worker whose accept loop runs
    first may take them all, and keep-alive keeps them there, so the other
    worker idles for the whole run. It happens to the service and the ceiling
    alike, in a quarter to half of the runs here; such a run measures one worker,
    not the stack, so bench.pairs measures it again (and keeps the discarded run
    in the JSON).
    """
    total = sum(worker_cores)
    return len(worker_cores) < 2 or total == 0 or min(worker_cores) / total >= 0.25
