"""The project's NetworkPolicy (k8s/base/networkpolicy.yaml) enforced by a real
engine: kube-router's policy controller (tools/cluster/netpol.py).

Every connection starts inside a pod (`kubectl exec`): client pods in three
namespaces, the one the Ingress controller runs in (admitted to `http`),
Prometheus's (admitted to `metrics` only) and one the policy names nowhere, and
one of dev's own pods, whose egress the policy denies. The namespaces come from the
policy as `kubectl kustomize k8s` renders it, the ports and path from dev's
Deployment. Each connection is made with the policy in place, then again with it
deleted (the control: the same connection succeeds), then the policy is applied
again. The engine applies a change within seconds: each phase is observed until it
looks as expected or 90 s have passed, and the tests assert on what was observed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.appk8s import container_of, one, render
from tests.support.clusterlib import NS, PROXIES_NS, Cluster, Obj
from tests.support.podclient import delete_pod, ensure_namespace, http_get, resolve, start_pod
from tests.support.testlog import say

pytestmark = pytest.mark.cluster

ENV = "dev"
# dev's instance label, and the name its overlay gives k8s/base's NetworkPolicy
POLICY = f"fiboserver-{ENV}"
PROXIES = PROXIES_NS  # the Ingress controller's namespace
MONITORING = "monitoring"
OUTSIDE = "np-outside"  # named by no rule
NAME_LABEL = "kubernetes.io/metadata.name"
CLIENT = "np-client"
LISTENER = "np-listener"  # a pod no policy selects, serving HTTP: the egress target
LISTEN_PORT = 8080
LISTEN = f"""
import functools, http.server
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory="/tmp")
http.server.ThreadingHTTPServer(("", {LISTEN_PORT}), handler).serve_forever()
"""
DNS_NAME = "kubernetes.default.svc"
SETTLE = 90.0


def admitted(policy: Obj, port: str) -> set[str]:
    """Namespaces (by name) the policy's ingress rules admit to `port`."""
    names: set[str] = set()
    for rule in policy["spec"].get("ingress", []):
        if port not in {p.get("port") for p in rule.get("ports", [])}:
            continue
        for peer in rule.get("from", []):
            selector = peer.get("namespaceSelector", {})
            names.update(v for k, v in selector.get("matchLabels", {}).items() if k == NAME_LABEL)
            for expr in selector.get("matchExpressions", []):
                if expr["key"] == NAME_LABEL and expr["operator"] == "In":
                    names.update(expr["values"])
    return names


@dataclass(frozen=True)
class Probe:
    check: str
    namespace: str  # where the connecting pod runs
    pod: str
    target: str  # address:port/path
    admitted: bool  # connects while the policy is in place


@dataclass(frozen=True)
class Observation:
    http: dict[Probe, int | str]  # status, or the error
    dns: list[str] | str  # what DNS_NAME resolves to from the dev pod, or the error

    def as_expected(self, policy_on: bool) -> bool:
        # The policy's egress is empty: not even DNS.
        dns_ok = isinstance(self.dns, list) != policy_on
        return dns_ok and all((r == 200) == (p.admitted or not policy_on)
                              for p, r in self.http.items())  # fmt: skip

    def of(self, check: str) -> list[int | str]:
        return [r for p, r in self.http.items() if p.check == check]


def probes(cluster: Cluster) -> list[Probe]:
    ports = {p["name"]: p["containerPort"] for p in container_of(ENV)["ports"]}
    path = container_of(ENV)["readinessProbe"]["httpGet"]["path"]
    pods = cluster.ready_pods(POLICY)
    ips = [p["status"]["podIP"] for p in pods]
    listener = cluster.get("-n", OUTSIDE, "pod", LISTENER)["status"]["podIP"]
    http = [f"{ip}:{ports['http']}{path}" for ip in ips]
    metrics = [f"{ip}:{ports['metrics']}/metrics" for ip in ips]
    own = pods[0]["metadata"]["name"]
    return [
        *(Probe("outside-http", OUTSIDE, CLIENT, t, False) for t in http),
        *(Probe("proxies-http", PROXIES, CLIENT, t, True) for t in http),
        *(Probe("monitoring-metrics", MONITORING, CLIENT, t, True) for t in metrics),
        *(Probe("monitoring-http", MONITORING, CLIENT, t, False) for t in http),
        Probe("egress", NS, own, f"{listener}:{LISTEN_PORT}/", False),
        # The listener serves whatever the policy: a refusal above is the dev pod's egress.
        Probe("listener-up", OUTSIDE, CLIENT, f"{listener}:{LISTEN_PORT}/", True),
    ]


