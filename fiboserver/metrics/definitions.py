"""Prometheus metrics (docs/metrics.md): names, labels, buckets, and what records them.

Every process builds its metric objects once, with `process_metrics()`. The
import of prometheus_client waits until then, on purpose: prometheus_client
decides when it is imported whether values live in the process or in the files
of PROMETHEUS_MULTIPROC_DIR, and the gunicorn master loads the app before it
sets that directory up (fiboserver.metrics.multiproc, at `when_ready`).
Recorded in every process; the request metrics in the request threads.

Objects built in the master before it forks are valid in the workers:
prometheus_client notices the new pid at a worker's first update and moves
every value to that worker's own files, starting from zero.

Label values come from fixed sets only, whatever clients send: the method from
OpenTelemetry's list of known methods (else `_OTHER`), the route from the app's
URL rules (else `unmatched`), the status from what the app answers.
"""

from __future__ import annotations

import enum
import platform
import threading
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import TYPE_CHECKING

from fiboserver.metrics.multiproc import use_cached_process_id

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from werkzeug.routing import Map

# OpenTelemetry HTTP semantic conventions, attribute http.request.method: the
# methods of RFC 9110 and RFC 5789; any other is recorded as `_OTHER`.
KNOWN_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"}
)
OTHER_METHOD = "_OTHER"
# Where create_app keeps the app's MetricsSource (app.extensions), when metrics are on.
EXTENSION_KEY = "fiboserver_metrics"
UNMATCHED_ROUTE = "unmatched"

