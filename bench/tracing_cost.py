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
tracing's own CPU per request measured in this process without HTTP (the
request tracing of fiboserver.tracing alone, the batch thread's encoding and
sending to the same Jaeger included), a figure that other load on the machine
moves far less than the throughput ratio.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.pairs import measure_pair, round_ratio
from bench.servers import SERVICE, Bench
from bench.stats import median
from bench.wrk import Load, WrkSettings
from fiboserver.tracing import RequestTracing, start_worker, stop_worker
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


# Requests per in-process measurement, and alternating rounds of the two variants.
IN_PROCESS_REQUESTS = 20000
IN_PROCESS_ROUNDS = 3


def in_process_us_per_request(env: Mapping[str, str], requests: int) -> float:
    """This process's CPU time (every thread's) per request for `requests` cached
    requests' tracing, each with a new sampled traceparent, from the first one
    to the flush at the worker's stop: what fiboserver.tracing adds to a request."""
    environs = [
        {"HTTP_TRACEPARENT": f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01",
         "wsgi.url_scheme": "http", "QUERY_STRING": "n=30"}
        for _ in range(requests)
    ]  # fmt: skip
    tracing = RequestTracing(["/prod/fibo"])
    # The SDK's exporter reads its variables from the process's environment.
    saved = os.environ.copy()
    os.environ.update(env)
    try:
        t0 = time.process_time()
        start_worker(os.environ)
        for environ in environs:
            trace = tracing.begin(environ, "GET", "/prod/fibo")
            if trace is not None:
                trace.end(200)
        stop_worker()
        return (time.process_time() - t0) / requests * 1e6
    finally:
        os.environ.clear()
        os.environ.update(saved)


def in_process_costs(endpoint: str, requests: int = IN_PROCESS_REQUESTS) -> dict[str, float]:
    """{variant: median us per request} of alternating rounds."""
    variants = {
        NO_ENDPOINT.label: {},
        EXPORTING_LABEL: {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                          "OTEL_SERVICE_NAME": "fiboserver-bench-in-process",
                          # The loop ends spans far faster than any server does:
                          # a queue for all of them, so that none is dropped
                          # (and so not encoded and sent).
                          "OTEL_BSP_MAX_QUEUE_SIZE": str(requests)},
    }  # fmt: skip
    rounds: dict[str, list[float]] = {label: [] for label in variants}
    for _ in range(IN_PROCESS_ROUNDS):
        for label, env in variants.items():
            rounds[label].append(in_process_us_per_request(env, requests))
    return {label: median(values) for label, values in rounds.items()}


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
            "Tracing's own CPU per request, in-process (no HTTP; batch thread included): "
            + "; ".join(f"{label} {us:.1f} us ({us / off:.1%} of tracing off's "
                        f"{off:.0f} us a request)" for label, us in own.items())
            + ".",
            "",
        ]  # fmt: skip
    return lines
    return lines
