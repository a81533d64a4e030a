"""The wrk client: its command line, its summary line, and whether a worker sat idle.

wrk runs from the repository root with a Lua script from bench/wrk/ that prints
one `BENCH_JSON {...}` line (summary.lua); random_n.lua adds a random n per request.
"""

from __future__ import annotations

import json
import resource
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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


def run_wrk(port: int, load: Load, ws: WrkSettings, duration_s: float) -> dict[str, Any]:
    """Run wrk for `duration_s`; its summary, requests per second and its own CPU."""
    argv = wrk_argv(port, load, ws.threads, ws.connections, duration_s, ws.timeout_s)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = start_wrk(argv)
    out, _ = proc.communicate(timeout=duration_s + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {out}")
    result = parse_summary(out)
    if result is None:
        raise RuntimeError(f"no summary from wrk: {out}")
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["client_cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return result


# A worker doing less than this share of its server's CPU counts as idle: with
# 2 workers an even split gives each a half, and half of that is far from both
# an even split and the noise of a shared machine (the bench before issue 20
# measured such runs again, with the same bound).
IDLE_SHARE = 0.25


def idle_worker(worker_cores: Sequence[float]) -> bool:
    """Whether a worker (nearly) sat out the run: the kernel and keep-alive left
    its share of the connections to another (docs/worker.md, "Balancing")."""
    total = sum(worker_cores)
    return len(worker_cores) >= 2 and total > 0 and min(worker_cores) / total < IDLE_SHARE
