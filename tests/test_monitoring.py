"""k8s/monitoring (docs/metrics.md, "SLOs and alerts"): the objects against the
Prometheus Operator CRDs, the rules through promtool (check and unit tests), and the
dashboard's queries against a real Prometheus (Debian's package) scraping the real
service."""

from __future__ import annotations

import functools
import json
import math
import random
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import kube, promlocal
from tests.support.hosttools import require_tool
from tests.support.procinfo import HOST
from tests.support.promlocal import Prometheus
from tests.support.repo import REPO_ROOT
from tests.support.serverproc import ServerProcess

MONITORING = REPO_ROOT / "k8s" / "monitoring"
CRDS = Path(__file__).resolve().parent / "schemas" / "prometheus-operator-v0.93.0"
RULE_TESTS = sorted((Path(__file__).resolve().parent / "monitoring").glob("*_test.yaml"))
JOB = "fiboserver-dev"

Obj = dict[str, Any]


@functools.cache
def rendered() -> tuple[Obj, ...]:
    return tuple(kube.render(MONITORING))


def one(kind: str) -> Obj:
    (found,) = [o for o in rendered() if o["kind"] == kind]
    return found


def dashboard() -> Obj:
    data: Obj = json.loads(one("ConfigMap")["data"]["fiboserver.json"])
    return data


