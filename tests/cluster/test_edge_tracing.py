"""On the real cluster, the edge and the pods report to one Jaeger (issue 18, test
4): one request through Traefik is one trace, Traefik's spans first, the pod's
SERVER span a child of Traefik's.

- The pods run k8s/tracing as a user applies it (`kubectl apply -k k8s/tracing`,
  fitted to the node like every deployment here), with two changes for a Jaeger
  outside the cluster: OTEL_EXPORTER_OTLP_ENDPOINT names it by address instead of
  jaeger.tracing.svc, and the NetworkPolicy (enforced: tools/cluster/netpol.py)
  gets an egress rule for that address and port. k8s/tracing's own rules admit the
  pods of namespace `tracing` and DNS from `kube-system`'s pods; here neither
  Jaeger nor CoreDNS is a pod.
- Jaeger (tests/support/jaeger.py) runs on the host like Traefik, its OTLP
  receiver on the pod bridge's host address, which both the pods and Traefik
  reach; the test reads its query API on 127.0.0.1.
- Traefik exports its spans with the static `tracing` section of
  edges.traefik_tracing (docs/tracing.md, "Through the edge").

The request carries no traceparent: Traefik starts the trace. The pod's log
record of the request (found by the X-Request-ID the response carries) names
the trace, as an on-call engineer would find it.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.clusterlib import K8S, NS, Cluster
from tests.support.edges import TRAEFIK_SERVICE_NAME, Edge, traefik_edge
from tests.support.jaeger import CLIENT, SERVER, JaegerProcess
from tests.support.testlog import say
from tools.cluster.layout import POD_GATEWAY

pytestmark = pytest.mark.cluster

DEPLOYMENTS = ("fiboserver-dev", "fiboserver-prod")
# k8s/tracing's OTEL_SERVICE_NAME.
POD_SERVICE_NAME = "fiboserver"


def tracing_overlay(cluster: Cluster, tmp: Path, endpoint: str) -> Path:
    """k8s/tracing, fitted to the node, exporting to `endpoint` (an address), which
    the NetworkPolicy admits."""
    url = urllib.parse.urlsplit(endpoint)
    egress = [{"op": "add", "path": "/spec/egress/-", "value": {
        "to": [{"ipBlock": {"cidr": f"{url.hostname}/32"}}],
        "ports": [{"protocol": "TCP", "port": url.port}]}}]  # fmt: skip
    patch = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "any"},
        "spec": {"template": {"spec": {"containers": [{"name": "fiboserver", "env": [
            {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": endpoint}]}]}}},
    }  # fmt: skip
    (tmp / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(cluster.fitted(K8S / "tracing"), tmp)],
        "patches": [{"patch": yaml.safe_dump(patch),
                     "target": {"kind": "Deployment",
                                "labelSelector": "app.kubernetes.io/name=fiboserver"}},
                    {"patch": yaml.safe_dump(egress),
                     "target": {"kind": "NetworkPolicy",
                                "labelSelector": "app.kubernetes.io/name=fiboserver"}}],
    }))  # fmt: skip
    return tmp


def env_of(cluster: Cluster, deployment: str) -> list[dict[str, Any]]:
    spec = cluster.get("-n", NS, "deployment", deployment)["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env: list[dict[str, Any]] = container.get("env", [])
    return env


def roll_out(cluster: Cluster) -> None:
    for deployment in DEPLOYMENTS:
        cluster.rollout_status(deployment)
        cluster.wait_ready(deployment)


@pytest.fixture(scope="module")
def jaeger(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JaegerProcess]:
    cluster.deploy()  # the bridge (and so POD_GATEWAY) exists once a pod runs
    with JaegerProcess(tmp_path_factory.mktemp("jaeger"), otlp_host=POD_GATEWAY) as process:
        yield process


@pytest.fixture(scope="module")
def edge(
    cluster: Cluster, jaeger: JaegerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Edge]:
    """The pods with k8s/tracing applied and Traefik with tracing on, both to
    `jaeger`; afterwards the pods as the other tests deploy them again."""
    overlay = tracing_overlay(cluster, tmp_path_factory.mktemp("overlay"), jaeger.otlp_endpoint)
    try:
        cluster.reapply(overlay)
        roll_out(cluster)
        with traefik_edge(cluster, tmp_path_factory.mktemp("edge"),
                          f"{jaeger.otlp_endpoint}/v1/traces") as e:  # fmt: skip
            yield e
    finally:
        cluster.reapply()
        roll_out(cluster)
        for deployment in DEPLOYMENTS:  # the later tests' pods export nothing
            names = {var["name"] for var in env_of(cluster, deployment)}
            assert not any(n.startswith("OTEL_") for n in names), (deployment, names)


def end_record(cluster: Cluster, request_id: str) -> dict[str, Any]:
    """The `end` record of request `request_id`, from whichever DEV pod served it,
    with the pod's name under "pod"."""
    found = []
    for pod in cluster.ready_pods("fiboserver-dev"):
        name = pod["metadata"]["name"]
        logs = cluster.kubectl("logs", "-n", NS, name, "-c", "fiboserver", "--since=5m").stdout
        records = [json.loads(ln) for ln in logs.splitlines() if ln.startswith("{")]
        found += [{**r, "pod": name} for r in records
                  if r.get("request_id") == request_id and r.get("msg") == "end"]  # fmt: skip
    assert len(found) == 1, (request_id, found)
    return found[0]


