"""The cluster's add-ons: CoreDNS (the cluster DNS) and metrics-server (the
metrics.k8s.io API the HPA reads). Both run as host processes like the control
plane: the API server listens on loopback only, which no pod can reach.

Each sits behind a selectorless Service whose one endpoint is the node address
(an EndpointSlice written here): pods reach kube-dns's ClusterIP through
kube-proxy, the aggregator reaches metrics-server's endpoint directly. `manifests`
is pure (tests/cluster/test_layout.py checks it); `start` applies it and starts
the processes.
"""

from __future__ import annotations

import base64
import json
import urllib.request
from typing import Any

from tools.cluster.binaries import COREDNS, METRICS_SERVER
from tools.cluster.kubectl import kubectl
from tools.cluster.layout import (
    CLUSTER_DNS_IP,
    COREDNS_READY,
    DNS_PORT,
    METRICS_SERVER_PORT,
    PKI,
    STATE,
    corefile,
)
from tools.cluster.pki import CLIENTS
from tools.cluster.procs import start, wait_component

Obj = dict[str, Any]
NAMES = ("coredns", "metrics-server")  # process names (RUN/pids), stopped by `down`
METRICS_API = "v1beta1.metrics.k8s.io"
MANAGED_BY = "fiboserver-cluster"


def binding(
    kind: str, name: str, role_kind: str, role: str, user: str, namespace: str | None = None
) -> Obj:
    meta: Obj = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }


def role(name: str, rules: list[Obj]) -> Obj:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": rules,
    }


def _host_service(
    name: str, ip: str, ports: list[tuple[str, str, int, int]], cluster_ip: str | None = None
) -> list[Obj]:
    """A Service without selector and its EndpointSlice: the node address.
    ports: (name, protocol, service port, host port)."""
    spec: Obj = {
        "ports": [{"name": n, "protocol": proto, "port": port} for n, proto, port, _ in ports]
    }
    if cluster_ip:
        spec["clusterIP"] = cluster_ip
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": MANAGED_BY}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "kube-system", "labels": labels},
        "spec": spec,
    }
    eps = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-node",
            "namespace": "kube-system",
            "labels": {
                **labels,
                "kubernetes.io/service-name": name,
                # Not the EndpointSlice controller's: it leaves this slice alone.
                "endpointslice.kubernetes.io/managed-by": MANAGED_BY,
            },
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}],
        "ports": [{"name": n, "protocol": proto, "port": host} for n, proto, _, host in ports],
    }
    return [service, eps]


def manifests(ip: str, ca_pem: bytes) -> list[Obj]:
    """RBAC for both add-ons' client identities, their Services, the APIService."""
    return [*_coredns_objects(ip), *_metrics_server_objects(ip, ca_pem)]


def _coredns_objects(ip: str) -> list[Obj]:
    dns_user = CLIENTS["coredns"][0]
    watch = ["list", "watch"]
    return [
        # What the kubernetes plugin watches (upstream's system:coredns role).
        role(
            "fiboserver:coredns",
            [
                {
                    "apiGroups": [""],
                    "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": watch,
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": watch,
                },
            ],
        ),
        binding(
            "ClusterRoleBinding",
            "fiboserver:coredns",
            "ClusterRole",
            "fiboserver:coredns",
            dns_user,
        ),
        *_host_service(
            "kube-dns",
            ip,
            [("dns", "UDP", 53, DNS_PORT), ("dns-tcp", "TCP", 53, DNS_PORT)],
            cluster_ip=CLUSTER_DNS_IP,
        ),
    ]


def _metrics_server_objects(ip: str, ca_pem: bytes) -> list[Obj]:
    ms_user = CLIENTS["metrics-server"][0]
    return [
        # Scraping the kubelets (nodes/metrics) and listing what it reports on.
        role(
            "fiboserver:metrics-server",
            [
                {"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]},
                {
                    "apiGroups": [""],
                    "resources": ["pods", "nodes"],
                    "verbs": ["get", "list", "watch"],
                },
            ],
        ),
        binding(
            "ClusterRoleBinding",
            "fiboserver:metrics-server",
            "ClusterRole",
            "fiboserver:metrics-server",
            ms_user,
        ),
        # Delegated authentication and authorization of the aggregator's requests.
        binding(
            "ClusterRoleBinding",
            "fiboserver:metrics-server:auth-delegator",
            "ClusterRole",
            "system:auth-delegator",
            ms_user,
        ),
        binding(
            "RoleBinding",
            "fiboserver:metrics-server:auth-reader",
            "Role",
            "extension-apiserver-authentication-reader",
            ms_user,
            namespace="kube-system",
        ),
        *_host_service("metrics-server", ip, [("https", "TCP", 443, METRICS_SERVER_PORT)]),
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": METRICS_API},
            "spec": {
                "group": "metrics.k8s.io",
                "version": "v1beta1",
                "service": {"name": "metrics-server", "namespace": "kube-system", "port": 443},
                # The serving certificate is checked, not skipped: the cluster CA signed it.
                "caBundle": base64.b64encode(ca_pem).decode(),
                # upstream's values: metrics.k8s.io sorts after the built-in groups.
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        },
    ]


def _apiservice_available() -> bool:
    proc = kubectl(
        "get",
        "apiservice",
        METRICS_API,
        "-o",
        "jsonpath={.status.conditions[?(@.type=='Available')].status}",
    )
    return proc.returncode == 0 and proc.stdout.strip() == "True"


def _ready(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as r:
        return bool(r.status == 200)


def apply_objects(objs: list[Obj], what: str) -> None:
    """`kubectl apply` of `objs` as one List; a failure ends `up` with kubectl's words."""
    doc = {"apiVersion": "v1", "kind": "List", "items": objs}
    proc = kubectl("apply", "-f", "-", stdin=json.dumps(doc))
    if proc.returncode != 0:
        raise SystemExit(f"cluster: applying {what} failed: {proc.stderr.strip()}")


def start_addons(ip: str) -> None:
    """Apply `manifests`, start CoreDNS and metrics-server, wait until both serve."""
    apply_objects(manifests(ip, (PKI / "ca.crt").read_bytes()), "the add-ons")
    conf = STATE / "Corefile"
    conf.write_text(corefile(ip, PKI / "coredns.kubeconfig"))
    start("coredns", [COREDNS.path("coredns"), "-conf", conf])
    ms_kubeconfig = PKI / "metrics-server.kubeconfig"
    start(
        "metrics-server",
        [
            METRICS_SERVER.path("metrics-server"),
            "--bind-address",
            ip,
            "--secure-port",
            str(METRICS_SERVER_PORT),
            "--tls-cert-file",
            PKI / "metrics-server-serving.crt",
            "--tls-private-key-file",
            PKI / "metrics-server-serving.key",
            "--kubeconfig",
            ms_kubeconfig,
            "--authentication-kubeconfig",
            ms_kubeconfig,
            "--authorization-kubeconfig",
            ms_kubeconfig,
            # The kubelet's serving certificate is checked against the cluster CA that
            # signed it (not --kubelet-insecure-tls): its IP SAN is the InternalIP.
            "--kubelet-certificate-authority",
            PKI / "ca.crt",
            "--kubelet-preferred-address-types",
            "InternalIP",
            "--kubelet-use-node-status-port",
            # 15 s: the HPA controller's sync period; upstream's manifests use the same.
            "--metric-resolution",
            "15s",
        ],
    )
    wait_component("CoreDNS", lambda: _ready(f"http://{COREDNS_READY}/ready"), 60, "coredns")
    wait_component("metrics-server", _apiservice_available, 120, "metrics-server")
