"""Tracing against a real Jaeger v2 on 127.0.0.1: the real gunicorn exports spans
over OTLP/HTTP, and the test reads them back through Jaeger's query API.

- a request with a traceparent yields a SERVER span with that trace id and that
  parent, the route, the status and the other HTTP attributes; its log records
  carry the same trace id and the span's own id; a cache miss adds a child span;
- a request without one starts a trace of its own, which its logs name;
- SIGTERM with 100 requests in flight: every one is answered, and every one's
  spans reach Jaeger, though the batch processor is told to wait ten minutes
  before exporting: the graceful stop's flush is what sends them.

Jaeger is built from its pinned Go module on first use (tools/cluster/binaries.py,
minutes; cached after that).
"""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.support.hosttools import IN_CI
from tests.support.jaeger import INTERNAL, SERVER, JaegerProcess
from tests.support.procinfo import HOST
from tests.support.serverproc import ServerProcess
from tools.cluster.binaries import GO, JAEGER

SERVICE = "fiboserver-test"


@pytest.fixture(scope="module")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JaegerProcess]:
    if not JAEGER.cached() and not (os.path.isfile(GO) or os.access(GO, os.X_OK)):
        reason = f"Jaeger {JAEGER.version} is not built and there is no Go toolchain ({GO})"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    with JaegerProcess(tmp_path_factory.mktemp("jaeger")) as process:
        yield process


def exporting_env(jaeger: JaegerProcess, **extra: str) -> dict[str, str]:
    return {
        "WEB_CONCURRENCY": "2",
        "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_endpoint,
        "OTEL_SERVICE_NAME": SERVICE,
        "OTEL_RESOURCE_ATTRIBUTES": "k8s.pod.name=test-pod-0",
        **extra,
    }


def new_ids() -> tuple[str, str]:
    """A fresh (trace id, parent span id) for a traceparent."""
    return secrets.token_hex(16), secrets.token_hex(8)


def traced_get(srv: ServerProcess, path: str, trace_id: str, parent: str) -> tuple[int, Any]:
    status, headers, _ = srv.get(
        path,
        headers={"traceparent": f"00-{trace_id}-{parent}-01", "tracestate": "edge=1,other=2"},
    )
    return status, headers