def alerts() -> dict[str, Obj]:
    groups = promlocal.rules()["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


# -- the objects ---------------------------------------------------------------------


def test_renders_podmonitor_rule_and_dashboard_into_monitoring() -> None:
    assert sorted(o["kind"] for o in rendered()) == ["ConfigMap", "PodMonitor", "PrometheusRule"]
    for o in rendered():
        assert o["metadata"]["namespace"] == "monitoring"
        assert o["metadata"]["labels"]["app.kubernetes.io/name"] == "fiboserver"
    cm = one("ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["name"] == "fiboserver-dashboard"  # no hash: replaced in place


@functools.cache
def operator_validators() -> dict[str, Any]:
    validators = {}
    for name in ("podmonitors", "prometheusrules"):
        crd_file = CRDS / f"{name}.yaml"
        crd = yaml.safe_load(crd_file.read_text())
        assert crd["metadata"]["annotations"]["operator.prometheus.io/version"] == "0.93.0"
        kind, validator = kube.crd_validator(crd_file, "v1")
        validators[kind] = validator
    return validators


@pytest.mark.parametrize("kind", ["PodMonitor", "PrometheusRule"])
def test_valid_against_the_operator_crds(kind: str) -> None:
    assert kube.schema_errors(operator_validators()[kind], one(kind)) == []


def test_crd_validation_rejects_an_unknown_field() -> None:
    monitor = json.loads(json.dumps(one("PodMonitor")))
    monitor["spec"]["podMetricsEndpoints"][0]["targetport"] = "metrics"
    assert kube.schema_errors(operator_validators()["PodMonitor"], monitor)


@pytest.mark.parametrize("version", kube.schema_versions())
def test_dashboard_configmap_valid_in_strict_mode(version: str) -> None:
    kube.validate_strict([one("ConfigMap")], version)


def test_podmonitor_scrapes_both_environments_on_the_metrics_port() -> None:
    spec = one("PodMonitor")["spec"]
    assert spec["namespaceSelector"] == {"matchNames": ["cloudnative"]}
    assert spec["selector"] == {"matchLabels": {"app.kubernetes.io/name": "fiboserver"}}
    # job = fiboserver-dev / fiboserver-prod: what the rules and the dashboard group by.
    assert spec["jobLabel"] == "app.kubernetes.io/instance"
    (endpoint,) = spec["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
    for env in ("dev", "prod"):
        (deployment,) = [
            o
            for o in kube.render(REPO_ROOT / "k8s" / "overlays" / env)
            if o["kind"] == "Deployment"
        ]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == f"fiboserver-{env}"
        assert labels["app.kubernetes.io/name"] == "fiboserver"
        ports = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
        assert {"name": "metrics", "containerPort": 9464, "protocol": "TCP"} in ports


def test_every_alert_has_a_severity_and_a_runbook_section() -> None:
    runbook = (REPO_ROOT / "docs" / "metrics.md").read_text()
    anchors = {
        "#" + re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in runbook.splitlines()
        if line.startswith("#")
    }
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        link = rule["annotations"]["runbook"]
        assert link.startswith("docs/metrics.md#"), name
        assert link.removeprefix("docs/metrics.md") in anchors, f"{name}: no section {link}"


# -- promtool ------------------------------------------------------------------------


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    (tmp_path / "rules.yml").write_text(promlocal.dump(promlocal.rules()))
    for test_file in RULE_TESTS:
        shutil.copy(test_file, tmp_path / test_file.name)
    return tmp_path


def promtool(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("promtool"), *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_promtool_check_rules(rules_dir: Path) -> None:
    out = promtool("check", "rules", "rules.yml", cwd=rules_dir)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in promlocal.rules()['groups'])} rules" in (
        out.stdout
    )


def test_promtool_rule_unit_tests(rules_dir: Path) -> None:
    out = promtool("test", "rules", *(p.name for p in RULE_TESTS), cwd=rules_dir)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("SUCCESS") == len(RULE_TESTS), out.stdout


def test_unit_tests_make_every_alert_fire_and_stay_silent() -> None:
    fired: dict[str, set[str]] = {}  # alert -> jobs, pods... it fired for
    silent: set[str] = set()
    for test_file in RULE_TESTS:
        for group in yaml.safe_load(test_file.read_text())["tests"]:
            for case in group.get("alert_rule_test", []):
                expected = case["exp_alerts"]
                if expected:
                    fired.setdefault(case["alertname"], set()).update(
                        json.dumps(e["exp_labels"], sort_keys=True) for e in expected
                    )
                else:
                    silent.add(case["alertname"])
    assert set(fired) == set(alerts()), "alerts never made to fire"
    assert silent == set(alerts()), "alerts never shown silent"


def test_a_broken_rule_fails_the_unit_tests(rules_dir: Path) -> None:
    """The unit tests can fail: with the page thresholds raised past 20x they do."""
    text = (rules_dir / "rules.yml").read_text()
    text = text.replace("(14.4 * 0.001)", "(30 * 0.001)").replace("(6 * 0.001)", "(30 * 0.001)")
    (rules_dir / "rules.yml").write_text(text)
    out = promtool("test", "rules", RULE_TESTS[0].name, cwd=rules_dir)
    assert out.returncode != 0
    assert "FiboserverAvailabilityBudgetBurnFast" in out.stdout + out.stderr


# -- a real Prometheus, scraping the real service ------------------------------------


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expression) of every query of every panel."""
    queries = []
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            queries.append((panel["title"], target["expr"]))
    return queries


def test_dashboard_has_the_panels_the_issue_asks_for() -> None:
    exprs = " ".join(e for _, e in dashboard_queries())
    for metric in (
        "http_server_request_duration_seconds_count",
        "http_server_request_duration_seconds_bucket",
        "http_server_active_requests",
        "fiboserver_cache_requests_total",
        "fiboserver_cache_bytes",
        "fiboserver_cache_entries",
        "fiboserver_fibo_compute_seconds_bucket",
        "fiboserver_workers",
        "fiboserver_worker_exits_total",
        "fiboserver_draining",
    ):
        assert metric in exprs, metric
    for q in ("0.5", "0.9", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate(http_server_request_duration" in exprs
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard()["panels"])


@pytest.fixture
def prometheus_and_service(tmp_path: Path) -> Iterator[tuple[Prometheus, ServerProcess]]:
    require_tool("prometheus")
    with ServerProcess(
        {"env": "DEV", "maxseq": 100000}, tmp_path, env={"WEB_CONCURRENCY": "2"}
    ) as srv:
        srv.wait_for("metrics server start", timeout=30)
        prom = Prometheus(tmp_path / "prometheus", f"{HOST}:{srv.metrics_port}", JOB)
        try:
            prom.wait_ready()
            yield prom, srv
        finally:
            prom.close()


def traffic(srv: ServerProcess, stop: threading.Event) -> None:
    """Hits, misses, client errors, unknown paths and probes until `stop`."""
    rnd = random.Random(10)
    while not stop.is_set():
        path = rnd.choice(
            [
                "/dev/fibo?n=30",
                f"/dev/fibo?n={rnd.randrange(100000)}",
                "/dev/fibo?n=x",
                "/dev/nope",
                "/dev/healthz",
                "/dev/readyz",
            ]
        )
        srv.get(path, timeout=10)


@pytest.mark.prometheus
def test_every_dashboard_query_returns_data(
    prometheus_and_service: tuple[Prometheus, ServerProcess],
) -> None:
    prom, srv = prometheus_and_service
    stop = threading.Event()
    driver = threading.Thread(target=traffic, args=(srv, stop), daemon=True)
    driver.start()
    try:
        # Scraped every second, rules evaluated every second: a few seconds of traffic
        # give every rate window two samples or more.
        deadline = time.monotonic() + 60
        while not prom.query(f'up{{job="{JOB}"}} == 1') or not prom.query(
            "job:fiboserver_api_errors_per_request:ratio_rate5m"
        ):
            assert time.monotonic() < deadline, "no scrape or no rule evaluation in 60 s"
            time.sleep(0.5)
        time.sleep(5)
        empty = []
        for title, expr in dashboard_queries():
            # What Grafana substitutes: the environment, and a window of several scrapes.
            query = expr.replace("$job", JOB).replace("$__rate_interval", "10s")
            values = [float(r["value"][1]) for r in prom.query(query)]
            if not [v for v in values if not math.isnan(v)]:
                empty.append(f"{title}: {query} -> {values}")
        assert empty == [], "queries without data:\n" + "\n".join(empty)
        # And the rules Prometheus loaded are the checked ones, all healthy.
        groups = prom.api("/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert len(rules) == sum(len(g["rules"]) for g in promlocal.rules()["groups"])
        assert {r["health"] for r in rules} == {"ok"}, [r for r in rules if r["health"] != "ok"]
        firing = [r["name"] for r in rules if r.get("state") == "firing"]
        assert firing == [], f"a healthy service raised {firing}"
    finally:
        stop.set()
        driver.join(15)
