"""Metric labels stay bounded (docs/metrics.md, "Bounded series"): methods outside the known set are
`_OTHER`, the route is the rule Flask matches or `unmatched`, the buckets are the
spec's; and on the real server, 10,000 random requests add no series."""

from __future__ import annotations

import http.client
import random
import string
import threading
import time
from pathlib import Path

import pytest
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

from fiboserver.metrics.definitions import (
    COMPUTE_BUCKETS,
    KNOWN_METHODS,
    REQUEST_BUCKETS,
    RequestMetrics,
    method_label,
    static_rules,
)
from tests.support.metrictools import (
    DURATION,
    Recorded,
    app_with,
    request_counts,
    samples,
    server,
    wait_booted,
    wait_records,
)
from tests.support.procinfo import HOST

# -- the rules, in one process ---------------------------------------------------


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
    # The top of the 0..2 s fault delay: its p99 is read inside 1..2 s
    # (test_faults_prometheus.py measures it).
    assert {1.0, 2.0} <= set(REQUEST_BUCKETS) and 1.5 not in REQUEST_BUCKETS


# -- whatever clients send to the real server, the series stay bounded -----------------


def random_request(rnd: random.Random) -> tuple[str, str]:
    method = rnd.choice(
        [*KNOWN_METHODS, *KNOWN_METHODS, "PROPFIND", "BREW", "".join(rnd.choices("ABCXYZ", k=5))]
    )
    junk = "".join(
        rnd.choices(string.ascii_letters + string.digits + "-._~%/", k=rnd.randrange(30))
    )
    prefix = rnd.choice(["/dev", "/prod", "", "/dev/fibo", "//dev"])
    path = rnd.choice(
        [f"{prefix}/{junk}", "/dev/fibo", "/dev/healthz", "/dev/readyz", "/dev/fibo/"]
    )
    n = rnd.choice([str(rnd.randrange(1000)), str(-rnd.randrange(9)), "9" * rnd.randrange(1, 30),
                    junk, ""])  # fmt: skip
    return method, path + rnd.choice([f"?n={n}", f"?n={n}&x={junk}", "", f"?{junk}"])


def send(port: int, requests: list[tuple[str, str]]) -> None:
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    for method, path in requests:
        try:
            conn.request(method, path)
            conn.getresponse().read()
        except (http.client.HTTPException, OSError):
            conn.close()  # the server closed it (a request it refused): a new one
            conn = http.client.HTTPConnection(HOST, port, timeout=30)
    conn.close()


def test_random_requests_leave_the_series_count_unchanged(tmp_path: Path) -> None:
    """Every (method class, route, outcome) is visited once first: that is the bound.
    Then 10,000 requests with random paths, methods and n add no series."""
    with server(tmp_path, 2) as srv:
        wait_booted(srv, 2)
        visit = [
            (method, path)
            for method in [*sorted(KNOWN_METHODS), "PROPFIND"]
            for path in ["/dev/fibo?n=5", "/dev/fibo?n=x", "/dev/healthz", "/dev/readyz", "/x"]
        ]
        send(srv.port, visit)
        wait_records(srv, "end", len(visit) - 5)  # CONNECT may be refused before the app
        time.sleep(0.5)
        before = samples(srv.scrape())
        rnd = random.Random(20261128)
        batches = [[random_request(rnd) for _ in range(2500)] for _ in range(4)]
        threads = [threading.Thread(target=send, args=(srv.port, b)) for b in batches]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        time.sleep(0.5)
        after = samples(srv.scrape())
    answered = sum(request_counts(after).values()) - sum(request_counts(before).values())
    assert answered > 9000, answered  # most reached the app (some the HTTP layer refused)
    assert len(after) == len(before), sorted(set(after) - set(before), key=str)[:10]
    labels = {(dict(k[1]).get("http_request_method"), dict(k[1]).get("http_route")) for k in after
              if k[0] == f"{DURATION}_count"}  # fmt: skip
    assert {m for m, _ in labels} <= KNOWN_METHODS | {"_OTHER"}
    assert {r for _, r in labels} <= {"/dev/fibo", "/dev/healthz", "/dev/readyz", "unmatched"}