def observe(cluster: Cluster, probes: list[Probe]) -> Observation:
    results: dict[Probe, int | str] = {}
    for ns, pod in dict.fromkeys((p.namespace, p.pod) for p in probes):
        mine = [p for p in probes if (p.namespace, p.pod) == (ns, pod)]
        got = http_get(cluster, pod, ns, *(p.target for p in mine))
        results.update({p: got[p.target] for p in mine})
    own = next(p for p in probes if p.check == "egress")
    dns = resolve(cluster, own.pod, NS, DNS_NAME)[DNS_NAME]
    return Observation(results, dns)


def settle(cluster: Cluster, probes: list[Probe], policy_on: bool, phase: str) -> Observation:
    """Observe until it looks as the policy's state says, or SETTLE s have passed."""
    t0 = time.monotonic()
    while True:
        obs = observe(cluster, probes)
        if obs.as_expected(policy_on) or time.monotonic() - t0 > SETTLE:
            break
        time.sleep(2)
    say("cluster", f"network policy, {phase} after {time.monotonic() - t0:.0f} s: "
        + "; ".join(f"{p.check} {p.target} -> {r}" for p, r in obs.http.items())
        + f"; {DNS_NAME} from {own_pod(probes)} -> {obs.dns}")  # fmt: skip
    return obs


def own_pod(probes: list[Probe]) -> str:
    return next(p.pod for p in probes if p.check == "egress")


@pytest.fixture(scope="module")
def observed(cluster: Cluster) -> Iterator[dict[str, Observation]]:
    """{"policy": ..., "deleted": ..., "restored": ...}: the probes in each phase."""
    cluster.deploy()
    policy = one(render("k8s"), "NetworkPolicy", POLICY)
    assert PROXIES in admitted(policy, "http"), admitted(policy, "http")
    assert admitted(policy, "metrics") == {MONITORING}, admitted(policy, "metrics")
    assert MONITORING not in admitted(policy, "http") and OUTSIDE not in admitted(policy, "http")
    spaces = (OUTSIDE, PROXIES, MONITORING)
    try:
        for ns in spaces:
            ensure_namespace(cluster, ns)
            start_pod(cluster, CLIENT, ns)
        start_pod(cluster, LISTENER, OUTSIDE, command=LISTEN)
        plan = probes(cluster)
        seen = {"policy": settle(cluster, plan, True, "in place")}
        cluster.kubectl("-n", NS, "delete", "networkpolicy", POLICY)
        seen["deleted"] = settle(cluster, plan, False, "deleted")
        cluster.reapply()
        seen["restored"] = settle(cluster, plan, True, "applied again")
        yield seen
    finally:
        cluster.reapply()
        # The namespaces stay (the HPA test's load runs in PROXIES), their pods go.
        delete_pod(cluster, LISTENER, OUTSIDE)
        for ns in spaces:
            delete_pod(cluster, CLIENT, ns)


def refused(results: list[int | str]) -> bool:
    return bool(results) and all(r != 200 for r in results)


def answered(results: list[int | str]) -> bool:
    return bool(results) and all(r == 200 for r in results)


def test_a_namespace_the_policy_does_not_admit_gets_no_connection_to_http(
    observed: dict[str, Observation],
) -> None:
    assert refused(observed["policy"].of("outside-http")), observed["policy"].of("outside-http")
    assert answered(observed["deleted"].of("outside-http")), observed["deleted"].of("outside-http")


def test_the_ingress_controllers_namespace_gets_200_from_http(
    observed: dict[str, Observation],
) -> None:
    assert answered(observed["policy"].of("proxies-http")), observed["policy"].of("proxies-http")
    assert answered(observed["deleted"].of("proxies-http")), observed["deleted"].of("proxies-http")


def test_monitoring_reaches_metrics_but_not_http(observed: dict[str, Observation]) -> None:
    with_policy, without = observed["policy"], observed["deleted"]
    assert answered(with_policy.of("monitoring-metrics")), with_policy.of("monitoring-metrics")
    assert refused(with_policy.of("monitoring-http")), with_policy.of("monitoring-http")
    assert answered(without.of("monitoring-http")), without.of("monitoring-http")


def test_a_fiboserver_pod_opens_no_connection_out(observed: dict[str, Observation]) -> None:
    with_policy, without = observed["policy"], observed["deleted"]
    assert refused(with_policy.of("egress")), with_policy.of("egress")
    assert answered(with_policy.of("listener-up")), with_policy.of("listener-up")
    assert answered(without.of("egress")), without.of("egress")


def test_a_fiboserver_pod_resolves_no_name(observed: dict[str, Observation]) -> None:
    # The policy admits no egress at all, DNS included (k8s/base/networkpolicy.yaml:
    # the pods need none); CoreDNS answers the same pod once the policy is gone.
    assert isinstance(observed["policy"].dns, str), observed["policy"].dns
    assert isinstance(observed["deleted"].dns, list), observed["deleted"].dns


def test_the_policy_applied_again_is_enforced_again(observed: dict[str, Observation]) -> None:
    assert observed["restored"].as_expected(policy_on=True), observed["restored"]
