"""The pod's side of metrics (README "Deployment on Kubernetes"; docs/metrics.md), on
what `kubectl kustomize` renders: the `metrics` port, the multiprocess directory's
tmpfs, the scrape annotations, and nothing in front of the pods that exposes the
port. (Strict schemas and checkov cover these objects in tests/test_k8s_render.py.)"""

from __future__ import annotations

import pytest

from fiboserver.metrics.multiproc import ENV as MULTIPROC_ENV
from tests.support.appk8s import ENVS, container_of, find, one, overlay_config, pod_of, render


def metrics_port(env: str) -> int:
    (port,) = [p for p in container_of(env)["ports"] if p["name"] == "metrics"]
    assert port["protocol"] == "TCP"
    number: int = port["containerPort"]
    return number


@pytest.mark.parametrize("env", ENVS)
def test_container_port_metrics_is_the_configured_metrics_port(env: str) -> None:
    assert metrics_port(env) == overlay_config(env).metrics_port == 9464


@pytest.mark.parametrize("env", ENVS)
def test_scrape_annotations_name_the_metrics_port(env: str) -> None:
    annotations = pod_of(env)["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(metrics_port(env))
    assert annotations["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize("env", ENVS)
def test_multiproc_dir_is_a_memory_emptydir_of_its_own(env: str) -> None:
    container = container_of(env)
    (var,) = [e for e in container["env"] if e["name"] == MULTIPROC_ENV]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == var["value"]]
    assert not mount.get("readOnly")
    (volume,) = [v for v in pod_of(env)["spec"]["volumes"] if v["name"] == mount["name"]]
    assert volume["emptyDir"]["medium"] == "Memory"
    assert volume["emptyDir"]["sizeLimit"] == "8Mi"
    # Not the /tmp scratch volume: its size limit is its own.
    (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert tmp["name"] != mount["name"]


def test_nothing_in_front_of_the_pods_exposes_the_metrics_port() -> None:
    """Services, the Ingress and the Gateway's routes reach `http` only."""
    objs = render("k8s") + render("k8s/gateway")
    services = {o["metadata"]["name"]: o for o in find(objs, "Service")}
    assert set(services) == {f"fiboserver-{env}" for env in ENVS}
    for svc in services.values():
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] == "http", port
    backends = []
    for ingress in find(objs, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backends.append(
                    (path["backend"]["service"]["name"], path["backend"]["service"]["port"])
                )
    for route in find(objs, "HTTPRoute"):
        for rule in route["spec"]["rules"]:
            for ref in rule.get("backendRefs", []):
                backends.append((ref["name"], {"number": ref["port"]}))
    assert backends
    for name, port in backends:
        (svc_port,) = [
            p
            for p in services[name]["spec"]["ports"]
            if p["port"] == port.get("number") or p["name"] == port.get("name")
        ]
        assert svc_port["targetPort"] == "http"
    assert one(objs, "Gateway")
