"""Resources and QoS (README "Deployment on Kubernetes"): each environment's requests
and limits, the QoS class Kubernetes gives its pods, and whole CPUs for gunicorn's
worker count.

The QoS rule is implemented here and checked against known cases first.
"""

from __future__ import annotations

import pytest

from fiboserver.server.cgroup import workers_for
from tests.support.appk8s import container_of, pod_of
from tests.support.kube import Obj, parse_quantity


def qos_class(pod_spec: Obj) -> str:
    """The QoS class Kubernetes gives a pod (init containers included): Guaranteed
    when every container has CPU and memory limits and its requests equal them
    (an unset request defaults to the limit), BestEffort when no container sets
    any request or limit, Burstable otherwise."""
    containers = pod_spec.get("initContainers", []) + pod_spec["containers"]
    any_set = False
    guaranteed = True
    for c in containers:
        limits = c.get("resources", {}).get("limits", {})
        requests = {**limits, **c.get("resources", {}).get("requests", {})}
        if limits or requests:
            any_set = True
        for resource in ("cpu", "memory"):
            if resource not in limits or parse_quantity(requests[resource]) != parse_quantity(
                limits[resource]
            ):
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def _c(requests: dict[str, str] | None = None, limits: dict[str, str] | None = None) -> Obj:
    resources: Obj = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    return {"name": "c", "resources": resources}


@pytest.mark.parametrize(
    ("containers", "expected"),
    [
        ([_c()], "BestEffort"),
        ([_c(limits={"cpu": "1", "memory": "1Gi"})], "Guaranteed"),
        ([_c({"cpu": "1000m", "memory": "1024Mi"}, {"cpu": "1", "memory": "1Gi"})], "Guaranteed"),
        ([_c({"cpu": "100m", "memory": "128Mi"}, {"cpu": "1", "memory": "1Gi"})], "Burstable"),
        ([_c(limits={"cpu": "1"})], "Burstable"),
        ([_c(limits={"cpu": "1", "memory": "1Gi"}), _c()], "Burstable"),
        ([_c({"cpu": "1"})], "Burstable"),
    ],
)
def test_qos_class_rule(containers: list[Obj], expected: str) -> None:
    assert qos_class({"containers": containers}) == expected


@pytest.mark.parametrize(
    ("env", "expected_qos", "expected"),
    [
        # The seed's numbers, Burstable.
        ("dev", "Burstable", {"requests": {"cpu": 0.1, "memory": 128 * 2**20},
                              "limits": {"cpu": 1.0, "memory": 2**30}}),
        ("prod", "Guaranteed", None),
    ],
)  # fmt: skip
def test_resources_and_qos(env: str, expected_qos: str, expected: Obj | None) -> None:
    pod = pod_of(env)["spec"]
    assert qos_class(pod) == expected_qos
    resources = container_of(env)["resources"]
    if expected is not None:
        actual = {
            kind: {r: parse_quantity(q) for r, q in values.items()}
            for kind, values in resources.items()
        }
        assert actual == expected
    # gunicorn starts one worker per whole CPU of the limit: give it whole CPUs,
    # and check that the printed worker count is derived from the same rule.
    cpu = parse_quantity(resources["limits"]["cpu"])
    assert cpu >= 1 and cpu == int(cpu)
    assert workers_for(cpu, usable_cpus=64) == int(cpu)