# Request durations: a cached answer takes a fraction of a millisecond and F(100000)
# a few (docs/performance.md), so the small buckets resolve them; 0.1 is the latency
# SLO's threshold (k8s/monitoring), and 10 s is past the point where a client has
# given up. 2 s, not 2.5: the injected delay (fault_delay_ms, README "Fault
# injection") of 0..2 s then ends on a bound, so its p99 interpolates to about
# 1.98 s instead of about 2.47 s in a 1..2.5 bucket. 15 bounds plus +Inf: 16
# buckets, each one series per method, route and status.
REQUEST_BUCKETS = (
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip
# Computing F(n): microseconds for small n, milliseconds for n = 100000 on a
# current core (docs/performance.md); the top buckets catch a slow or throttled CPU.
COMPUTE_BUCKETS = (
    0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001,
    0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
)  # fmt: skip


def method_label(method: str) -> str:
    """`method` when OpenTelemetry knows it, else `_OTHER`."""
    return method if method in KNOWN_METHODS else OTHER_METHOD


class ExitReason(enum.Enum):
    """Why a worker process ended: the `reason` label of fiboserver_worker_exits."""

    EXITED = "exited"  # by itself (a graceful stop, a reload, max_requests, an error)
    KILLED = "killed"  # by a signal (SIGKILL, the OOM killer, a crash)
    TIMEOUT = "timeout"  # aborted by the master for being silent past `timeout`


def build_info() -> tuple[str, str, str]:
    """The labels of fiboserver_build_info: version, python_version, gunicorn_version."""
    version = metadata.version
    return version("fiboserver"), platform.python_version(), version("gunicorn")


class Metrics:
    """The metric objects of one process; docs/metrics.md lists them.

    Gauges say how the values of several processes combine (multiprocess_mode):
    `livesum` adds those of the live processes, `livemax` takes the largest; the
    values of a process that has died leave the sum (fiboserver.metrics.multiproc).
    Counters and histograms keep the counts of dead processes, so they never go
    backwards while the server runs.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import Gauge, Histogram

        self.request_duration: Histogram = Histogram(
            "http_server_request_duration_seconds",
            "Time from request received to response sent.",  # pragma: no mutate
            ("http_request_method", "http_route", "http_response_status_code"),
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        self.active_requests: Gauge = Gauge(
            "http_server_active_requests",
            "Requests in flight.",  # pragma: no mutate
            multiprocess_mode="livesum",
            registry=registry,
        )
        self._declare_cache(registry)
        self._declare_server(registry)

    def _declare_cache(self, registry: CollectorRegistry | None) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        cache_requests = Counter(
            "fiboserver_cache_requests",
            "Cache lookups, by result.",  # pragma: no mutate
            ("result",),
            registry=registry,
        )
        # Both series exist from the start, so a ratio has data before the first miss.
        self.cache_hits: Counter = cache_requests.labels("hit")
        self.cache_misses: Counter = cache_requests.labels("miss")
        self.cache_evictions: Counter = Counter(
            "fiboserver_cache_evictions",
            "Cache entries evicted to stay within cache_max_bytes.",  # pragma: no mutate
            registry=registry,
        )
        self.cache_bytes: Gauge = Gauge(
            "fiboserver_cache_bytes",
            "Accounted size of the cached results, summed over live workers.",  # pragma: no mutate
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.cache_entries: Gauge = Gauge(
            "fiboserver_cache_entries",
            "Cached results, summed over live workers.",  # pragma: no mutate
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.compute_duration: Histogram = Histogram(
            "fiboserver_fibo_compute_seconds",
            "Time to compute F(n) when it was not cached.",  # pragma: no mutate
            buckets=COMPUTE_BUCKETS,
            registry=registry,
        )

    def _declare_server(self, registry: CollectorRegistry | None) -> None:
        from prometheus_client import Counter, Gauge

        self.draining: Gauge = Gauge(
            "fiboserver_draining",
            "1 once the server received SIGTERM, else 0.",  # pragma: no mutate
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.workers: Gauge = Gauge(
            "fiboserver_workers",
            "Live worker processes.",  # pragma: no mutate
            multiprocess_mode="livesum",
            registry=registry,
        )
        worker_exits = Counter(
            "fiboserver_worker_exits",
            "Worker processes that ended, by reason: exited (by itself), "  # pragma: no mutate
            "killed (by a signal), "  # pragma: no mutate
            "timeout (aborted by the master for being silent).",  # pragma: no mutate
            ("reason",),
            registry=registry,
        )
        self.worker_exits: dict[ExitReason, Counter] = {
            reason: worker_exits.labels(reason.value) for reason in ExitReason
        }
        self.build_info: Gauge = Gauge(
            "fiboserver_build_info",
            "Always 1; the labels say what is running.",  # pragma: no mutate
            ("version", "python_version", "gunicorn_version"),
            multiprocess_mode="livemax",
            registry=registry,
        )


_metrics: Metrics | None = None
_metrics_lock = threading.Lock()


def process_metrics() -> Metrics:
    """This process's `Metrics`, built on the first call."""
    global _metrics
    metrics = _metrics
    if metrics is None:
        with _metrics_lock:
            if _metrics is None:
                use_cached_process_id()
                _metrics = Metrics()
            metrics = _metrics
    return metrics


MetricsSource = Callable[[], Metrics]


class RequestMetrics:
    """The request histogram and the in-flight gauge, as the access middleware
    (fiboserver.app.access) records them: `started` when a request arrives,
    `finished` with the same duration its `end` record shows.

    Costs are kept to what prometheus_client must do: every update of a
    multiprocess value takes a lock and writes to a memory-mapped file. A request
    makes four: the gauge up and down, the histogram's sum and one of its buckets
    (the count is the buckets' total). The labelled histogram child of each
    (method, route, status) is kept in a plain dict, not looked up through
    `labels()`, which validates and locks on every call.
    """

    def __init__(self, routes: Iterable[str], source: MetricsSource = process_metrics) -> None:
        self._routes = {route: route for route in routes}
        self._source = source
        self._metrics: Metrics | None = None
        self._series: dict[tuple[str, str, int], Histogram] = {}

    def route_label(self, path: str) -> str:
        """The URL rule `path` matches, else `unmatched` (rules are static paths)."""
        return self._routes.get(path, UNMATCHED_ROUTE)

    def _bind(self) -> Metrics:
        self._metrics = self._source()
        return self._metrics

    def started(self) -> None:
        (self._metrics or self._bind()).active_requests.inc()

    def finished(self, method: str, path: str, status: int, seconds: float) -> None:
        """A request that `started` got its answer: count it, one fewer in flight."""
        self.observe(method, path, status, seconds)
        (self._metrics or self._bind()).active_requests.dec()

    def abandoned(self) -> None:
        """A request that `started` ended without an answer of the app's: one fewer
        in flight, nothing counted (there is no `end` record either)."""
        (self._metrics or self._bind()).active_requests.dec()

    def observe(self, method: str, path: str, status: int, seconds: float) -> None:
        """Count one answered request that took `seconds`."""
        key = (method_label(method), self._routes.get(path, UNMATCHED_ROUTE), status)
        series = self._series.get(key)
        if series is None:
            metrics = self._metrics or self._bind()
            # labels() is thread-safe and returns the same child for the same
            # labels, so two threads racing here store the same object.
            series = metrics.request_duration.labels(key[0], key[1], str(status))
            self._series[key] = series
        series.observe(seconds)


def static_rules(url_map: Map) -> list[str]:
    """Every URL rule of `url_map`, refusing rules with arguments.

    Route labels are found by looking the request path up among the rules, which
    is exact only while every rule is a plain path (no `<converter:name>`).
    """
    rules: list[str] = []
    for rule in url_map.iter_rules():
        if rule.arguments:
            raise ValueError(
                f"URL rule {rule.rule!r} has arguments; route labels look paths up as "
                "they are (fiboserver.metrics.definitions.RequestMetrics): match the rule instead"
            )
        rules.append(rule.rule)
    return rules
