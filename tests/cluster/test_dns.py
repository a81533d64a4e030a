"""Cluster DNS: CoreDNS behind the kube-dns Service, the kubelet's clusterDNS
(tools/cluster/addons.py). Names are resolved from inside a client pod by its own
resolver; the expected addresses are the Services' ClusterIPs as the API reports
them.
"""

from __future__ import annotations

import re

import pytest

from tests.support.clusterlib import NS, Cluster
from tests.support.podclient import client_pod, resolve, run_py
from tests.support.repo import REPO_ROOT
from tests.support.testlog import say

pytestmark = pytest.mark.cluster


def cluster_ip(cluster: Cluster, ns: str, service: str) -> str:
    ip: str = cluster.get("-n", ns, "service", service)["spec"]["clusterIP"]
    return ip


def fluent_bit_api_host() -> str:
    """The host of the API address Fluent Bit's kubernetes filter calls (k8s/logging)."""
    text = (REPO_ROOT / "k8s" / "logging" / "fluent-bit.yaml").read_text()
    match = re.search(r"kube_url:\s*https://([^:/\s]+)", text)
    assert match, "no kube_url in k8s/logging/fluent-bit.yaml"
    return match.group(1)


def test_a_pod_resolves_cluster_names(cluster: Cluster) -> None:
    cluster.deploy()
    api_ip = cluster_ip(cluster, "default", "kubernetes")
    prod_ip = cluster_ip(cluster, NS, "fiboserver-prod")
    fluent_host = fluent_bit_api_host()
    missing = f"no-such-service.{NS}.svc.cluster.local"
    with client_pod(cluster, "dns-client", NS) as pod:
        resolv = run_py(cluster, pod, NS, "print(open('/etc/resolv.conf').read())").stdout
        dns_ip = cluster_ip(cluster, "kube-system", "kube-dns")
        assert f"nameserver {dns_ip}" in resolv, resolv
        got = resolve(
            cluster,
            pod,
            NS,
            "kubernetes.default.svc",
            "fiboserver-prod",
            f"fiboserver-prod.{NS}.svc.cluster.local",
            fluent_host,
            missing,
        )
    say("cluster", f"resolved from {NS}/dns-client (nameserver {dns_ip}): {got}")
    assert got["kubernetes.default.svc"] == [api_ip], got
    # The short name through the pod's search path, and the full name.
    assert got["fiboserver-prod"] == [prod_ip], got
    assert got[f"fiboserver-prod.{NS}.svc.cluster.local"] == [prod_ip], got
    assert got[fluent_host] == [api_ip], got
    # The control: a Service that does not exist does not resolve.
    assert str(got[missing]).startswith("error:"), got
