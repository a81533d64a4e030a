"""Metrics in one process (SPEC section 11): labels, what each request, lookup and
computation records, the /metrics listener, and the multiprocess directory's
files. The real gunicorn is in tests/test_metrics_process.py."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import JsonCapture
from procinfo import HOST, free_port
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

from fiboserver import multiproc
from fiboserver.access import AccessLog
from fiboserver.app import create_app
from fiboserver.config import parse_config
from fiboserver.exposition import MetricsServer
from fiboserver.metrics import (
    COMPUTE_BUCKETS,
    KNOWN_METHODS,
    REQUEST_BUCKETS,
    Metrics,
    RequestMetrics,
    method_label,
    static_rules,
)
from fiboserver.servermetrics import exit_reason

DURATION = "http_server_request_duration_seconds"


class Recorded:
    """A private registry and the Metrics recording into it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)

    def value(self, name: str, **labels: str) -> float:
        v = self.registry.get_sample_value(name, labels)
        return 0.0 if v is None else v


@pytest.fixture
def recorded() -> Recorded:
    return Recorded()


def app_with(recorded: Recorded, **config: Any) -> Any:
    return create_app(
        parse_config({"env": "DEV", "maxseq": 1000, **config}, "t.yaml"), lambda: recorded.metrics
    )


# -- labels ----------------------------------------------------------------------


def test_methods_outside_the_known_set_are_other() -> None:
    for method in KNOWN_METHODS:
        assert method_label(method) == method
    for method in ("PROPFIND", "FOO", "get", "", "GET " * 40):
        assert method_label(method) == "_OTHER"


PATHS = [
    "/dev/fibo",
    "/dev/healthz",
    "/dev/readyz",
    "/dev/fibo/",
    "/dev//fibo",
    "//dev/fibo",
    "/DEV/fibo",
    "/dev/fibo%20",
    "/prod/fibo",
    "/",
    "/metrics",
    "/dev/nope",
    "/dev/fibo/x",
]


@pytest.mark.parametrize("path", PATHS)
def test_route_label_is_the_rule_flask_matches(recorded: Recorded, path: str) -> None:
    """The label looked up from the path equals Werkzeug's own match for GET, and is
    `unmatched` wherever Werkzeug finds no rule (404, redirect)."""
    app = app_with(recorded)
    requests = RequestMetrics(static_rules(app.url_map), lambda: recorded.metrics)
    adapter = app.url_map.bind("localhost")
    try:
        rule, _ = adapter.match("/" + path.lstrip("/"), method="GET", return_rule=True)
        expected = rule.rule
    except (NotFound, RequestRedirect, MethodNotAllowed):
        expected = "unmatched"
    assert requests.route_label("/" + path.lstrip("/")) == expected


def test_rules_with_arguments_are_refused(recorded: Recorded) -> None:
    app = app_with(recorded)
    app.add_url_rule("/dev/fibo/<int:n>", "by_path", lambda n: "")
    with pytest.raises(ValueError, match="has arguments"):
        static_rules(app.url_map)


def test_buckets_follow_the_spec() -> None:
    for buckets in (REQUEST_BUCKETS, COMPUTE_BUCKETS):
        assert list(buckets) == sorted(set(buckets))
        assert len(buckets) + 1 <= 16  # with +Inf
    assert {0.0005, 0.001} <= set(REQUEST_BUCKETS)
    assert REQUEST_BUCKETS[-1] == 10.0
    assert 0.1 in REQUEST_BUCKETS  # the latency SLO's threshold (k8s/monitoring)


