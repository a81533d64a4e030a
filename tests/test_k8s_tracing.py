"""k8s/tracing: both environments with the OpenTelemetry variables, as kustomize renders it.

The kustomization changes the Deployments' env and the NetworkPolicies' egress
and nothing else; the variables are the standard ones, the pod name comes from
the downward API, the service reads them as an exporter to the backend that the
egress rule lets the pods reach, and every object is valid in strict mode.
"""

from __future__ import annotations

import copy
import re
from urllib.parse import urlsplit

import pytest

from fiboserver.tracing import settings_from_env
from tests.support import kube
from tests.support.appk8s import ENVS, K8S, find, key, one, render
from tests.support.kube import Obj

TRACING = "k8s/tracing"
K8S_VERSIONS = kube.schema_versions()
# The backend the docs name: Service `jaeger` in namespace `tracing`, OTLP/HTTP.
ENDPOINT = "http://jaeger.tracing.svc:4318"


def env_of(deployment: Obj) -> list[Obj]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env: list[Obj] = container["env"]
    return env


def without_tracing(o: Obj) -> Obj:
    """`o` less what k8s/tracing may change: OTEL_* and K8S_* variables, egress."""
    o = copy.deepcopy(o)
    if o["kind"] == "Deployment":
        (container,) = o["spec"]["template"]["spec"]["containers"]
        container["env"] = [e for e in container["env"] if not re.match(r"(OTEL|K8S)_", e["name"])]
    if o["kind"] == "NetworkPolicy":
        o["spec"].pop("egress")
    return o


def test_only_env_and_egress_differ_from_the_overlays() -> None:
    traced = {key(o): o for o in render(TRACING)}
    plain = {key(o): o for env in ENVS for o in render(f"k8s/overlays/{env}")}
    assert traced.keys() == plain.keys()
    for k, o in plain.items():
        assert without_tracing(traced[k]) == without_tracing(o), k
    # ...and the tracing side really differs (the comparison above is not vacuous).
    assert len(find(render(TRACING), "Deployment")) == 2
    for d in find(render(TRACING), "Deployment"):
        assert d != plain[key(d)]


@pytest.mark.parametrize("env", ENVS)
def test_deployment_gets_the_standard_variables(env: str) -> None:
    variables = env_of(one(render(TRACING), "Deployment", f"fiboserver-{env}"))
    by_name = {e["name"]: e for e in variables}
    assert by_name["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == ENDPOINT
    assert by_name["OTEL_SERVICE_NAME"]["value"] == "fiboserver"
    assert by_name["OTEL_TRACES_SAMPLER"]["value"] == "parentbased_always_on"
    # The pod's name from the downward API, in the resource attributes.
    assert by_name["K8S_POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    attributes = dict(
        pair.split("=", 1) for pair in by_name["OTEL_RESOURCE_ATTRIBUTES"]["value"].split(",")
    )
    assert attributes["k8s.pod.name"] == "$(K8S_POD_NAME)"
    # $(VAR) expands only variables defined before it in the list.
    names = [e["name"] for e in variables]
    for ref in re.findall(r"\$\((\w+)\)", by_name["OTEL_RESOURCE_ATTRIBUTES"]["value"]):
        assert names.index(ref) < names.index("OTEL_RESOURCE_ATTRIBUTES"), ref
    # No new key in the service's own config: tracing is the environment's business.
    assert by_name["FIBOSERVER_CONFIG"]["value"] == "/etc/fiboserver/config.yaml"


@pytest.mark.parametrize("env", ENVS)
def test_the_service_reads_them_as_an_exporter(env: str) -> None:
    variables = env_of(one(render(TRACING), "Deployment", f"fiboserver-{env}"))
    plain = {e["name"]: e["value"] for e in variables if "value" in e}
    settings = settings_from_env(plain)
    assert settings.exporting and settings.endpoint == ENDPOINT


@pytest.mark.parametrize("env", ENVS)
def test_egress_reaches_the_endpoint_and_dns_only(env: str) -> None:
    policy = one(render(TRACING), "NetworkPolicy", f"fiboserver-{env}")
    url = urlsplit(ENDPOINT)
    service, namespace = str(url.hostname).split(".")[:2]
    assert service == "jaeger"
    rules = policy["spec"]["egress"]
    assert len(rules) == 2
    otlp, dns = rules
    assert otlp["to"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}
    ]
    assert otlp["ports"] == [{"protocol": "TCP", "port": url.port}]
    assert dns["to"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}
    ]
    assert sorted(p["protocol"] for p in dns["ports"]) == ["TCP", "UDP"]
    assert {p["port"] for p in dns["ports"]} == {53}
    # Without the tracing kustomization the pods still open no connection at all.
    plain = one(render(f"k8s/overlays/{env}"), "NetworkPolicy", f"fiboserver-{env}")
    assert plain["spec"]["egress"] == []


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_objects_valid_in_strict_mode(version: str) -> None:
    objs = render(TRACING)
    # 2 ConfigMaps, 2 Services, 2 Deployments, 2 PDBs, 2 NetworkPolicies, the HPA.
    assert len(objs) == 11
    kube.validate_strict(objs, version)


def test_readme_names_the_kustomization() -> None:
    text = (K8S.parent / "README.md").read_text()
    assert "kubectl apply -k k8s/tracing" in text
