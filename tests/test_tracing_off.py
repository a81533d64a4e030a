"""Tracing without an exporter: the trace context is honoured, nothing connects.

With OTEL_EXPORTER_OTLP_ENDPOINT unset, or OTEL_SDK_DISABLED=true beside an
endpoint, the real gunicorn still logs an incoming traceparent's ids on every
record of its request, and no OTLP request reaches a receiver listening where
one would go: the endpoint itself, or the SDK's default (127.0.0.1:4318) when
none is set. The control run, with the endpoint and the SDK enabled, shows that
the same receiver does see the export.
"""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fiboserver.tracing import settings_from_env
from tests.support.hosttools import IN_CI
from tests.support.procinfo import HOST, free_port, wait_until
from tests.support.serverproc import ServerProcess

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
# Where the OTLP/HTTP exporter sends spans when no endpoint is configured.
SDK_DEFAULT_PORT = 4318


class Receiver:
    """A TCP listener on 127.0.0.1 that answers any HTTP request 200 and counts
    every connection made to it (an exporter would connect before it posts)."""

    def __init__(self, port: int) -> None:
        self.connections = 0
        self.paths: list[str] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def setup(self) -> None:
                receiver.connections += 1
                super().setup()

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.paths.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((HOST, port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(free_port())
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def default_port_receiver() -> Iterator[Receiver]:
    try:
        r = Receiver(SDK_DEFAULT_PORT)
    except OSError as exc:
        reason = f"127.0.0.1:{SDK_DEFAULT_PORT} is taken ({exc}): is `make traces` running?"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield r
    finally:
        r.close()


def serve_traced_requests(tmp_path: Path, env: dict[str, str]) -> ServerProcess:
    """A DEV server that answers a traced miss and a traced hit, then stops."""
    # Spans, were there any, would leave within 50 ms (and surely on the stop).
    env = {"WEB_CONCURRENCY": "1", "OTEL_BSP_SCHEDULE_DELAY": "50", **env}
    with ServerProcess({"env": "DEV", "maxseq": 1000}, tmp_path, env=env) as srv:
        srv.wait_ready("/dev/readyz")
        for _ in range(2):
            status, _, _ = srv.get(
                "/dev/fibo?n=99", headers={"traceparent": TRACEPARENT, "tracestate": "a=b"}
            )
            assert status == 200
        srv.terminate()
        assert srv.wait(30) == 0, srv.output()
    return srv


def assert_records_carry_the_callers_ids(srv: ServerProcess) -> None:
    traced = [r for r in srv.records if r.get("trace_id") == TRACE_ID]
    # Per request, in order (across the two, not: the first's `end` is written after
    # its answer is sent, so the second's `start` may come first).
    # Miss: start, cache miss, cache fibo, end; hit: start, cache hit, end.
    by_request: dict[str, list[str]] = {}
    for r in traced:
        by_request.setdefault(r["request_id"], []).append(r["msg"])
    assert sorted(by_request.values()) == [
        ["start", "cache hit", "end"], ["start", "cache miss", "cache fibo", "end"],
    ]  # fmt: skip
    # No span of its own: the ids are the caller's.
    assert {r["span_id"] for r in traced} == {PARENT_ID}
    # Records outside the requests carry no trace ids.
    assert all("trace_id" not in r for r in srv.records if "request_id" not in r)


def test_no_endpoint_logs_the_ids_and_connects_nowhere(
    tmp_path: Path, default_port_receiver: Receiver
) -> None:
    srv = serve_traced_requests(
        tmp_path, {"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}
    )
    assert_records_carry_the_callers_ids(srv)
    (record,) = srv.find("tracing not exporting")
    assert record["reason"] == "no OTEL_EXPORTER_OTLP_ENDPOINT"
    assert default_port_receiver.connections == 0


def test_sdk_disabled_logs_the_ids_and_connects_nowhere(tmp_path: Path, receiver: Receiver) -> None:
    endpoint = f"http://{HOST}:{receiver.port}"
    srv = serve_traced_requests(
        tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_SDK_DISABLED": "true"}
    )
    assert_records_carry_the_callers_ids(srv)
    (record,) = srv.find("tracing not exporting")
    assert record["reason"] == "OTEL_SDK_DISABLED=true"
    assert receiver.connections == 0


def test_control_the_receiver_sees_an_exporter(tmp_path: Path, receiver: Receiver) -> None:
    endpoint = f"http://{HOST}:{receiver.port}"
    srv = serve_traced_requests(tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint})
    (record,) = srv.find("tracing exporting")
    assert record["endpoint"] == endpoint
    wait_until(lambda: receiver.paths != [], 5, "an OTLP export")
    assert set(receiver.paths) == {"/v1/traces"}
    # Exporting, the records name the server span, a child of the caller's.
    traced = [r for r in srv.records if r.get("trace_id") == TRACE_ID]
    assert len(traced) == 7 and PARENT_ID not in {r["span_id"] for r in traced}


@pytest.mark.parametrize(
    ("env", "endpoint", "why_not"),
    [
        ({}, None, "no OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": " "}, None, "no OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, "http://c:4318", ""),
        # The traces-specific variable wins, and is enough alone.
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
          "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:4318/v1/traces"},
         "http://t:4318/v1/traces", ""),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:4318/v1/traces"},
         "http://t:4318/v1/traces", ""),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "TRUE"},
         None, "OTEL_SDK_DISABLED=true"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "false"},
         "http://c:4318", ""),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"},
         None, "OTEL_TRACES_EXPORTER=none (only otlp is built in)"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
         None, "OTLP protocol grpc (only http/protobuf is built in)"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
          "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "http://c:4318", ""),
    ],
)  # fmt: skip
def test_which_variables_export(env: dict[str, str], endpoint: str | None, why_not: str) -> None:
    settings = settings_from_env(env)
    assert (settings.endpoint, settings.why_not, settings.exporting) == (
        endpoint, why_not, endpoint is not None,
    )  # fmt: skip


def test_receiver_counts_a_bare_connection(receiver: Receiver) -> None:
    """The receiver would notice an exporter that connects and gives up."""
    with socket.create_connection((HOST, receiver.port)):
        pass
    wait_until(lambda: receiver.connections == 1, 5, "the connection counted")
