"""Tracing's CPU per cached request, in one process, through the whole WSGI call.

The PROD app built twice, without tracing in the request path
(`create_app(tracing=False)`) and as deployed, called in turn on the same
requests, each with a new sampled traceparent, logging and metrics as under
gunicorn (bench.hotpath.prod_app_environment). For "exporting", this process
starts a worker's exporter to `endpoint` first and stops it (the flush) inside
the timed span, so the batch thread's encoding and sending are counted. The
figure is the difference of the two apps' CPU time (every thread's) per
request, median of alternating rounds.

Timing the tracing calls alone, as an earlier version of this measure did,
missed two thirds of what the no-endpoint path cost: run between the rest of a
request's work, the same calls take longer than in a tight loop of their own
(docs/tracing.md, "Cost").

    .venv/bin/python -m bench.tracing_in_process ENDPOINT [--requests N] [--rounds R]

prints {"no endpoint": us, "exporting": us} as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from collections.abc import Mapping
from typing import Any

from bench.hotpath import WsgiApp, environ_for, prod_app_environment
from bench.stats import median

NO_ENDPOINT = "no endpoint"
EXPORTING = "exporting"
# OTEL_BSP_MAX_QUEUE_SIZE's default in the OpenTelemetry specification.
SDK_QUEUE_SIZE = 2048


def _cpu_us_per_request(app: WsgiApp, environs: list[dict[str, Any]]) -> float:
    def start_response(*_: object) -> None:
        pass

    t0 = time.process_time()
    for environ in environs:
        body = app(environ, start_response)
        for _chunk in body:
            pass
        getattr(body, "close", lambda: None)()
    return (time.process_time() - t0) / len(environs) * 1e6


def _traced_requests(path: str, query: str, requests: int) -> list[dict[str, Any]]:
    environs = []
    for _ in range(requests):
        environ = environ_for(path, query)
        environ["HTTP_TRACEPARENT"] = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
        environs.append(environ)
    return environs


def measure(endpoint: str, requests: int, rounds: int) -> dict[str, float]:
    from fiboserver.app import create_app
    from fiboserver.tracing import start_worker, stop_worker

    variants: dict[str, Mapping[str, str]] = {
        NO_ENDPOINT: {},
        # A queue for every span (at least the SDK's default, which its batch
        # size must fit in): the loop ends spans faster than a server does, and
        # a dropped span would be one not encoded and sent.
        EXPORTING: {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                    "OTEL_SERVICE_NAME": "fiboserver-bench-in-process",
                    "OTEL_BSP_MAX_QUEUE_SIZE": str(max(requests, SDK_QUEUE_SIZE))},
    }  # fmt: skip
    with prod_app_environment() as (config, _records):
        off, on = create_app(config, tracing=False), create_app(config)
        path, query = f"{config.prefix}/fibo", "n=30"
        costs: dict[str, list[float]] = {label: [] for label in variants}
        for _ in range(rounds):
            for label, env in variants.items():
                environs = _traced_requests(path, query, requests)
                off_us = _cpu_us_per_request(off, [dict(e) for e in environs])
                saved = os.environ.copy()
                os.environ.update(env)
                try:
                    t0 = time.process_time()
                    start_worker(os.environ)
                    _cpu_us_per_request(on, environs)
                    stop_worker()
                    on_us = (time.process_time() - t0) / requests * 1e6
                finally:
                    os.environ.clear()
                    os.environ.update(saved)
                costs[label].append(on_us - off_us)
    return {label: median(values) for label, values in costs.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("endpoint", help="an OTLP/HTTP receiver, e.g. http://127.0.0.1:4318")
    p.add_argument("--requests", type=int, default=4000)
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args()
    print(json.dumps(measure(args.endpoint, args.requests, args.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
