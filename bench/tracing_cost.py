"""What tracing costs on the cached path: three servers of the same tree in the same rounds.

- "tracing off": the app built with `create_app(tracing=False)`, no tracing in
  the request path at all (the baseline);
- "no endpoint": the service as deployed without OTEL_EXPORTER_OTLP_ENDPOINT;
- "exporting": OTEL_EXPORTER_OTLP_ENDPOINT names a local Jaeger v2 (memory
  storage, tests/support/jaeger.py), every request sampled and exported.

Every request carries a fresh sampled W3C traceparent (bench/wrk/traceparent.lua),
as from a traced edge: the worst case for "no endpoint", which then parses it and
writes its ids into each record. Budgets (README "Tracing"): at most 3 % less
cached throughput without an endpoint, at most 10 % exporting. Jaeger runs on the
same two cores: its share of the machine is part of what "exporting" costs here,
so the server's own CPU per request is reported beside the ratio, and so is
tracing's own CPU per request measured in one process without HTTP (the whole
WSGI call with and without tracing, the batch thread's encoding and sending to
the same Jaeger included: bench/tracing_in_process.py), a figure that other
load on the machine moves far less than the throughput ratio.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.pairs import measure_pair, round_ratio
from bench.servers import SERVICE, Bench
from bench.wrk import Load, WrkSettings
from tests.support.jaeger import JaegerProcess
from tests.support.repo import REPO_ROOT

TRACEPARENT_LUA = "bench/wrk/traceparent.lua"
TRACING_OFF = replace(SERVICE, label="tracing off", app="fiboserver.app:create_app(tracing=False)")
NO_ENDPOINT = replace(SERVICE, label="no endpoint")
EXPORTING_LABEL = "exporting"
# At least this share of "tracing off"'s cached throughput.
NO_ENDPOINT_BUDGET = 0.97
EXPORTING_BUDGET = 0.90


def traced_load(prefix: str, seed: int, n: int = 30) -> Load:
    """The cached request, each with a new trace (seeded per wrk thread)."""
    return Load(f"{prefix}/fibo?n={n}", TRACEPARENT_LUA, (str(seed),))


def in_process_costs(endpoint: str) -> dict[str, float]:
    """{variant: tracing's CPU us per request}, measured in a process of its own
    (bench/tracing_in_process.py: it sets logging up as a worker's)."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.tracing_in_process", endpoint],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    costs: dict[str, float] = json.loads(out.stdout)
    return costs


def section_tracing(bench: Bench, ws: WrkSettings, seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fiboserver-bench-jaeger-") as tmp:
        jaeger = JaegerProcess(Path(tmp)).start()
        try:
            exporting = replace(
                SERVICE,
                label=EXPORTING_LABEL,
                env={
                    "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_endpoint,
                    "OTEL_SERVICE_NAME": "fiboserver-bench",
                },
            )
            result, _ = measure_pair(
                bench,
                "tracing",
                NO_ENDPOINT,
                TRACING_OFF,
                traced_load(bench.prefix, seed),
                ws,
                others=[exporting],
                same_responses=[f"{bench.prefix}/fibo?n={n}" for n in (0, 30, 1000)],
            )
            in_process = in_process_costs(jaeger.otlp_endpoint)
            # Proof that "exporting" exported: Jaeger knows the service.
            services = jaeger.services()
        finally:
            jaeger.stop()
    rounds = result["rounds"]
    key = "server_cpu_us_per_req"
    off, none, exp = (result[v][key] for v in (TRACING_OFF.label, NO_ENDPOINT.label,
                                                EXPORTING_LABEL))  # fmt: skip
    result["no_endpoint_ratio"] = result["rps_ratio"]
    result["exporting_ratio"] = round_ratio(rounds, EXPORTING_LABEL, TRACING_OFF.label)
    result["no_endpoint_us_per_req"] = none - off
    result["exporting_us_per_req"] = exp - off
    result["jaeger_services"] = services
    result["in_process_us_per_req"] = in_process
    return result


def targets(res: dict[str, Any]) -> list[tuple[str, str, bool]]:
    t = res.get("tracing")
    if not t:
        return []
    exported = "fiboserver-bench" in t["jaeger_services"]
    rows = []
    own = t.get("in_process_us_per_req")
    if own:
        # The same budgets as shares of a cached request's CPU (the "tracing off"
        # server's): the figure that other load on the machine hardly moves.
        off = t[TRACING_OFF.label]["server_cpu_us_per_req"]
        for label, budget in ((NO_ENDPOINT.label, NO_ENDPOINT_BUDGET),
                              (EXPORTING_LABEL, EXPORTING_BUDGET)):  # fmt: skip
            share = own[label] / off
            rows.append((
                f"tracing's own CPU, {label}, <= {1 - budget:.0%} of a cached request's",
                f"{share:.1%} ({own[label]:.1f} of {off:.0f} us)",
                share <= 1 - budget,
            ))  # fmt: skip
    return [
        *rows,
        (
            f"cached throughput, tracing without endpoint >= {NO_ENDPOINT_BUDGET} x off",
            f"{t['no_endpoint_ratio']:.3f} ({t['no_endpoint_us_per_req']:+.1f} us/req)",
            t["no_endpoint_ratio"] >= NO_ENDPOINT_BUDGET,
        ),
        (
            f"cached throughput, exporting every request >= {EXPORTING_BUDGET} x off",
            f"{t['exporting_ratio']:.3f} ({t['exporting_us_per_req']:+.1f} us/req)"
            + ("" if exported else " (nothing reached Jaeger)"),
            t["exporting_ratio"] >= EXPORTING_BUDGET and exported,
        ),
    ]


def markdown(res: dict[str, Any]) -> list[str]:
    t = res.get("tracing")
    if not t:
        return []
    lines = [
        "## Tracing's cost, cached `n=30` with a traceparent on every request",
        "",
        "The same tree three ways in the same rounds: the app without tracing in the "
        "request path, the service without an endpoint, and the service exporting every "
        "request to a local Jaeger v2 (on the same cores). bench/tracing_cost.py.",
        "",
        "| server | req/s | p99 ms | server CPU us/req |",
        "|---|---|---|---|",
    ]
    for label in (TRACING_OFF.label, NO_ENDPOINT.label, EXPORTING_LABEL):
        s = t[label]
        lines.append(
            f"| {label} | {s['rps']:.0f} | {s['p99_ms']:.2f} | {s['server_cpu_us_per_req']:.1f} |"
        )
    lines += [
        "",
        f"No endpoint: {t['no_endpoint_ratio']:.3f} of off; exporting: "
        f"{t['exporting_ratio']:.3f} of off (medians of the per-round ratios). "
        f"Services in Jaeger afterwards: {', '.join(t['jaeger_services']) or 'none'}.",
        "",
    ]
    own = t.get("in_process_us_per_req")
    if own:
        off = t[TRACING_OFF.label]["server_cpu_us_per_req"]
        lines += [
            "Tracing's own CPU per request, in-process (the whole WSGI call with and "
            "without tracing, no HTTP; batch thread included): "
            + "; ".join(f"{label} {us:.1f} us ({us / off:.1%} of tracing off's "
                        f"{off:.0f} us a request)" for label, us in own.items())
            + ".",
            "",
        ]  # fmt: skip
    return lines
    return lines
