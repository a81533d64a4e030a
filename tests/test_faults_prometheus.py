"""Fault injection (README "Fault injection") as a real Prometheus sees it.

Debian's prometheus scrapes the real server every second and evaluates the
project's own rules (k8s/monitoring/prometheusrule.yaml, unchanged) every second.
With a delay, the dashboard's fibo p99 shows it; with injected errors, the
availability alert's expression returns a value; the probes and /metrics stay
fast and never fail meanwhile. Traffic goes to 127.0.0.1 only, bounded in count
and in time. Without prometheus these tests skip, with CI=true they fail.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.procinfo import HOST
from tests.support.promlocal import DASHBOARD, Prometheus, alert_expr
from tests.support.serverproc import ServerProcess
from tests.support.testlog import say

pytestmark = pytest.mark.prometheus

JOB = "fiboserver-dev"  # what the PodMonitor names the dev pods' job
FIBO = 'job="fiboserver-dev", http_route="/dev/fibo"'
PROBES = 'job="fiboserver-dev", http_route=~"/dev/(healthz|readyz)"'


@contextmanager
def served_and_scraped(
    tmp_path: Path, **faults: object
) -> Iterator[tuple[ServerProcess, Prometheus]]:
    """One worker (4 request threads) with `faults`, and a Prometheus scraping it."""
    config = {"env": "DEV", "maxseq": 1000, **faults}
    with ServerProcess(config, tmp_path, env={"WEB_CONCURRENCY": "1"}) as srv:
        srv.wait_for("metrics server start", timeout=30)
        prom = Prometheus(tmp_path / "prometheus", f"{HOST}:{srv.metrics_port}", JOB)
        try:
            prom.wait_ready()
            wait_until(lambda: prom.values(f'up{{job="{JOB}"}}') == [1.0], 60, "no scrape")
            yield srv, prom
        finally:
            prom.close()


def wait_until(ok: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until `ok()`; fails with `what` after `timeout`."""
    t0 = time.monotonic()
    while not ok():
        assert time.monotonic() - t0 < timeout, f"{what} within {timeout} s"
        time.sleep(0.5)
    return time.monotonic() - t0


class Traffic:
    """`clients` threads sending GET `path` to the server, each pausing `pause` s
    between requests, until `stop()`, `limit` requests in all, or `deadline` s."""

    def __init__(
        self, srv: ServerProcess, path: str, clients: int, limit: int, deadline: float,
        pause: float = 0.0,
    ) -> None:  # fmt: skip
        self.statuses: list[int] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._until = time.monotonic() + deadline
        self._args = (srv, path, limit, pause)
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        srv, path, limit, pause = self._args
        while not self._stop.is_set() and time.monotonic() < self._until:
            with self._lock:
                if len(self.statuses) + 1 > limit:
                    return
                self.statuses.append(0)  # reserved, filled in below
                slot = len(self.statuses) - 1
            status, _, _ = srv.get(path, timeout=30)
            self.statuses[slot] = status
            self._stop.wait(pause)

    def join(self) -> list[int]:
        """The statuses, once every client has ended (by count, time or stop())."""
        for t in self._threads:
            t.join(60)
        return self.statuses

    def stop(self) -> list[int]:
        self._stop.set()
        return self.join()