# -- what a request, a lookup and a computation record -----------------------------


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
    nothing on the way may import prometheus_client (fiboserver.metrics)."""
    code = (
        "import sys, fiboserver.app, fiboserver.hooks, fiboserver.startup\n"
        "from fiboserver.app import create_app\n"
        "from fiboserver.config import parse_config\n"
        "create_app(parse_config({'env': 'DEV', 'maxseq': 10}, 't'))\n"
        "print('prometheus_client' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.parametrize(
    ("aborted", "by_itself", "reason"),
    [(False, True, "exited"), (False, False, "killed"), (True, True, "timeout"),
     (True, False, "timeout")],
)  # fmt: skip
def test_exit_reason(aborted: bool, by_itself: bool, reason: str) -> None:
    assert exit_reason(aborted, by_itself) == reason


# -- the /metrics listener ---------------------------------------------------------


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
    for path in ("/", "/metrics/", "/dev/metrics", "/favicon.ico"):
        status, headers, body = fetch(listener, path)
        assert status == 404, path
        assert headers["Content-Type"] == "application/json"
        assert json.loads(body) == {"error": "not found"}


def test_a_taken_port_is_an_error(listener: MetricsServer, recorded: Recorded) -> None:
    with pytest.raises(OSError):
        MetricsServer(listener.port, recorded.registry).start()


# -- the multiprocess directory ------------------------------------------------------


def write_db(path: Path, values: dict[tuple[str, str, tuple[tuple[str, str], ...]], float]) -> None:
    """A file as prometheus_client writes it: (metric, sample, labels) -> value."""
    out = MmapedDict(str(path))  # type: ignore[no-untyped-call]
    try:
        for (metric, sample, labels), value in values.items():
            key = mmap_key(metric, sample, [k for k, _ in labels], [v for _, v in labels], "help")
            out.write_value(key, value, 0.0)  # type: ignore[no-untyped-call]
    finally:
        out.close()  # type: ignore[no-untyped-call]


def scrape_dir(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(multiproc.Collector(str(path)))
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def worker_files(directory: Path, pid: int, scale: float) -> None:
    write_db(
        directory / f"counter_{pid}.db",
        {("c", "c_total", (("r", "hit"),)): 2 * scale, ("c", "c_total", (("r", "miss"),)): scale},
    )
    write_db(
        directory / f"histogram_{pid}.db",
        {
            ("h", "h_sum", ()): 0.5 * scale,
            ("h", "h_bucket", (("le", "0.1"),)): scale,
            ("h", "h_bucket", (("le", "+Inf"),)): 2 * scale,
        },
    )
    write_db(directory / f"gauge_livesum_{pid}.db", {("g", "g", ()): scale})


def test_archiving_dead_workers_keeps_every_count(tmp_path: Path) -> None:
    for pid, scale in ((101, 1), (102, 10), (103, 100)):
        worker_files(tmp_path, pid, scale)
    before = scrape_dir(tmp_path)
    assert before[("c_total", (("r", "hit"),))] == 222
    assert before[("h_count", ())] == 333
    multiproc.worker_died(str(tmp_path), 101)
    multiproc.worker_died(str(tmp_path), 102)
    after = scrape_dir(tmp_path)
    # Counters and histograms unchanged; the dead workers' gauges gone.
    assert {k: v for k, v in after.items() if k[0] != "g"} == {
        k: v for k, v in before.items() if k[0] != "g"
    }
    assert after[("g", ())] == 100
    names = sorted(p.name for p in tmp_path.glob("*.db"))
    assert names == [
        "counter_103.db",
        "counter_archive.db",
        "gauge_livesum_103.db",
        "histogram_103.db",
        "histogram_archive.db",
    ]


def test_prepare_empties_locks_and_refuses_a_second_server(tmp_path: Path) -> None:
    directory = tmp_path / "mp"
    directory.mkdir()
    worker_files(directory, 7, 1)
    (directory / "counter_archive.db").write_bytes(b"")
    (directory / "keep.txt").write_text("not ours")
    environ = {multiproc.ENV: str(directory)}
    first = multiproc.prepare(environ, upgrading=False)
    try:
        assert sorted(p.name for p in directory.iterdir()) == ["keep.txt"]
        # A second server pointed at it refuses, and leaves the files alone.
        worker_files(directory, 8, 1)
        with pytest.raises(multiproc.MultiprocDirError, match="in use"):
            multiproc.prepare(environ, upgrading=False)
        # A master started by USR2 shares it as it is.
        shared = multiproc.prepare(environ, upgrading=True)
        assert shared.lock_fd is None and (directory / "counter_8.db").exists()
    finally:
        multiproc.close(first)
    # Released at exit: the next server may take it.
    multiproc.close(multiproc.prepare(environ, upgrading=False))
    assert directory.is_dir(), "a directory we were given is never removed"


def test_prepare_makes_a_private_directory_when_none_is_set() -> None:
    environ: dict[str, str] = {multiproc.ENV: ""}
    directory = multiproc.prepare(environ, upgrading=False)
    try:
        assert directory.private and environ[multiproc.ENV] == directory.path
        assert os.path.isdir(directory.path)
        assert directory.path.startswith("/dev/shm/") or not os.access("/dev/shm", os.W_OK)
    finally:
        multiproc.close(directory)
    assert not os.path.exists(directory.path)


def test_prepare_refuses_a_directory_it_cannot_write(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("")
    with pytest.raises(multiproc.MultiprocDirError, match="cannot create"):
        multiproc.prepare({multiproc.ENV: str(target / "sub")}, upgrading=False)
