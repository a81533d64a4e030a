"""The /metrics listener (fiboserver.metrics.exposition.MetricsServer) on a private
registry: Prometheus text, OpenMetrics and gzip when asked, HEAD, 404 elsewhere,
an error for a port already taken, or (as a master started by USR2 needs)
listening once it is free, a scrape that fails logged as one record, and the
port closed once stopped."""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

from fiboserver.metrics.exposition import MetricsServer
from tests.support.logcapture import JsonCapture
from tests.support.metrictools import Recorded
from tests.support.procinfo import HOST, free_port


@pytest.fixture
def listener(recorded: Recorded) -> Iterator[MetricsServer]:
    recorded.metrics.cache_hits.inc(3)
    server = MetricsServer(free_port(), recorded.registry)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def fetch(
    server: MetricsServer, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, http.client.HTTPMessage, bytes]:
    conn = http.client.HTTPConnection(HOST, server.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def test_metrics_in_prometheus_text(listener: MetricsServer) -> None:
    status, headers, body = fetch(listener, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert 'fiboserver_cache_requests_total{result="hit"} 3.0' in body.decode()


def test_openmetrics_when_asked(listener: MetricsServer) -> None:
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    status, headers, body = fetch(listener, "/metrics", headers={"Accept": accept})
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.decode().endswith("# EOF\n")


def test_gzip_when_asked(listener: MetricsServer) -> None:
    status, headers, body = fetch(listener, "/metrics", headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert b"fiboserver_cache_requests_total" in gzip.decompress(body)


def test_head_and_other_paths(listener: MetricsServer) -> None:
    status, headers, body = fetch(listener, "/metrics", method="HEAD")
    assert (status, body) == (200, b"") and int(headers["Content-Length"]) > 0
    # On the wire: the head and nothing after it (a client reads no body for HEAD).
    with socket.create_connection((HOST, listener.port), timeout=10) as sock:
        sock.sendall(b"HEAD /metrics HTTP/1.0\r\n\r\n")
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
    assert answer.startswith(b"HTTP/1.0 200") and answer.endswith(b"\r\n\r\n")
    # A scrape config's `params` arrive as a query string; the path alone decides.
    assert fetch(listener, "/metrics?module=fibo")[0] == 200
    for path in ("/", "/metrics/", "/dev/metrics", "/favicon.ico", "/metricsx?a=b"):
        status, headers, body = fetch(listener, path, headers={"Accept-Encoding": "gzip"})
        assert status == 404, path
        assert headers["Content-Type"] == "application/json"
        assert "Content-Encoding" not in headers  # the 404 body is sent as it is
        assert json.loads(body) == {"error": "not found"}


def test_a_taken_port_is_an_error(listener: MetricsServer, recorded: Recorded) -> None:
    with pytest.raises(OSError):
        MetricsServer(listener.port, recorded.registry).start()


class _Failing(Collector):
    def collect(self) -> Iterator[object]:  # type: ignore[override]
        raise RuntimeError("collector broke")


def test_a_failed_scrape_is_one_record_and_the_listener_serves_on(
    fibo_logs: JsonCapture,
) -> None:
    registry = CollectorRegistry()
    registry.register(_Failing())
    server = MetricsServer(free_port(), registry)
    server.start()
    try:
        with pytest.raises(http.client.RemoteDisconnected):
            fetch(server, "/metrics")
        assert fetch(server, "/nothing-here")[0] == 404
    finally:
        server.stop()
    (record,) = fibo_logs.find("metrics request failed")
    assert record["level"] == "WARNING" and record["client"].startswith(f"{HOST}:")
    assert "RuntimeError: collector broke" in record["exc_info"]


def test_stop_closes_the_port_and_an_unstarted_listener_stops_too(recorded: Recorded) -> None:
    MetricsServer(free_port(), recorded.registry).stop()
    server = MetricsServer(free_port(), recorded.registry)
    server.start()
    assert fetch(server, "/metrics")[0] == 200
    server.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((HOST, server.port), timeout=5).close()


def test_a_taken_port_is_waited_for_said_once_and_taken_when_free(
    recorded: Recorded, fibo_logs: JsonCapture
) -> None:
    holder = socket.create_server(("0.0.0.0", 0))  # the old master's listener
    server = MetricsServer(holder.getsockname()[1], recorded.registry)
    try:
        server.start_when_free()
        (waiting,) = [t for t in threading.enumerate() if t.name == "metrics-bind"]
        assert waiting.daemon  # never holds the process's exit
        time.sleep(2.5)  # three tries, one second apart
        (record,) = fibo_logs.find("metrics port in use, waiting for it")
        assert record["addr"] == f"http://0.0.0.0:{server.port}"
        assert "in use" in record["errmsg"]
        holder.close()
        waiting.join(10)
        assert fetch(server, "/metrics")[0] == 200
    finally:
        holder.close()
        server.stop()
