"""The NetworkPolicy (README "Deployment on Kubernetes"; docs/metrics.md): which
namespaces may reach which port.

Only the proxies in front of the service reach `http`, only Prometheus reaches
`metrics`, nothing goes out; the rules are evaluated connection by connection
with a label-selector evaluator that is itself checked. The controller classes
and admitted namespaces are each set in one manifest line.
"""

from __future__ import annotations

import re

import pytest

from tests.support.appk8s import ENVS, K8S, NAMESPACE, container_of, one, overlay_config, render
from tests.support.kube import Obj
from tests.support.repo import REPO_ROOT

# Where the proxies named in k8s/ run by default: the Ingress class `nginx` is
# ingress-nginx's controller in namespace ingress-nginx; the GatewayClass `eg` is
# Envoy Gateway, whose Envoy proxies run in envoy-gateway-system. Prometheus runs
# in `monitoring` (docs/metrics.md, "Deploying `k8s/monitoring`").
PROXY_NAMESPACES = {
    ("Ingress", "nginx"): "ingress-nginx",
    ("Gateway", "eg"): "envoy-gateway-system",
}
MONITORING_NAMESPACE = "monitoring"
METRICS_PORT = 9464  # the container port named `metrics` (README, the Deployment's numbers)


def proxy_namespaces() -> list[str]:
    """The namespaces of the Ingress controller and the Gateway data plane that the
    classes set in k8s/ingress.yaml and k8s/gateway/gateway.yaml stand for."""
    ingress = one(render("k8s"), "Ingress")["spec"]["ingressClassName"]
    gateway = one(render("k8s/gateway"), "Gateway")["spec"]["gatewayClassName"]
    return [PROXY_NAMESPACES[("Ingress", ingress)], PROXY_NAMESPACES[("Gateway", gateway)]]


def selector_matches(selector: Obj, labels: dict[str, str]) -> bool:
    """A label selector (matchLabels and the In/NotIn/Exists/DoesNotExist
    expressions) against a set of labels, as the API server evaluates it."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        present = expr["key"] in labels
        value = labels.get(expr["key"])
        ok = {
            "In": present and value in expr.get("values", []),
            "NotIn": not present or value not in expr.get("values", []),
            "Exists": present,
            "DoesNotExist": not present,
        }[expr["operator"]]
        if not ok:
            return False
    return True


def admits(policy: Obj, container: Obj, namespace: str, port: int) -> bool:
    """Whether the NetworkPolicy lets a pod in `namespace` (any pod there) open a
    TCP connection to `port` of `container`. Named ports resolve to the
    container's ports; a rule without ports or peers allows all of them."""
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    ns_labels = {"kubernetes.io/metadata.name": namespace}
    for rule in policy.get("ingress", []):
        ports = [named.get(p["port"], p["port"]) for p in rule.get("ports", [])]
        if ports and port not in ports:
            continue
        for peer in rule.get("from", [{}]):
            assert set(peer) == {"namespaceSelector"}, f"unexpected peer {peer}"
            if selector_matches(peer["namespaceSelector"], ns_labels):
                return True
    return False


@pytest.mark.parametrize("env", ENVS)
def test_network_policy_rules(env: str) -> None:
    """Exactly two rules: the proxies in front of the service to `http`, Prometheus
    to `metrics`; no egress at all. Ports and namespaces checked against the
    Service, the Deployment, the Ingress and the Gateway."""
    objs = render("k8s")
    policy = one(objs, "NetworkPolicy", f"fiboserver-{env}")["spec"]
    container = container_of(env)
    proxies = proxy_namespaces()
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["egress"] == []
    assert policy["ingress"] == [
        {
            "from": [
                {
                    "namespaceSelector": {
                        "matchExpressions": [
                            {"key": "kubernetes.io/metadata.name", "operator": "In",
                             "values": proxies}
                        ]
                    }
                }
            ],
            "ports": [{"protocol": "TCP", "port": "http"}],
        },
        {
            "from": [
                {"namespaceSelector": {"matchLabels": {
                    "kubernetes.io/metadata.name": MONITORING_NAMESPACE}}}
            ],
            "ports": [{"protocol": "TCP", "port": "metrics"}],
        },
    ]  # fmt: skip
    # The port names exist on the container: `http` is what the Service targets,
    # `metrics` is 9464 and no Service port leads to it.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": overlay_config(env).port, "metrics": METRICS_PORT}
    svc_ports = one(objs, "Service", f"fiboserver-{env}")["spec"]["ports"]
    assert [p["targetPort"] for p in svc_ports] == ["http"]
    # And what that means, connection by connection.
    http, metrics = ports["http"], ports["metrics"]
    for ns in proxies:
        assert admits(policy, container, ns, http)
        assert not admits(policy, container, ns, metrics)
    assert admits(policy, container, MONITORING_NAMESPACE, metrics)
    assert not admits(policy, container, MONITORING_NAMESPACE, http)
    for ns in (NAMESPACE, "default", "kube-system", "logging"):
        assert not admits(policy, container, ns, http), ns
        assert not admits(policy, container, ns, metrics), ns


def test_network_policy_evaluator() -> None:
    """The evaluator above is not vacuous: it admits and refuses as Kubernetes does."""
    container = {"ports": [{"name": "http", "containerPort": 8080}]}
    by_name = {"kubernetes.io/metadata.name": "a"}
    allow_a: Obj = {"ingress": [{"from": [{"namespaceSelector": {"matchLabels": by_name}}],
                            "ports": [{"port": "http"}]}]}  # fmt: skip
    assert admits(allow_a, container, "a", 8080)
    assert not admits(allow_a, container, "b", 8080)
    assert not admits(allow_a, container, "a", 9464)
    allow_all_ns: Obj = {"ingress": [{"from": [{"namespaceSelector": {}}]}]}
    assert admits(allow_all_ns, container, "b", 9464)
    assert not admits({"ingress": []}, container, "a", 8080)
    expr = {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                                  "values": ["a"]}]}  # fmt: skip
    assert selector_matches(expr, {"kubernetes.io/metadata.name": "b"})
    assert not selector_matches(expr, by_name)


def test_controller_names_are_set_in_one_place() -> None:
    """The ingress class, the Gateway class and each namespace the NetworkPolicy
    admits: each appears in exactly one manifest line of the app's k8s/ tree."""
    # Their own stacks, with their own namespaces (k8s/tracing's egress is checked
    # against its endpoint in test_k8s_tracing.py).
    own = {"logging", "monitoring", "tracing"}
    files = [p for p in K8S.rglob("*.yaml") if not own & set(p.relative_to(K8S).parts)]

    def lines_with(pattern: str) -> list[str]:
        return [
            f"{p.relative_to(REPO_ROOT)}:{n}"
            for p in files
            for n, line in enumerate(p.read_text().splitlines(), 1)
            if not line.strip().startswith("#") and re.search(pattern, line)
        ]

    for needle in ("ingressClassName:", "gatewayClassName:", "kubernetes.io/metadata.name"):
        found = lines_with(re.escape(needle))
        assert len(found) == (2 if needle.startswith("kubernetes.io") else 1), (needle, found)
    for namespace in [*proxy_namespaces(), MONITORING_NAMESPACE]:
        found = lines_with(rf"(^|[\s:-]){re.escape(namespace)}\s*$")
        assert len(found) == 1, (namespace, found)
