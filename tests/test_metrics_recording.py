"""What a request, a cache lookup and a computation record, in one process with a
registry of its own (docs/metrics.md), and that nothing imports prometheus_client
before the metrics are built. The real server: tests/test_metrics_served.py."""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Any

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fiboserver.app.access import AccessLog
from fiboserver.app.cache import FiboCache
from fiboserver.metrics.definitions import RequestMetrics
from tests.support.logcapture import JsonCapture
from tests.support.metrictools import DURATION, Recorded, app_with


def test_a_mix_of_requests_is_counted_by_method_route_and_status(
    recorded: Recorded, fibo_logs: JsonCapture
) -> None:
    app = app_with(recorded)
    client = app.test_client()
    sent = [
        ("GET", "/dev/fibo?n=10", 200),
        ("GET", "/dev/fibo?n=10", 200),
        ("HEAD", "/dev/fibo?n=11", 200),
        ("GET", "/dev/fibo?n=x", 400),
        ("POST", "/dev/fibo", 405),
        ("GET", "/dev/nope", 404),
        ("PROPFIND", "/dev/healthz", 405),
        ("GET", "/dev/readyz", 200),
    ]
    for method, path, status in sent:
        assert client.open(path, method=method, buffered=True).status_code == status
    labels = [
        ("GET", "/dev/fibo", "200", 2),
        ("HEAD", "/dev/fibo", "200", 1),
        ("GET", "/dev/fibo", "400", 1),
        ("POST", "/dev/fibo", "405", 1),
        ("GET", "unmatched", "404", 1),
        ("_OTHER", "/dev/healthz", "405", 1),
        ("GET", "/dev/readyz", "200", 1),
    ]
    for method_label_, route, code, count in labels:
        got = recorded.value(
            f"{DURATION}_count",
            http_request_method=method_label_,
            http_route=route,
            http_response_status_code=code,
        )
        assert got == count, (method_label_, route, code)
    total = sum(
        s.value
        for f in text_string_to_metric_families(generate_latest(recorded.registry).decode())
        for s in f.samples
        if s.name == f"{DURATION}_count"
    )
    assert total == len(sent)
    assert recorded.value("http_server_active_requests") == 0
    # The histogram saw exactly the durations the `end` records show.
    ends = fibo_logs.find("end")
    assert len(ends) == len(sent)
    assert recorded.value(f"{DURATION}_sum", http_request_method="GET", http_route="unmatched",
                          http_response_status_code="404") == pytest.approx(
        next(r["duration_ms"] for r in ends if r["status"] == 404) / 1000
    )  # fmt: skip


def test_requests_in_flight_go_up_and_down(recorded: Recorded) -> None:
    app = app_with(recorded)
    inside = threading.Event()
    release = threading.Event()

    def slow() -> str:
        inside.set()
        release.wait(10)
        return "{}"

    app.add_url_rule("/dev/slow", "slow", slow)

    # The rule was added after create_app: the middleware knows only the first ones.
    client = app.test_client()
    t = threading.Thread(target=client.get, args=("/dev/slow",), kwargs={"buffered": True})
    t.start()
    try:
        assert inside.wait(10)
        assert recorded.value("http_server_active_requests") == 1
    finally:
        release.set()
        t.join(10)
    assert recorded.value("http_server_active_requests") == 0


def test_an_exception_out_of_the_app_leaves_nothing_in_flight(recorded: Recorded) -> None:
    def raising_app(environ: Any, start_response: Any) -> Any:
        raise RuntimeError("boom")

    def start_response(*args: Any) -> Any:
        raise AssertionError("the app never answers")

    middleware = AccessLog(raising_app, RequestMetrics(["/dev/fibo"], lambda: recorded.metrics))
    with pytest.raises(RuntimeError):
        middleware({"REQUEST_METHOD": "GET", "PATH_INFO": "/dev/fibo"}, start_response)
    assert recorded.value("http_server_active_requests") == 0
    # No answer of the app's and no `end` record: nothing counted.
    assert (
        recorded.registry.get_sample_value(
            f"{DURATION}_count",
            {
                "http_request_method": "GET",
                "http_route": "/dev/fibo",
                "http_response_status_code": "500",
            },
        )
        is None
    )


def test_cache_lookups_stores_and_evictions(recorded: Recorded, fibo_logs: JsonCapture) -> None:
    # Room for about two small entries: the third store evicts the first.
    app = app_with(recorded, cache_max_bytes=600)
    client = app.test_client()
    for n in (10, 10, 11, 12, 12, 10):
        assert client.get(f"/dev/fibo?n={n}", buffered=True).status_code == 200
    hits, misses = len(fibo_logs.find("cache hit")), len(fibo_logs.find("cache miss"))
    assert (hits, misses) == (2, 4)
    assert recorded.value("fiboserver_cache_requests_total", result="hit") == hits
    assert recorded.value("fiboserver_cache_requests_total", result="miss") == misses
    cache = app.extensions["fibo_cache"]
    assert recorded.value("fiboserver_cache_bytes") == cache.size_bytes > 0
    assert recorded.value("fiboserver_cache_entries") == len(cache) == 2
    assert recorded.value("fiboserver_cache_evictions_total") == 2
    # One computation per miss, none per hit.
    assert recorded.value("fiboserver_fibo_compute_seconds_count") == misses
    assert 0 < recorded.value("fiboserver_fibo_compute_seconds_sum") < 1


def test_one_store_that_evicts_two_entries_counts_two(recorded: Recorded) -> None:
    def charged(n: int, digits: str) -> int:
        probe = FiboCache(max_bytes=1 << 20)
        probe.put(n, digits)
        return probe.size_bytes

    # Room for F(10) and F(11) exactly: F(500) (105 digits) then needs both gone.
    budget = charged(10, "55") + charged(11, "89")
    app = app_with(recorded, cache_max_bytes=budget)
    client = app.test_client()
    for n in (10, 11, 500):
        assert client.get(f"/dev/fibo?n={n}", buffered=True).status_code == 200
    assert len(app.extensions["fibo_cache"]) == 1
    assert recorded.value("fiboserver_cache_evictions_total") == 2


def test_computations_are_timed_without_a_cache(recorded: Recorded) -> None:
    app = app_with(recorded, cacheresult=False)
    client = app.test_client()
    for _ in range(3):
        client.get("/dev/fibo?n=500", buffered=True)
    assert recorded.value("fiboserver_fibo_compute_seconds_count") == 3
    assert recorded.value("fiboserver_cache_requests_total", result="miss") == 0


def test_metrics_port_zero_records_nothing(recorded: Recorded) -> None:
    app = app_with(recorded, metrics_port=0)
    app.test_client().get("/dev/fibo?n=10", buffered=True)
    assert "fiboserver_metrics" not in app.extensions
    assert recorded.value(f"{DURATION}_count", http_request_method="GET",
                          http_route="/dev/fibo", http_response_status_code="200") == 0  # fmt: skip
    assert recorded.value("fiboserver_cache_requests_total", result="miss") == 0


def test_prometheus_client_is_imported_only_when_metrics_are_built() -> None:
    """The gunicorn master loads the app before PROMETHEUS_MULTIPROC_DIR is ready:
    nothing on the way may import prometheus_client (fiboserver.metrics.definitions)."""
    code = (
        "import sys, fiboserver.app, fiboserver.server.hooks, fiboserver.server.startup\n"
        "from fiboserver.app import create_app\n"
        "from fiboserver.config import parse_config\n"
        "create_app(parse_config({'env': 'DEV', 'maxseq': 10}, 't'))\n"
        "print('prometheus_client' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False", out.stderr
