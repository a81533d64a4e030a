"""`make cluster-down` leaves nothing behind, and a second one is harmless.

Runs last among the cluster tests (pytest collects this directory's files by
name), on the cluster this test session brought up (CI=true). A cluster you
started yourself stays up: `make cluster-down` ends it and lists anything left.
"""

from __future__ import annotations

import pytest

from tests.support.clusterlib import Cluster, run_make
from tools.cluster import netpol
from tools.cluster.binaries import COREDNS, KUBE_ROUTER, METRICS_SERVER
from tools.cluster.down import leftovers
from tools.cluster.procs import processes_running

pytestmark = pytest.mark.cluster


def test_down_twice_leaves_nothing_behind(cluster: Cluster) -> None:
    if not cluster.owned:
        pytest.skip("the cluster is yours (make cluster-up); `make cluster-down` removes it "
                    "and fails listing anything left behind")  # fmt: skip
    # The add-ons and kube-router run from the cache before, and with the app's
    # NetworkPolicies in place kube-router has chains and ipsets: the checks below
    # are not vacuous for them.
    cluster.deploy()
    addons = (COREDNS.bindir, METRICS_SERVER.bindir, KUBE_ROUTER.bindir)
    assert all(processes_running(d) for d in addons), [processes_running(d) for d in addons]
    assert any(c.startswith("KUBE-POD-FW-") for c in netpol.chains()), netpol.chains()
    assert netpol.ipsets(), "no ipset of kube-router's before the down"
    first = run_make("cluster-down", timeout=600)
    cluster.down_done = True
    assert first.returncode == 0, first.stdout + first.stderr
    assert "stopped kubelet" in first.stdout, first.stdout
    second = run_make("cluster-down", timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "nothing (was not running)" in second.stdout, second.stdout
    # Processes (CoreDNS, metrics-server, kube-router among them), mounts, state directories,
    # kubepods cgroups, the bridge and veths, iptables rules and chains of kube-proxy
    # and the CNI network, route_localnet,
    # and what was added under /var/log/pods, /var/log/containers, /run/containerd.
    assert leftovers(cluster.host_before) == []
    assert not any(processes_running(d) for d in addons)
    # kube-router's by name: chains KUBE-ROUTER-*, KUBE-NWPLCY-*, KUBE-POD-FW-*
    # (iptables-save), ipsets KUBE-SRC-*, KUBE-DST-* (ipset list -n).
    assert netpol.chains() == [] and netpol.ipsets() == []
