"""`make bench`: what fiboserver costs against the ceiling of its own stack.

Measures, on loopback only and bounded in time:
  * throughput/latency pairs, fiboserver (PROD config as deployed) against a bare
    WSGI app on the same gunicorn settings (bench/ceiling.py), cached n=30 and
    uncached random n, alternating A, B, A, B so machine drift cancels;
  * compute + serialize F(n) cold against a plain iterative loop;
  * start (process start -> first 200 on /readyz) and stop (SIGTERM -> exit);
  * worker RSS after a walk over many large n against cache_max_bytes.
Writes bench/results/latest.json and latest.md (README "Performance").
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PROD_CONFIG = ROOT / "k8s" / "overlays" / "prod" / "config.yaml"
GUNICORN = Path(sys.executable).parent / "gunicorn"
CEILING_APP = "bench.ceiling:app"
FLASK_FLOOR_APP = "bench.flask_floor:app"
SUMMARY_LUA = "bench/wrk/summary.lua"
RANDOM_LUA = "bench/wrk/random_n.lua"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Settings that must be identical for the service and its ceiling.
SAME_SETTINGS = (
    "worker_class",
    "workers",
    "threads",
    "keepalive",
    "worker_connections",
    "backlog",
    "timeout",
    "graceful_timeout",
    "max_requests",
    "accesslog",
    "loglevel",
    "logconfig_dict",
    "worker_tmp_dir",
    "preload_app",
)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


# --------------------------------------------------------------------------- processes


def proc_cpu_ticks(pid: int) -> int:
    """utime + stime of one process, in clock ticks (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def proc_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def machine_busy_ticks() -> int:
    """CPU ticks spent busy by the whole machine (all cores), from /proc/stat."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in first[:8])
    return user + nice + system + irq + softirq + steal


@dataclass
class Server:
    """One gunicorn master started the deployed way: `gunicorn -c gunicorn.conf.py [app]`."""

    name: str
    config_path: Path
    port: int
    prefix: str
    log_path: Path
    app: str | None = None
    # The checkout to run from (bench/compare.py runs an older commit's tree).
    cwd: Path = ROOT
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    ready_s: float = float("nan")

    def argv(self, *extra: str) -> list[str]:
        return [str(GUNICORN), "-c", "gunicorn.conf.py", *extra, *([self.app] if self.app else [])]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        # As deployed: the worker count follows the CPUs, nothing overrides it.
        for key in ("WEB_CONCURRENCY", "GUNICORN_CMD_ARGS", "PYTHONDONTWRITEBYTECODE"):
            env.pop(key, None)
        env["FIBOSERVER_CONFIG"] = str(self.config_path)
        # gunicorn's control socket defaults to one path per user; a private
        # runtime dir keeps two masters running side by side from colliding.
        runtime = self.log_path.with_suffix(".run")
        runtime.mkdir(exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(runtime)
        return env

    def print_config(self) -> dict[str, str]:
        out = subprocess.run(
            self.argv("--print-config"),
            cwd=self.cwd,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        settings = {}
        for line in out.splitlines():
            key, sep, value = line.partition(" = ")
            if sep:
                settings[key.strip()] = value.strip()
        return settings

    def start(self, timeout: float = 30.0) -> float:
        """Start, then poll /readyz; return seconds from process start to the first 200."""
        stream = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(
            self.argv(), cwd=self.cwd, env=self.env(), stdout=stream, stderr=subprocess.STDOUT
        )
        stream.close()
        deadline = self.started_at + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise RuntimeError(f"{self.name} exited with {code}; see {self.log_path}")
            if self.get(self.prefix + "/readyz", timeout=1.0)[0] == 200:
                self.ready_s = time.perf_counter() - self.started_at
                return self.ready_s
            time.sleep(0.005)
        self.kill()
        raise RuntimeError(f"{self.name} not ready after {timeout} s; see {self.log_path}")

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        except OSError:
            return 0, {}, b""
        finally:
            conn.close()

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        pid = self.proc.pid
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return sorted(int(p) for p in text.split())

    def wait_workers(self, count: int, timeout: float = 30.0) -> list[int]:
        """Wait until `count` workers run (the first 200 may come from the first one alone)."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            pids = self.worker_pids()
            if len(pids) == count:
                return pids
            time.sleep(0.02)
        raise RuntimeError(f"{self.name}: {len(self.worker_pids())} workers, expected {count}")

    def cpu_ticks(self) -> int:
        assert self.proc is not None
        return proc_cpu_ticks(self.proc.pid) + sum(proc_cpu_ticks(p) for p in self.worker_pids())

    def stop(self, timeout: float = 40.0) -> tuple[float, int]:
        """SIGTERM the master; return (seconds until it exited, exit status)."""
        assert self.proc is not None
        t0 = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        return time.perf_counter() - t0, code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def running(*servers: Server) -> Iterator[None]:
    try:
        for server in servers:
            server.start()
        yield
    finally:
        for server in servers:
            if server.proc is not None and server.proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    server.stop()


# --------------------------------------------------------------------------- wrk


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


def run_wrk(
    url: str,
    ws: WrkSettings,
    duration_s: float,
    script: str,
    script_args: Sequence[str] = (),
    watch_pids: Sequence[int] = (),
) -> dict[str, Any]:
    """Run wrk; with `watch_pids` (the workers), stop it early if the run is lopsided.

    Whether one worker got every connection shows in the first second (see
    balanced()); stopping then (wrk reports on SIGINT) saves the rest of a run
    that pair() would discard anyway.
    """
    cmd = [
        "wrk",
        f"-t{ws.threads}",
        f"-c{ws.connections}",
        f"-d{duration_s:g}s",
        f"--timeout={ws.timeout_s}s",
        "-s",
        script,
        url,
    ]
    if script_args:
        cmd += ["--", *script_args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
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
    for line in out.splitlines():
        if line.startswith("BENCH_JSON "):
            result: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
            break
    else:
        raise RuntimeError(f"no summary from wrk: {out}")
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["client_cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    result["stopped_early"] = stopped_early
    return result


def measured_wrk(
    server: Server, path: str, ws: WrkSettings, script: str, script_args: Sequence[str] = ()
) -> dict[str, Any]:
    """One wrk run plus the server's and the rest of the machine's CPU during it."""
    server_t0, busy_t0 = server.cpu_ticks(), machine_busy_ticks()
    pids = server.worker_pids()
    workers_t0 = [proc_cpu_ticks(p) for p in pids]
    result = run_wrk(
        f"http://127.0.0.1:{server.port}{path}", ws, ws.duration_s, script, script_args, pids
    )
    server_s = (server.cpu_ticks() - server_t0) / CLK_TCK
    workers_s = [(proc_cpu_ticks(p) - t0) / CLK_TCK for p, t0 in zip(pids, workers_t0, strict=True)]
    busy_s = (machine_busy_ticks() - busy_t0) / CLK_TCK
    wall = result["duration_us"] / 1e6
    result["server_cpu_us_per_req"] = server_s * 1e6 / max(result["requests"], 1)
    result["server_cores"] = server_s / wall
    result["client_cores"] = result["client_cpu_s"] / wall
    # Keep-alive connections stay with the worker that accepted them; a lopsided
    # split leaves one worker idle while the other saturates its core.
    result["worker_cores"] = [round(w / wall, 2) for w in workers_s]
    # CPU that neither the server nor wrk used: other people's work on the machine.
    result["other_cores"] = max(0.0, busy_s - server_s - result["client_cpu_s"]) / wall
    errors = sum(result[k] for k in result if k.startswith("err_"))
    result["errors"] = errors
    return result


def balanced(worker_cores: Sequence[float]) -> bool:
    """False when one worker did nearly all the work.

    wrk opens its connections in one burst; the worker whose accept loop runs
    first may take them all, and keep-alive keeps them there, so the other
    worker idles for the whole run. It happens to the service and the ceiling
    alike, in a quarter to half of the runs here; such a run measures one worker,
    not the stack, so pair() measures it again (and keeps the discarded run in
    the JSON).
    """
    total = sum(worker_cores)
    return len(worker_cores) < 2 or total == 0 or min(worker_cores) / total >= 0.25


def pair(
    label: str,
    a: Server,
    b: Server,
    path: str,
    ws: WrkSettings,
    script: str,
    args: Sequence[str],
    others: Sequence[Server] = (),
) -> dict[str, Any]:
    """Warm all up, then A, B(, others), reversed, ... for ws.rounds rounds; medians, A/B ratios."""
    servers = [a, b, *others]
    for server in servers:
        run_wrk(f"http://127.0.0.1:{server.port}{path}", ws, ws.warmup_s, script, args)
    runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in servers}
    lopsided: dict[str, list[dict[str, Any]]] = {s.name: [] for s in servers}
    for i in range(ws.rounds):
        # Reverse the order every round so none always runs first.
        order = servers if i % 2 == 0 else servers[::-1]
        for server in order:
            for attempt in range(1, ws.attempts + 1):
                r = measured_wrk(server, path, ws, script, args)
                r["balanced"] = balanced(r["worker_cores"]) and not r["stopped_early"]
                log(
                    f"{label} round {i + 1}/{ws.rounds} {server.name}: {r['rps']:.0f} req/s "
                    f"p50 {r['p50_us'] / 1000:.2f} ms p99 {r['p99_us'] / 1000:.2f} ms "
                    f"errors {r['errors']} workers {r['worker_cores']} cores, "
                    f"wrk {r['client_cores']:.2f}, others {r['other_cores']:.2f}"
                    + ("" if r["balanced"] else " (lopsided)")
                )
                if r["balanced"] or attempt == ws.attempts:
                    break
                lopsided[server.name].append(r)
            runs[server.name].append(r)

    def summary(name: str) -> dict[str, Any]:
        rs = runs[name]
        return {
            "rps": median([r["rps"] for r in rs]),
            "p50_ms": median([r["p50_us"] / 1000 for r in rs]),
            "p99_ms": median([r["p99_us"] / 1000 for r in rs]),
            "server_cpu_us_per_req": median([r["server_cpu_us_per_req"] for r in rs]),
            "server_cores": median([r["server_cores"] for r in rs]),
            "client_cores": median([r["client_cores"] for r in rs]),
            "errors": sum(r["errors"] for r in rs),
        }

    summaries = {s.name: summary(s.name) for s in servers}
    sa, sb = summaries[a.name], summaries[b.name]
    rps_ratios = [x["rps"] / y["rps"] for x, y in zip(runs[a.name], runs[b.name], strict=True)]
    p99_ratios = [
        x["p99_us"] / y["p99_us"] for x, y in zip(runs[a.name], runs[b.name], strict=True)
    ]
    return {
        "path": path,
        "script": script,
        "script_args": list(args),
        **summaries,
        # Median of the per-round ratios: each pair ran back to back, so drift cancels.
        "rps_ratio": median(rps_ratios),
        "p99_ratio": median(p99_ratios),
        "rps_ratio_of_medians": sa["rps"] / sb["rps"],
        "other_cores_max": max(r["other_cores"] for rs in runs.values() for r in rs),
        "rounds": runs,
        # Runs measured again because one worker got (nearly) every connection.
        "lopsided_runs": lopsided,
    }


# --------------------------------------------------------------------------- sections


@dataclass
class Bench:
    args: argparse.Namespace
    workdir: Path
    prod: dict[str, Any] = field(default_factory=dict)
    logs: list[Path] = field(default_factory=list)

    def config(self, name: str, **overrides: Any) -> tuple[Path, int]:
        """A copy of the PROD config on a free loopback port (plus overrides)."""
        data = dict(self.prod)
        port = free_port()
        data["port"] = port
        data.update(overrides)
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path, port

    def server(
        self, name: str, cfg: tuple[Path, int], app: str | None = None, log_name: str = ""
    ) -> Server:
        log_path = self.workdir / f"{log_name or name}.log"
        self.logs.append(log_path)
        prefix = "/" + str(self.prod["env"]).lower()
        return Server(name, cfg[0], cfg[1], prefix, log_path, app)

    def wrk_settings(self) -> WrkSettings:
        a = self.args
        return WrkSettings(a.wrk_threads, a.connections, a.duration, a.warmup, a.rounds)


def check_same_settings(a: Server, b: Server) -> dict[str, Any]:
    ca, cb = a.print_config(), b.print_config()
    settings = {k: ca.get(k) for k in SAME_SETTINGS}
    diff = {k: (ca.get(k), cb.get(k)) for k in SAME_SETTINGS if ca.get(k) != cb.get(k)}
    log(f"gunicorn settings ({a.name}): {settings}")
    log(f"gunicorn settings ({b.name}): { {k: cb.get(k) for k in SAME_SETTINGS} }")
    if diff:
        raise RuntimeError(f"service and ceiling differ in gunicorn settings: {diff}")
    return settings


def check_same_response(a: Server, b: Server, path: str) -> None:
    """The ceiling must send the body and header set the service sends."""
    sa, ha, ba = a.get(path)
    sb, hb, bb = b.get(path)
    names_a = sorted(k.lower() for k in ha)
    names_b = sorted(k.lower() for k in hb)
    if (sa, ba, names_a) != (sb, bb, names_b):
        raise RuntimeError(
            f"responses differ for {path}: {a.name} {sa} {names_a} {ba[:80]!r} / "
            f"{b.name} {sb} {names_b} {bb[:80]!r}"
        )


def count_end_records(log_path: Path) -> int:
    """`end` records in a service log: proof that PROD request logging was on."""
    count = 0
    with open(log_path, encoding="utf-8", errors="replace") as stream:
        for line in stream:
            if '"msg": "end"' in line or '"msg":"end"' in line:
                count += 1
    return count


def section_throughput(bench: Bench, cached: bool) -> dict[str, Any]:
    label = "cached" if cached else "uncached"
    prod = bench.prod
    overrides: dict[str, Any] = {} if cached else {"cacheresult": False}
    # One config file for both, so the port logic and every setting are shared.
    cfg_a = bench.config(f"{label}-service", **overrides)
    cfg_b = bench.config(f"{label}-ceiling", **overrides)
    a = bench.server("fiboserver", cfg_a, log_name=f"{label}-fiboserver")
    b = bench.server("ceiling", cfg_b, CEILING_APP, log_name=f"{label}-ceiling")
    settings = check_same_settings(a, b)
    # The plain-Flask floor rides along in the cached case: it splits the gap into
    # what Flask costs and what the service's features cost.
    others = []
    if cached:
        cfg_c = bench.config(f"{label}-flask", **overrides)
        others.append(bench.server("flask floor", cfg_c, FLASK_FLOOR_APP, log_name="flask-floor"))
        check_same_settings(a, others[0])
    prefix = a.prefix
    ws = bench.wrk_settings()
    if cached:
        path, script, args = f"{prefix}/fibo?n=30", SUMMARY_LUA, []
    else:
        path, script = f"{prefix}/fibo", RANDOM_LUA
        args = [str(prod["maxseq"]), prefix, str(bench.args.seed)]
    with running(a, b, *others):
        for n in (0, 30, 1000, prod["maxseq"]):
            for other in (b, *others):
                check_same_response(a, other, f"{prefix}/fibo?n={n}")
        expected = int(settings["workers"])
        workers = [len(s.wait_workers(expected)) for s in (a, b, *others)]
        result = pair(label, a, b, path, ws, script, args, others)
    result["gunicorn"] = settings
    result["worker_processes"] = workers[0]
    result["service_end_records"] = count_end_records(a.log_path)
    result["service_requests"] = sum(r["requests"] for r in result["rounds"]["fiboserver"])
    return result


_BIG_N_PROBE = r"""
import json, sys, time
n = int(sys.argv[1])
sys.set_int_max_str_digits(0)
from fiboserver.fibo import fibonacci_digits
t0 = time.perf_counter()
fast = fibonacci_digits(n)
t1 = time.perf_counter()
a, b = 0, 1
for _ in range(n):
    a, b = b, a + b
loop = str(a)
t2 = time.perf_counter()
assert fast == loop, "fibonacci_digits disagrees with the iterative loop"
print(json.dumps({"fast_s": t1 - t0, "loop_s": t2 - t1, "digits": len(fast)}))
"""


def section_big_n(bench: Bench) -> dict[str, Any]:
    """Cold: each sample is the first call in a fresh interpreter (nothing cached)."""
    out: dict[str, Any] = {}
    for n in (1_000, 10_000, 100_000):
        samples = []
        for _ in range(bench.args.big_n_samples):
            text = subprocess.run(
                [sys.executable, "-c", _BIG_N_PROBE, str(n)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            ).stdout
            samples.append(json.loads(text))
        fast = median([s["fast_s"] for s in samples])
        loop = median([s["loop_s"] for s in samples])
        out[str(n)] = {
            "digits": samples[0]["digits"],
            "fibonacci_digits_ms": fast * 1000,
            "iterative_loop_ms": loop * 1000,
            "speedup": median([s["loop_s"] / s["fast_s"] for s in samples]),
            "samples": samples,
        }
        log(f"big n {n}: {fast * 1000:.2f} ms vs loop {loop * 1000:.1f} ms")
    return out


def section_start_stop(bench: Bench) -> dict[str, Any]:
    ready, idle_stop, idle_codes = [], [], []
    for i in range(bench.args.start_trials):
        s = bench.server(f"startstop-{i}", bench.config(f"startstop-{i}"))
        ready.append(s.start())
        time.sleep(0.5)  # idle: no request in flight, no open connection
        took, code = s.stop()
        idle_stop.append(took)
        idle_codes.append(code)
        log(f"start {ready[-1]:.3f} s, idle stop {took:.3f} s (exit {code})")
    loaded_stop, loaded_codes, loaded_inflight = [], [], []
    ws = bench.wrk_settings()
    for i in range(bench.args.stop_trials):
        s = bench.server(f"loadstop-{i}", bench.config(f"loadstop-{i}"))
        s.start()
        url = f"http://127.0.0.1:{s.port}{s.prefix}/fibo?n=30"
        cmd = ["wrk", f"-t{ws.threads}", f"-c{ws.connections}", "-d30s", "-s", SUMMARY_LUA, url]
        client = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        time.sleep(2.0)  # under full load by now
        took, code = s.stop()
        client.send_signal(signal.SIGINT)  # wrk prints its summary on SIGINT
        client_out, _ = client.communicate(timeout=30)
        loaded_stop.append(took)
        loaded_codes.append(code)
        summary: dict[str, Any] = next(
            (
                json.loads(line.removeprefix("BENCH_JSON "))
                for line in client_out.splitlines()
                if line.startswith("BENCH_JSON ")
            ),
            {},
        )
        loaded_inflight.append(summary)
        log(f"stop under load {took:.3f} s (exit {code})")
    return {
        "ready_s": median(ready),
        "ready_samples": ready,
        "idle_stop_s": median(idle_stop),
        "idle_stop_samples": idle_stop,
        "idle_exit_codes": idle_codes,
        "loaded_stop_s": median(loaded_stop),
        "loaded_stop_samples": loaded_stop,
        "loaded_exit_codes": loaded_codes,
        "loaded_client_summaries": loaded_inflight,
    }


def walk(port: int, path_of: Any, ns: list[int], threads: int) -> int:
    """GET every n in `ns` over `threads` keep-alive connections; return bytes received."""
    total = [0]
    lock = threading.Lock()
    failures: list[str] = []

    def worker(part: list[int]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        got = 0
        for n in part:
            conn.request("GET", path_of(n))
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                failures.append(f"n={n}: {resp.status}")
            got += len(body)
        conn.close()
        with lock:
            total[0] += got

    parts = [ns[i::threads] for i in range(threads)]
    pool = [threading.Thread(target=worker, args=(p,)) for p in parts]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if failures:
        raise RuntimeError(f"walk failed: {failures[:5]}")
    return total[0]


def section_memory(bench: Bench, budget: int, cache: bool = True) -> dict[str, Any]:
    """Worker RSS across three walks over large n; `cache=False` is the control run.

    With the cache off the same walks show what serving big responses costs
    by itself (allocator arenas, buffers): the fixed overhead that the cache's
    budget comes on top of.
    """
    label = f"memory-{budget}" if cache else "memory-nocache"
    overrides: dict[str, Any] = {"cache_max_bytes": budget}
    if not cache:
        overrides["cacheresult"] = False
    s = bench.server(label, bench.config(label, **overrides))
    maxseq = int(bench.prod["maxseq"])
    workers = int(s.print_config()["workers"])
    # F(n) has about 0.209 n digits. Pick the step over n in maxseq/2..maxseq so that
    # one walk alone sends every worker about twice the budget in digits.
    per_walk = 2 * budget * workers
    step = max(4, int((maxseq / 2) * (0.75 * maxseq * 0.209) / per_walk))
    with running(s):
        pids = s.wait_workers(workers)

        def path_of(n: int) -> str:
            return f"{s.prefix}/fibo?n={n}"

        # Warm every worker's code paths on small n, so the baseline is a serving state.
        walk(s.port, path_of, list(range(200)) * 2, 4)
        base = {p: proc_rss_bytes(p) for p in pids}
        # Three walks over distinct large n; the later ones show whether RSS keeps growing.
        walks = [
            list(range(maxseq - offset, maxseq // 2, -step)) for offset in (0, step // 2, step // 4)
        ]
        after: list[dict[int, int]] = []
        received = 0
        t0 = time.perf_counter()
        for ns in walks:
            received += walk(s.port, path_of, ns, 4)
            after.append({p: proc_rss_bytes(p) for p in pids})
        walk_s = time.perf_counter() - t0
        if s.worker_pids() != pids:
            raise RuntimeError("a worker was replaced during the memory walk")
    growth = {p: after[-1][p] - base[p] for p in pids}
    log(f"memory ({label}): growth per worker {[g // 1024 for g in growth.values()]} KiB")
    return {
        "cache": cache,
        "cache_max_bytes": budget if cache else 0,
        "requests": sum(len(ns) for ns in walks),
        "response_bytes": received,
        "walk_seconds": walk_s,
        "n_range": [min(min(ns) for ns in walks), maxseq],
        "workers": [
            {
                "pid": p,
                "rss_baseline": base[p],
                "rss_after_walks": [a[p] for a in after],
                "growth": growth[p],
            }
            for p in pids
        ],
        "max_growth": max(growth.values()),
    }


# --------------------------------------------------------------------------- report


def machine_info() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break

    def version(dist: str) -> str:
        from importlib.metadata import version as v

        return v(dist)

    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "fiboserver", "gunicorn.conf.py"],
        cwd=ROOT,
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


def fmt_ms(x: float) -> str:
    return f"{x:.2f}"


def verdict(ok: bool) -> str:
    return "met" if ok else "**NOT met**"


def targets(res: dict[str, Any]) -> list[tuple[str, str, bool]]:
    rows: list[tuple[str, str, bool]] = []
    c = res.get("cached")
    if c:
        rows.append(
            ("cached throughput >= 0.5 x ceiling", f"{c['rps_ratio']:.2f}", c["rps_ratio"] >= 0.5)
        )
        rows.append(
            ("cached p99 <= 2 x ceiling p99", f"{c['p99_ratio']:.2f} x", c["p99_ratio"] <= 2.0)
        )
    b = res.get("big_n", {}).get("100000")
    if b:
        rows.append(
            (
                "cold F(100000) < 10 ms",
                f"{b['fibonacci_digits_ms']:.2f} ms",
                b["fibonacci_digits_ms"] < 10,
            )
        )
        rows.append(
            ("F(100000) >= 20 x faster than the loop", f"{b['speedup']:.0f} x", b["speedup"] >= 20)
        )
    s = res.get("start_stop")
    if s:
        rows.append(("ready < 1.5 s", f"{s['ready_s']:.2f} s", s["ready_s"] < 1.5))
        rows.append(
            ("idle SIGTERM -> exit < 1 s", f"{s['idle_stop_s']:.2f} s", s["idle_stop_s"] < 1.0)
        )
    memory = res.get("memory", [])
    control = next((m for m in memory if not m["cache"]), None)
    slack = res["settings"]["rss_overhead_allowance"]
    for m in memory:
        if not m["cache"]:
            continue
        # The fixed overhead: what the same walks grow a worker by with the cache off.
        fixed = max(control["max_growth"], 0) if control else 0
        ok = m["max_growth"] <= m["cache_max_bytes"] + fixed + slack
        rows.append(
            (
                f"worker RSS growth <= cache_max_bytes {m['cache_max_bytes'] / 2**20:.0f} MiB"
                f" + cache-off growth + {slack / 2**20:.0f} MiB",
                f"{m['max_growth'] / 2**20:.1f} MiB (cache off: {fixed / 2**20:.1f} MiB)",
                ok,
            )
        )
    return rows


def samples_row(what: str, samples: Sequence[float]) -> str:
    shown = ", ".join(f"{x:.3f}" for x in samples)
    return f"| {what} | {median(samples):.3f} | {shown} |"


def notes(res: dict[str, Any]) -> list[str]:
    """What a reader of an unmet target needs next to it."""
    out = []
    c = res.get("cached")
    if c and c["rps_ratio"] < 0.5:
        line = (
            f"Cached throughput is {c['rps_ratio']:.2f} of the ceiling, short of 0.5. "
            "Where a worker's time goes: bench/results/profile-cached.txt "
            "(`.venv/bin/python -m bench.profile`)."
        )
        floor = c.get("flask floor")
        if floor:
            floor_ratio = floor["rps"] / c["ceiling"]["rps"]
            line += (
                f" A plain Flask app with no logging reaches {floor_ratio:.2f}"
                " on its own, so 0.5 would leave the service's features (request id, two JSON"
                " records, validation, cache) almost nothing; README, Performance."
            )
        out.append(line)
    return out


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    st = res["settings"]
    lines = [
        f"# fiboserver benchmark, {res['finished']}",
        "",
        f"Machine: {m['cores']} cores ({m['cpu_model']}), Linux {m['kernel']}, "
        f"Python {m['python']}, gunicorn {m['gunicorn']}, Flask {m['flask']}, {m['wrk']}; "
        f"commit {m['git_commit']}.",
        f"Load average before/after: {' '.join(f'{x:.2f}' for x in m['loadavg_before'])} / "
        f"{' '.join(f'{x:.2f}' for x in m['loadavg_after'])}.",
        f"Command: `{res['command']}`. wrk: {st['wrk_threads']} thread, "
        f"{st['connections']} connections, {st['duration_s']:g} s per run after "
        f"{st['warmup_s']:g} s warm-up, {st['rounds']} rounds "
        "alternating fiboserver, ceiling (and, cached, the Flask floor); medians. "
        "The load average includes the benchmark's own processes; "
        "'other load' below is what the rest of the machine used during the runs.",
        "",
    ]
    rows = targets(res)
    if rows:
        lines += ["## Targets", "", "| target | measured | |", "|---|---|---|"]
        lines += [f"| {t} | {v} | {verdict(ok)} |" for t, v, ok in rows]
        lines.append("")
    for key, title in (
        ("cached", "Cached `n=30`"),
        ("uncached", "Uncached, random n in 0..maxseq, cache off"),
    ):
        r = res.get(key)
        if not r:
            continue
        g = r["gunicorn"]
        lines += [
            f"## {title}",
            "",
            f"gunicorn for all: worker_class {g['worker_class']}, workers {g['workers']}, "
            f"threads {g['threads']}, keepalive {g['keepalive']}. Other load on the machine during "
            f"the runs: at most {r['other_cores_max']:.2f} cores.",
            "",
            "| | req/s | p50 ms | p99 ms | server CPU us/req | errors |",
            "|---|---|---|---|---|---|",
        ]
        for name in ("fiboserver", "flask floor", "ceiling"):
            if name not in r:
                continue
            s = r[name]
            lines.append(
                f"| {name} | {s['rps']:.0f} | {fmt_ms(s['p50_ms'])} | {fmt_ms(s['p99_ms'])} | "
                f"{s['server_cpu_us_per_req']:.0f} | {s['errors']} |"
            )
        lines += [
            f"| **ratio** | **{r['rps_ratio']:.2f}** | | {r['p99_ratio']:.2f} x | | |",
            "",
        ]
        if "flask floor" in r:
            floor, ceil, svc = r["flask floor"], r["ceiling"], r["fiboserver"]
            cpu_key = "server_cpu_us_per_req"
            flask_us = floor[cpu_key] - ceil[cpu_key]
            features_us = svc[cpu_key] - floor[cpu_key]
            lines += [
                "Ratio is fiboserver / ceiling (median of the rounds' ratios). The Flask floor "
                "(bench/flask_floor.py: a plain Flask app, same gunicorn settings, no logging) "
                f"reaches {floor['rps'] / ceil['rps']:.2f} of the ceiling by itself; "
                f"fiboserver reaches {svc['rps'] / floor['rps']:.2f} of the floor. Server CPU per "
                f"request: Flask adds {flask_us:.0f} us to the ceiling's {ceil[cpu_key]:.0f} us, "
                "the service's features (request id, two JSON records, validation, cache) "
                f"another {features_us:.0f} us.",
                "",
            ]
        lines += [
            "Runs measured again because the kernel handed one worker (nearly) every "
            f"connection: {len(r['lopsided_runs']['fiboserver'])} of the service's, "
            f"{len(r['lopsided_runs']['ceiling'])} of the ceiling's (bench/run.py `balanced`).",
            "",
            f"Service `end` log records written: {r['service_end_records']} for "
            f"{r['service_requests']} measured requests (+ warm-up).",
            "",
        ]
    b = res.get("big_n")
    if b:
        lines += [
            "## Big n, cold (first call in a fresh interpreter), compute + serialize",
            "",
            "| n | digits | fibonacci_digits ms | iterative loop + str ms | speed-up |",
            "|---|---|---|---|---|",
        ]
        for n, r in b.items():
            lines.append(
                f"| {int(n):,} | {r['digits']:,} | {r['fibonacci_digits_ms']:.2f} | "
                f"{r['iterative_loop_ms']:.1f} | {r['speedup']:.0f} x |"
            )
        lines.append("")
    s = res.get("start_stop")
    if s:
        lines += [
            "## Start and stop",
            "",
            "| | median s | samples s |",
            "|---|---|---|",
            samples_row("start -> first 200 on /readyz", s["ready_samples"]),
            samples_row("SIGTERM -> exit, idle", s["idle_stop_samples"]),
            samples_row("SIGTERM -> exit, under wrk load", s["loaded_stop_samples"]),
            "",
            f"Exit codes: idle {s['idle_exit_codes']}, under load {s['loaded_exit_codes']}.",
            "",
        ]
    memory = res.get("memory", [])
    if memory:
        lines += [
            "## Memory",
            "",
            "Worker RSS before and after each of three walks over distinct large n; each "
            "walk sends every worker about twice the cache budget in digits. The cache-off "
            "run is the control: what serving such responses grows a worker by without a cache.",
            "",
            "| cache | requests | n | worker | RSS before MiB | after walks 1, 2, 3 MiB "
            "| growth MiB |",
            "|---|---|---|---|---|---|---|",
        ]
        for mm in memory:
            cache = f"{mm['cache_max_bytes'] / 2**20:.0f} MiB" if mm["cache"] else "off"
            for w in mm["workers"]:
                walks = ", ".join(f"{x / 2**20:.1f}" for x in w["rss_after_walks"])
                lines.append(
                    f"| {cache} | {mm['requests']} | "
                    f"{mm['n_range'][0]:,}..{mm['n_range'][1]:,} | {w['pid']} | "
                    f"{w['rss_baseline'] / 2**20:.1f} | {walks} | {w['growth'] / 2**20:.1f} |"
                )
        lines.append("")
    all_notes = [*res.get("notes", []), *notes(res)]
    if all_notes:
        lines += ["## Notes", "", *[f"- {n}" for n in all_notes], ""]
    return "\n".join(lines)


def command_line() -> str:
    """How to reproduce this run: `make bench` runs the module without arguments."""
    if len(sys.argv) == 1:
        return "make bench"
    return " ".join([".venv/bin/python -m bench.run", *sys.argv[1:]])


def main(argv: Sequence[str] | None = None) -> int:
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
        default="cached,uncached,big_n,start_stop,memory",
        help="comma-separated sections to run",
    )
    p.add_argument("--out", default=str(RESULTS), help="directory for latest.json/latest.md")
    p.add_argument("--tag", default="", help="also keep a timestamped copy named with this tag")
    p.add_argument(
        "--render", metavar="JSON", help="only rewrite the Markdown next to a results JSON"
    )
    args = p.parse_args(argv)
    if args.render:
        source = Path(args.render)
        source.with_suffix(".md").write_text(markdown(json.loads(source.read_text())) + "\n")
        return 0
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk (README, Performance)", file=sys.stderr)
        return 2
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    started = dt.datetime.now(dt.UTC)
    with tempfile.TemporaryDirectory(prefix="fiboserver-bench-") as tmp:
        bench = Bench(args, Path(tmp), yaml.safe_load(PROD_CONFIG.read_text()))
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
                "prod_config": str(PROD_CONFIG.relative_to(ROOT)),
                "rss_overhead_allowance": args.rss_overhead_mib * 2**20,
            },
            "notes": [],
        }
        try:
            if "cached" in sections:
                res["cached"] = section_throughput(bench, cached=True)
            if "uncached" in sections:
                res["uncached"] = section_throughput(bench, cached=False)
            if "big_n" in sections:
                res["big_n"] = section_big_n(bench)
            if "start_stop" in sections:
                res["start_stop"] = section_start_stop(bench)
            if "memory" in sections:
                res["memory"] = [section_memory(bench, min(args.cache_max_bytes), cache=False)]
                res["memory"] += [section_memory(bench, b) for b in args.cache_max_bytes]
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
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text_json = json.dumps(res, indent=2) + "\n"
    text_md = markdown(res) + "\n"
    (out / "latest.json").write_text(text_json)
    (out / "latest.md").write_text(text_md)
    if args.tag:
        stamp = finished.strftime("%Y%m%dT%H%M%SZ")
        (out / f"{stamp}-{args.tag}.json").write_text(text_json)
        (out / f"{stamp}-{args.tag}.md").write_text(text_md)
    print(text_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
