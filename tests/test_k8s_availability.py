"""Staying up (README "Deployment on Kubernetes"): replicas and the HPA, rolling
updates, probes, the shutdown budget, spreading over nodes and zones, and the
PodDisruptionBudget.

The timing checks use the `graceful_timeout` the real gunicorn.conf.py resolves
to for each overlay's config.
"""

from __future__ import annotations

import pytest

from tests.support.appk8s import (
    ENVS,
    container_of,
    find,
    gunicorn_settings,
    one,
    overlay_config,
    pod_of,
    render,
)
from tests.support.kube import parse_quantity


@pytest.mark.parametrize("env", ENVS)
def test_replicas_and_rolling_update(env: str) -> None:
    objs = render("k8s")
    spec = one(objs, "Deployment", f"fiboserver-{env}")["spec"]
    if env == "prod":
        # No `replicas`: the HPA owns the count (a manifest value would be reset
        # over the HPA's on every server-side apply or GitOps sync).
        assert "replicas" not in spec
        hpa = one(objs, "HorizontalPodAutoscaler", "fiboserver-prod")
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "fiboserver-prod",
        }
        assert hpa["spec"]["minReplicas"] == 3
        assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
        # Utilization is relative to the request: there must be one.
        assert "cpu" in container_of(env)["resources"]["requests"]
    else:
        assert spec["replicas"] == 3
        assert not find(objs, "HorizontalPodAutoscaler", f"fiboserver-{env}")
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    # With maxUnavailable 0 a surge of at least one is what lets the rollout move.
    assert parse_quantity(spec["strategy"]["rollingUpdate"]["maxSurge"]) >= 1


@pytest.mark.parametrize("env", ENVS)
def test_probes_carry_the_environment_prefix(env: str) -> None:
    prefix = overlay_config(env).prefix
    assert prefix == f"/{env}"
    container = container_of(env)
    expected = {
        "startupProbe": f"{prefix}/healthz",
        "livenessProbe": f"{prefix}/healthz",
        "readinessProbe": f"{prefix}/readyz",
    }
    for probe, path in expected.items():
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}, probe


@pytest.mark.parametrize("env", ENVS)
def test_termination_budget(env: str) -> None:
    """preStop sleep, then SIGTERM and gunicorn's drain, all inside the grace period;
    readiness notices quickly; liveness cannot kill a pod that is draining."""
    graceful_timeout = int(gunicorn_settings(env)["graceful_timeout"])
    assert graceful_timeout == 20
    pod = pod_of(env)["spec"]
    container = container_of(env)
    pre_stop = container["lifecycle"]["preStop"]
    assert list(pre_stop) == ["sleep"], "preStop must be the native sleep action"
    sleep = pre_stop["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] >= sleep + graceful_timeout + 5

    readiness = container["readinessProbe"]
    assert readiness["periodSeconds"] * readiness.get("failureThreshold", 3) < sleep
    # Endpoint removal (kube-proxy, ingress controller) needs a few seconds.
    assert sleep >= 5

    # The earliest liveness restart after SIGTERM: a first failure right away,
    # then failureThreshold - 1 more periods. It must come after the drain.
    liveness = container["livenessProbe"]
    earliest_kill = (liveness.get("failureThreshold", 3) - 1) * liveness.get("periodSeconds", 10)
    assert earliest_kill > graceful_timeout

    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 10


@pytest.mark.parametrize("env", ENVS)
def test_spread_over_nodes_and_zones(env: str) -> None:
    constraints = {c["topologyKey"]: c for c in pod_of(env)["spec"]["topologySpreadConstraints"]}
    host = constraints["kubernetes.io/hostname"]
    assert host["maxSkew"] == 1
    assert host["whenUnsatisfiable"] == "DoNotSchedule"
    # Zones are a preference only: single-zone clusters must still schedule.
    assert constraints["topology.kubernetes.io/zone"]["whenUnsatisfiable"] == "ScheduleAnyway"
    # Tainted and cordoned nodes are not empty domains that would block a drain.
    assert {c.get("nodeTaintsPolicy") for c in constraints.values()} == {"Honor"}


@pytest.mark.parametrize("env", ENVS)
def test_pod_disruption_budget(env: str) -> None:
    pdb = one(render("k8s"), "PodDisruptionBudget", f"fiboserver-{env}")["spec"]
    replicas = 3  # the Deployment's replicas and prod's HPA floor (checked above)
    allowed = pdb.get("maxUnavailable", replicas - pdb.get("minAvailable", replicas))
    # At least one voluntary eviction allowed (node drains can proceed), and at
    # least two pods keep serving.
    assert allowed == 1
    assert replicas - allowed >= 2
    # Crash-looping pods do not hold a node drain hostage.
    assert pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
