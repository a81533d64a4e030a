"""The NetworkPolicy engine (docs/network-policy.md): kube-router v2.1.0's policy
controller alone (its router, service proxy and load-balancer allocator off), a
host process like the add-ons (tools/cluster/addons.py). It watches pods,
namespaces and NetworkPolicies through the API on loopback with a client
certificate of its own, and enforces them for this node's pods with iptables
rules (filter table) and ipsets. kube-proxy still serves the Services and the
bridge CNI still wires the pods.

What it installs, by name (kube-router's pkg/controllers/netpol): the chains
KUBE-ROUTER-INPUT, -FORWARD and -OUTPUT, each jumped to from the first rule of the
built-in chain of its name, KUBE-NWPLCY-DEFAULT and one KUBE-NWPLCY-* per policy,
one KUBE-POD-FW-* per pod; the ipsets KUBE-SRC-* and KUBE-DST-*. It removes none of
them when it stops: `down` does, the chains with kube-proxy's (every KUBE-* chain),
then the ipsets, which the kernel keeps while a rule uses them.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tools.cluster.addons import Obj, apply_objects, binding, role
from tools.cluster.binaries import KUBE_ROUTER
from tools.cluster.layout import NODE_NAME, PKI, SERVICE_CIDR
from tools.cluster.pki import CLIENTS
from tools.cluster.procs import start, wait_component

NAME = "kube-router"  # process name (RUN/pids), stopped by `down`
ROLE = "fiboserver:kube-router"
CHAIN_PREFIXES = ("KUBE-ROUTER-", "KUBE-NWPLCY-", "KUBE-POD-FW-")
IPSET_PREFIXES = ("KUBE-SRC-", "KUBE-DST-")
HOOKS = ("INPUT", "FORWARD", "OUTPUT")


def manifests() -> list[Obj]:
    """Its ClusterRole and binding: read only. The policy controller reads pods,
    namespaces and NetworkPolicies, and its node (`get`, for the InternalIP); the
    informer factory kube-router shares among its controllers also starts Services,
    Endpoints, EndpointSlices and Nodes, and it waits for every one to sync."""
    watch = ["list", "watch"]
    rules: list[Obj] = [
        {
            "apiGroups": [""],
            "resources": ["pods", "namespaces", "services", "endpoints"],
            "verbs": watch,
        },
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", *watch]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": watch},
        {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": watch},
    ]
    return [
        role(ROLE, rules),
        binding("ClusterRoleBinding", ROLE, "ClusterRole", ROLE, CLIENTS[NAME][0]),
    ]


def argv(kubeconfig: Path) -> list[str]:
    return [
        str(KUBE_ROUTER.path("kube-router")),
        "--kubeconfig", str(kubeconfig),
        # The policy controller only: kube-proxy serves Services, the bridge CNI
        # routes, nothing allocates LoadBalancer addresses (all four default to
        # on but the last).
        "--run-firewall=true", "--run-router=false", "--run-service-proxy=false",
        "--run-loadbalancer=false",
        # The node whose pods it guards (those with its InternalIP as hostIP).
        "--hostname-override", NODE_NAME,
        # Its INPUT chain lets traffic to ClusterIPs through to kube-proxy's rules;
        # its default range is 10.96.0.0/12.
        "--service-cluster-ip-range", SERVICE_CIDR,
        # Off: its /healthz server listens on every address of the host and serves
        # Go's default mux, on which kube-router's main registers net/http/pprof.
        # (Its metrics port is off by default.)
        "--health-port=0",
    ]  # fmt: skip


def _filter_table() -> list[str]:
    out = subprocess.run(["iptables-save", "-t", "filter"], capture_output=True, text=True,
                         timeout=30, check=False)  # fmt: skip
    return out.stdout.splitlines()


def its_chains(table: list[str]) -> list[str]:
    """Its chains among the lines of `iptables-save -t filter`."""
    names = (ln[1:].split()[0] for ln in table if ln.startswith(":"))
    return sorted(n for n in names if n.startswith(CHAIN_PREFIXES))


def hooked_in(table: list[str]) -> bool:
    """Its default chain exists and each built-in chain jumps to its own: it enforces."""
    return "KUBE-NWPLCY-DEFAULT" in its_chains(table) and all(
        any(ln.startswith(f"-A {hook} ") and ln.endswith(f"-j KUBE-ROUTER-{hook}") for ln in table)
        for hook in HOOKS
    )


def chains() -> list[str]:
    """Its chains in the filter table now."""
    return its_chains(_filter_table())


def ipsets() -> list[str]:
    """Its ipsets now (`ipset list -n`); none where ipset is not installed."""
    if shutil.which("ipset") is None:
        return []
    out = subprocess.run(["ipset", "list", "-n"], capture_output=True, text=True, timeout=30,
                         check=False)  # fmt: skip
    return sorted(n for n in out.stdout.split() if n.startswith(IPSET_PREFIXES))


def remove_ipsets() -> None:
    """Destroy its ipsets; run once no rule uses them (after the chains are gone)."""
    for name in ipsets():
        subprocess.run(["ipset", "destroy", name], capture_output=True, timeout=30, check=False)


def start_netpol() -> None:
    """Apply its RBAC, start it, wait until its chains are hooked in."""
    apply_objects(manifests(), "kube-router's RBAC")
    start(NAME, argv(PKI / f"{NAME}.kubeconfig"))
    wait_component("kube-router", lambda: hooked_in(_filter_table()), 120, NAME)