def service_of(span: dict[str, Any]) -> str:
    return str(span["resource"].get("service.name"))


def test_one_request_through_the_edge_is_one_trace_edge_then_pod(
    cluster: Cluster, jaeger: JaegerProcess, edge: Edge
) -> None:
    status, headers, body = edge.get("/dev/fibo?n=12")
    assert status == 200 and json.loads(body)["result"] == 144, (status, body)
    record = end_record(cluster, headers["X-Request-ID"])
    trace_id = record["trace_id"]
    # Traefik's entry point (SERVER) and its proxy call (CLIENT), the pod's SERVER
    # span: each exporter sends its batch within its schedule delay (5 s).
    spans = jaeger.wait_spans(trace_id, 3, timeout=60)
    assert {s["traceId"] for s in spans} == {trace_id}
    by_id = {s["spanId"]: s for s in spans}
    services = {service_of(s) for s in spans}
    assert services == {TRAEFIK_SERVICE_NAME, POD_SERVICE_NAME}, spans

    (pod_span,) = [s for s in spans if service_of(s) == POD_SERVICE_NAME and s["kind"] == SERVER]
    assert pod_span["spanId"] == record["span_id"]
    # k8s/tracing's resource attributes, from the downward API.
    assert pod_span["resource"]["k8s.pod.name"] == record["pod"]
    assert pod_span["resource"]["deployment.environment.name"] == "fiboserver-dev"
    assert pod_span["attributes"]["http.route"] == "/dev/fibo"
    assert pod_span["attributes"]["http.response.status_code"] == 200
    # The pod's parent is Traefik's call to it; that call's chain of parents ends
    # at Traefik's entry-point span, the trace's root.
    parent = by_id[pod_span["parentSpanId"]]
    assert service_of(parent) == TRAEFIK_SERVICE_NAME and parent["kind"] == CLIENT, parent
    chain = [parent]
    while chain[-1].get("parentSpanId"):
        chain.append(by_id[chain[-1]["parentSpanId"]])
    root = chain[-1]
    assert service_of(root) == TRAEFIK_SERVICE_NAME and root["kind"] == SERVER, chain
    assert all(service_of(s) == TRAEFIK_SERVICE_NAME for s in chain)
    say("cluster", f"edge trace {trace_id}: {len(spans)} spans; "
        + " -> ".join(f"{service_of(s)} {s['name']}" for s in [*reversed(chain), pod_span])
        + f" (pod {record['pod']})")  # fmt: skip
