"""The real server's /metrics (README "Metrics", docs/metrics.md): `gunicorn -c gunicorn.conf.py`
with two workers counts a known mix exactly, per worker and in sum, agreeing with
its records bucket by bucket, and counts a 400 the worker wrote itself;
`promtool check metrics` is clean; OpenMetrics on
the metrics port only; metrics_port 0 turns it all off."""

from __future__ import annotations

import collections
import signal
import subprocess
from pathlib import Path

import pytest

from fiboserver.metrics.definitions import REQUEST_BUCKETS
from tests.support.clients import exchange
from tests.support.hosttools import require_tool
from tests.support.metrictools import (
    DURATION,
    MIX,
    request_counts,
    samples,
    server,
    value,
    wait_booted,
    wait_records,
    worker_values,
)

ROUTES = ("/dev/fibo", "/dev/healthz", "/dev/readyz")


def test_a_known_mix_is_counted_exactly_over_two_workers(tmp_path: Path) -> None:
    with server(tmp_path, 2) as srv:
        pids = wait_booted(srv, 2)
        for _ in range(3):  # three rounds: each worker surely serves some
            for method, path, status, _ in MIX:
                assert srv.get(path, method=method)[0] == status, (method, path)
        sent = 3 * len(MIX)
        ends = wait_records(srv, "end", sent)
        scraped = samples(srv.scrape())
        directory = srv.metrics_dir
        per_worker = [worker_values(directory, pid) for pid in pids]

    expected = collections.Counter(
        (labels[0], labels[1], str(status)) for _, _, status, labels in MIX * 3
    )
    assert request_counts(scraped) == expected
    # Summed over both workers: each served part of it, the parts add up.
    parts = [request_counts(w) for w in per_worker]
    assert all(sum(p.values()) > 0 for p in parts), parts
    assert parts[0] + parts[1] == expected
    # The cache counters are the `cache hit` / `cache miss` records, one for one.
    for result in ("hit", "miss"):
        logged = len(srv.find(f"cache {result}"))
        assert logged > 0
        assert value(scraped, "fiboserver_cache_requests_total", result=result) == logged
    assert value(scraped, "fiboserver_fibo_compute_seconds_count") == len(srv.find("cache fibo"))
    # The histogram and the `end` records agree request by request: every bucket
    # holds exactly the requests whose logged duration is within its bound.
    by_labels: dict[tuple[str, str, str], list[float]] = collections.defaultdict(list)
    for r in ends:
        route = r["path"] if r["path"] in ROUTES else "unmatched"
        by_labels[r["method"], route, str(r["status"])].append(r["duration_ms"] / 1000)
    for (method, route, code), durations in by_labels.items():
        labels = {"http_request_method": method, "http_route": route,
                  "http_response_status_code": code}  # fmt: skip
        for bound in REQUEST_BUCKETS:
            le = str(bound)
            want = sum(1 for d in durations if d <= bound)
            assert value(scraped, f"{DURATION}_bucket", **labels, le=le) == want, (labels, le)
        assert value(scraped, f"{DURATION}_sum", **labels) == pytest.approx(sum(durations))
    assert value(scraped, "http_server_active_requests") == 0
    assert value(scraped, "fiboserver_workers") == 2
    assert value(scraped, "fiboserver_draining") == 0
    assert srv.bad_lines == []


def test_a_head_the_parser_refuses_is_counted_like_any_answer(tmp_path: Path) -> None:
    """A head gunicorn's parser refuses never reaches the app: the worker answers
    400 itself (its handle_error). The answer is counted all the same, under the
    method and route of its request line."""
    with server(tmp_path, 1) as srv:
        wait_booted(srv, 1)
        answer, _ = exchange(
            srv.port, b"GET /dev/fibo?n=3 HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n"
        )
        assert answer.startswith(b"HTTP/1.1 400 "), answer
        wait_records(srv, "request refused", 1)
        scraped = samples(srv.scrape())
    assert request_counts(scraped) == {("GET", "/dev/fibo", "400"): 1}


def test_promtool_check_metrics_is_clean(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    with server(tmp_path, 2) as srv:
        wait_booted(srv, 2)
        for method, path, status, _ in MIX:
            assert srv.get(path, method=method)[0] == status
        text = srv.scrape()
    out = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert (out.returncode, out.stdout, out.stderr) == (0, "", ""), out.stdout + out.stderr


def test_openmetrics_when_asked_and_no_metrics_on_the_api_port(tmp_path: Path) -> None:
    with server(tmp_path, 1) as srv:
        wait_booted(srv, 1)
        accept = {"Accept": "application/openmetrics-text; version=1.0.0"}
        status, headers, body = srv.get("/metrics", headers=accept, port=srv.metrics_port)
        assert status == 200
        assert headers["Content-Type"].startswith("application/openmetrics-text")
        assert body.endswith(b"# EOF\n")
        # The API's port has no /metrics, under the prefix or not.
        for path in ("/metrics", "/dev/metrics"):
            assert srv.get(path)[0] == 404
        # And the metrics port serves nothing else.
        assert srv.get("/dev/fibo?n=1", port=srv.metrics_port)[0] == 404


def test_metrics_port_zero_turns_metrics_off(tmp_path: Path) -> None:
    with server(tmp_path, 1, {"metrics_port": 0}) as srv:
        wait_booted(srv, 1)
        assert srv.get("/dev/fibo?n=10")[0] == 200
        assert not srv.find("metrics server start")
        assert not srv.metrics_dir.exists() or not list(srv.metrics_dir.iterdir())
        srv.terminate(signal.SIGTERM)
        assert srv.wait(30) == 0