def the(spans: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    found = [s for s in spans if all(s.get(k) == v for k, v in match.items())]
    assert len(found) == 1, f"{match}: {spans}"
    return found[0]


def records_of(srv: ServerProcess, request_id: str) -> list[Mapping[str, Any]]:
    srv.wait_for("end", where=lambda r: r.get("request_id") == request_id, timeout=10)
    return [r for r in srv.records if r.get("request_id") == request_id]


@pytest.fixture(scope="module")
def server(
    jaeger: JaegerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    # Exported within 50 ms of a span's end, so the tests wait for Jaeger, not a timer.
    env = exporting_env(jaeger, OTEL_BSP_SCHEDULE_DELAY="50")
    with ServerProcess(
        {"env": "DEV", "maxseq": 100000}, tmp_path_factory.mktemp("srv"), env=env
    ) as srv:
        srv.wait_ready("/dev/readyz")
        yield srv


def test_a_traced_cache_miss_is_a_server_span_with_a_child(
    server: ServerProcess, jaeger: JaegerProcess
) -> None:
    trace_id, parent = new_ids()
    status, headers = traced_get(server, "/dev/fibo?n=4321", trace_id, parent)
    assert status == 200
    spans = jaeger.wait_spans(trace_id, 2)
    assert len(spans) == 2, spans
    span = the(spans, kind=SERVER)
    assert span["traceId"] == trace_id
    assert span["parentSpanId"] == parent
    assert span["name"] == "GET /dev/fibo"
    assert span["traceState"] == "edge=1,other=2"
    assert span["attributes"] == {
        "http.request.method": "GET",
        "http.route": "/dev/fibo",
        "http.response.status_code": 200,
        "url.path": "/dev/fibo",
        "url.query": "n=4321",
        "url.scheme": "http",
    }
    assert span.get("status", {}).get("code") in (None, 0)  # unset: no error
    assert span["resource"]["service.name"] == SERVICE
    assert span["resource"]["k8s.pod.name"] == "test-pod-0"
    assert span["resource"]["process.pid"] in server.worker_pids()
    child = the(spans, kind=INTERNAL)
    assert child["name"] == "fibonacci"
    assert child["parentSpanId"] == span["spanId"]
    assert child["attributes"] == {"fibo.n": 4321}
    # Every record of the request names the trace and the server span.
    records = records_of(server, headers["X-Request-ID"])
    assert {"start", "cache miss", "cache fibo", "end"} <= {r["msg"] for r in records}
    assert {(r.get("trace_id"), r.get("span_id")) for r in records} == {(trace_id, span["spanId"])}


def test_a_cached_answer_has_no_computation_span(
    server: ServerProcess, jaeger: JaegerProcess
) -> None:
    """The same n four times over two workers, each with its own cache: each
    worker misses it once at most, so two answers at least come from a cache.
    The request's own records say which."""
    hits = 0
    for _ in range(4):
        trace_id, parent = new_ids()
        status, headers = traced_get(server, "/dev/fibo?n=777", trace_id, parent)
        assert status == 200
        said = {r["msg"] for r in records_of(server, headers["X-Request-ID"])}
        if "cache hit" in said:
            hits += 1
            # A child ends before its parent: it would be in the parent's batch or an earlier one.
            spans = jaeger.wait_spans(trace_id, 1)
            assert [s["kind"] for s in jaeger.wait_spans(trace_id, 2, timeout=1.0)] == [SERVER]
        else:
            assert "cache miss" in said, said
            spans = jaeger.wait_spans(trace_id, 2)
            assert sorted(s["kind"] for s in spans) == [INTERNAL, SERVER]
        assert the(spans, kind=SERVER)["name"] == "GET /dev/fibo"
    assert hits >= 2


def test_an_error_and_an_unknown_path(server: ServerProcess, jaeger: JaegerProcess) -> None:
    bad, unknown = new_ids(), new_ids()
    assert traced_get(server, "/dev/fibo?n=x", *bad)[0] == 400
    assert traced_get(server, "/dev/nope", *unknown)[0] == 404
    (span,) = jaeger.wait_spans(bad[0], 1)
    assert span["attributes"]["http.response.status_code"] == 400
    # A 4xx is the client's error, not the server span's.
    assert span.get("status", {}).get("code") in (None, 0)
    (span,) = jaeger.wait_spans(unknown[0], 1)
    # No route matched: the span is named by the method alone, without http.route.
    assert span["name"] == "GET"
    assert "http.route" not in span["attributes"]
    assert span["attributes"]["url.path"] == "/dev/nope"


def test_a_request_without_a_traceparent_starts_a_trace(
    server: ServerProcess, jaeger: JaegerProcess
) -> None:
    status, headers, _ = server.get("/dev/fibo?n=12")
    assert status == 200
    (end,) = [r for r in records_of(server, headers["X-Request-ID"]) if r["msg"] == "end"]
    spans = jaeger.wait_spans(end["trace_id"], 1)
    span = the(spans, kind=SERVER)
    assert span["spanId"] == end["span_id"]
    assert not span.get("parentSpanId")  # a root span


def test_probes_get_no_span_unless_asked(server: ServerProcess) -> None:
    status, headers, _ = server.get("/dev/healthz")
    assert status == 200
    assert all("trace_id" not in r for r in records_of(server, headers["X-Request-ID"]))


QUEUED = 100


def test_sigterm_with_100_requests_in_flight_loses_no_span(
    jaeger: JaegerProcess, tmp_path: Path
) -> None:
    """The workers are stopped (SIGSTOP) while 100 requests, each with its own
    trace, queue up; SIGTERM reaches the master and is pending in the workers
    before they continue. The batch processor would export after ten minutes:
    every span that reaches Jaeger was sent by the flush of the graceful stop."""
    env = exporting_env(jaeger, OTEL_BSP_SCHEDULE_DELAY="600000")
    config = {"env": "PROD", "maxseq": 100000, "cacheresult": False}
    traces = [new_ids() for _ in range(QUEUED)]
    with ServerProcess(config, tmp_path, env=env) as srv:
        srv.wait_ready("/prod/readyz")
        workers = srv.freeze_workers(2)
        clients = []
        for i, (trace_id, parent) in enumerate(traces):
            sock = socket.create_connection((HOST, srv.port), timeout=30)
            clients.append(sock)
            sock.sendall(
                f"GET /prod/fibo?n={20000 + i} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                f"traceparent: 00-{trace_id}-{parent}-01\r\n\r\n".encode()
            )
        srv.sigterm_with_queue(workers, QUEUED)
        statuses = []
        for sock in clients:
            with sock:
                resp = http.client.HTTPResponse(sock)
                resp.begin()
                resp.read()
                statuses.append(resp.status)
        assert srv.wait(30) == 0, srv.output()
    assert statuses == [200] * QUEUED
    missing = []
    # Exported before the workers exited; Jaeger stores within its 50 ms batch.
    deadline = time.monotonic() + 10
    for trace_id, parent in traces:
        spans = jaeger.wait_spans(trace_id, 2, timeout=max(0.0, deadline - time.monotonic()))
        kinds = sorted(s["kind"] for s in spans)
        if kinds != [INTERNAL, SERVER] or the(spans, kind=SERVER)["parentSpanId"] != parent:
            missing.append((trace_id, kinds))
    assert not missing, f"{len(missing)} of {QUEUED} requests' spans missing: {missing[:5]}"


def test_jaeger_is_the_pinned_release(jaeger: JaegerProcess) -> None:
    """The binary that ran is v1.75.0 (Jaeger v2's module version), from a go.mod
    that requires exactly that and a go.sum that pins its hash."""
    gomod = (JAEGER.moddir / "go.mod").read_text()
    assert re.search(r"^\s*github\.com/jaegertracing/jaeger v1\.75\.0( //.*)?$", gomod, re.M)
    assert "github.com/jaegertracing/jaeger v1.75.0 h1:" in (JAEGER.moddir / "go.sum").read_text()
    out = subprocess.run(
        [str(JAEGER.path("jaeger")), "version"], capture_output=True, text=True, timeout=30
    )
    assert '"gitVersion":"v1.75.0"' in out.stdout, out


def test_the_benchs_in_process_measure_exports_what_it_times(jaeger: JaegerProcess) -> None:
    """bench/tracing_in_process.py: its "exporting" variant really exports (its
    spans reach this Jaeger under the measure's own service name), and it
    reports a figure for both variants."""
    assert "fiboserver-bench-in-process" not in jaeger.services()
    out = subprocess.run(
        [sys.executable, "-m", "bench.tracing_in_process", jaeger.otlp_endpoint,
         "--requests", "20", "--rounds", "1"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    figures = json.loads(out.stdout)
    assert sorted(figures) == ["exporting", "no endpoint"]
    assert all(math.isfinite(us) for us in figures.values())
    assert "fiboserver-bench-in-process" in jaeger.services()
