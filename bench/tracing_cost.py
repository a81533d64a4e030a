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
so the server's own CPU per request is reported beside the ratio.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.pairs import measure_pair, round_ratio
from bench.servers import SERVICE, Bench
from bench.wrk import Load, WrkSettings
from tests.support.jaeger import JaegerProcess

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
    return result


def targets(res: dict[str, Any]) -> list[tuple[str, str, bool]]:
    t = res.get("tracing")
    if not t:
        return []
    exported = "fiboserver-bench" in t["jaeger_services"]
    return [
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
    return lines