def dashboard_expr(title: str, quantile: str) -> str:
    """The fibo latency query of the dashboard, as Grafana sends it for `JOB`, over
    5 minutes (all of a test's traffic)."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    (panel,) = [p for p in panels if p["title"] == title]
    (expr,) = [
        t["expr"]
        for t in panel["targets"]
        if t["expr"].startswith(f"histogram_quantile({quantile},")
    ]
    text: str = expr.replace("$job", JOB).replace("$__rate_interval", "5m")
    return text


def scraped_count(prom: Prometheus, selector: str) -> float:
    values = prom.values(f"sum(http_server_request_duration_seconds_count{{{selector}}})")
    return values[0] if values else 0.0


def test_the_p99_shows_the_injected_delay(tmp_path: Path) -> None:
    """fault_delay_ms 2000: fibo takes 0..2 s, uniformly, so its p99 is about 1.98 s;
    the dashboard's p99 reads 1.5 to 2.1 s. Probes sent meanwhile stay under 0.1 s."""
    sent = 120  # 4 clients, one request thread each, about 1 s a request: ~30 s
    with served_and_scraped(tmp_path, fault_delay_ms=2000) as (srv, prom):
        fibo = Traffic(srv, "/dev/fibo?n=10", clients=4, limit=sent, deadline=120)
        probes = Traffic(srv, "/dev/healthz", clients=1, limit=300, deadline=120, pause=0.1)
        statuses = fibo.join()
        probe_statuses = probes.stop()
        assert statuses == [200] * sent
        wait_until(lambda: scraped_count(prom, FIBO) == sent, 30, f"{sent} requests scraped")
        p99 = prom.values(dashboard_expr("fibo latency p50 / p90 / p99", "0.99"))
        p50 = prom.values(dashboard_expr("fibo latency p50 / p90 / p99", "0.5"))
        # What the log says, for the message: the share of answers over 2 s.
        ends = srv.find("end", lambda r: r["path"] == "/dev/fibo")
        over = sum(r["duration_ms"] > 2000 for r in ends)
        say("faults", f"p99 of fibo with fault_delay_ms 2000: {p99} s (p50 {p50} s), "
            f"{over} of {len(ends)} answers over 2 s")  # fmt: skip
        assert len(p99) == 1 and 1.5 <= p99[0] <= 2.1, (p99, over)
        assert len(p50) == 1 and 0.7 <= p50[0] <= 1.3, p50
        # The latency SLO's page fires on it (README "Fault injection").
        assert prom.values(alert_expr("FiboserverLatencyBudgetBurnFast")), "no latency page"
        # The probes answered at once and never failed, as Prometheus counted them.
        assert set(probe_statuses) == {200}
        probes_fast = prom.values(
            f'sum(http_server_request_duration_seconds_bucket{{{PROBES}, le="0.1"}})'
        )
        assert probes_fast == [scraped_count(prom, PROBES)], probes_fast
        # And /metrics: every scrape succeeded, fast.
        slowest = prom.values(f'max_over_time(scrape_duration_seconds{{job="{JOB}"}}[5m])')
        assert prom.values(f'min_over_time(up{{job="{JOB}"}}[5m])') == [1.0]
        assert slowest and slowest[0] < 1.0, slowest


def test_injected_errors_make_the_availability_alert_fire(tmp_path: Path) -> None:
    """fault_error_ratio 0.2: the expression of FiboserverAvailabilityBudgetBurnFast,
    as the PrometheusRule has it, returns a value within 3 minutes of traffic, and
    the alert fires. The probes never answer 5xx meanwhile."""
    expr = alert_expr("FiboserverAvailabilityBudgetBurnFast")
    with served_and_scraped(tmp_path, fault_error_ratio=0.2) as (srv, prom):
        traffic = Traffic(srv, "/dev/fibo?n=10", clients=2, limit=20000, deadline=180, pause=0.01)
        probes = Traffic(srv, "/dev/readyz", clients=1, limit=2000, deadline=180, pause=0.1)
        try:
            to_value = wait_until(lambda: bool(prom.values(expr)), 180, "no alert value")
            to_firing = wait_until(
                lambda: "FiboserverAvailabilityBudgetBurnFast" in firing(prom),
                180 - to_value,
                "alert not firing",
            )
            value = prom.values(expr)
        finally:
            statuses = traffic.stop()
            probe_statuses = probes.stop()
    say("faults", f"fault_error_ratio 0.2: the availability page's expression returned "
        f"{value} after {to_value:.1f} s of traffic, firing {to_firing:.1f} s later; "
        f"{statuses.count(500)} of {len(statuses)} answers were 500")  # fmt: skip
    # The value is the 1 h error ratio (the left side of the first `and`): about 0.2,
    # from the few hundred requests of the first seconds.
    assert len(value) == 1 and 0.05 < value[0] < 0.4, value
    assert set(statuses) == {200, 500} and 0.1 < statuses.count(500) / len(statuses) < 0.3
    assert set(probe_statuses) == {200}


def firing(prom: Prometheus) -> set[str]:
    alerts: list[dict[str, Any]] = prom.api("/api/v1/alerts")["data"]["alerts"]
    return {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}
