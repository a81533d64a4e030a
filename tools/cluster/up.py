"""`make cluster-up`: a single-node Kubernetes from plain processes, in the order
upstream's hack/local-up-cluster.sh starts them: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, containerd, kubelet, kube-proxy.
Then the add-ons (CoreDNS, metrics-server), the NetworkPolicy engine (kube-router),
the namespace and the TLS Secret (`make certgen`, `make tls-secret`).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.support.repo import REPO_ROOT
from tools.cluster.addons import NAMES as ADDONS
from tools.cluster.addons import start_addons
from tools.cluster.binaries import CONTAINERD, ETCD, KUBERNETES, build_all, missing_tools
from tools.cluster.images import load_images
from tools.cluster.kubectl import kubectl
from tools.cluster.layout import (
    API_PORT,
    CLUSTER_CIDR,
    CNI_CONF_DIR,
    CONTAINERD_SOCK,
    DOT,
    ETCD_CLIENT,
    ETCD_DATA,
    ETCD_PEER,
    HOST_DIRS,
    KUBECONFIG,
    KUBELET_ROOT,
    LOGS,
    NODE_NAME,
    OWNER,
    PKI,
    ROUTE_LOCALNET,
    RUN,
    SERVICE_CIDR,
    STATE,
    cni_conflist,
    containerd_toml,
    host_networks,
    kube_proxy_yaml,
    kubelet_yaml,
    node_ip,
    overlaps,
    scheduler_yaml,
)
from tools.cluster.netpol import NAME as NETPOL
from tools.cluster.netpol import start_netpol
from tools.cluster.pki import CLIENTS, FRONT_PROXY_CLIENT, kubeconfig, make_pki
from tools.cluster.procs import pid_of, start, wait_component

K = KUBERNETES.path
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
              "containerd", "kubelet", "kube-proxy", *ADDONS, NETPOL)  # fmt: skip


def say(text: str) -> None:
    print(f"cluster: {text}", flush=True)


def kubectl_out(*args: str, check: bool = True, timeout: float = 60) -> str:
    """kubectl's stdout; a failure (with `check`) ends `up` with kubectl's words."""
    proc = kubectl(*args, timeout=timeout)
    if check and proc.returncode != 0:
        raise SystemExit(f"cluster: kubectl {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def running() -> list[str]:
    return [c for c in COMPONENTS if pid_of(c) is not None]


def owner() -> dict[str, object]:
    try:
        data: dict[str, object] = json.loads(OWNER.read_text())
    except (OSError, ValueError):
        return {}
    return data


def host_dirs() -> dict[str, list[str] | None]:
    """What HOST_DIRS hold now (None: the directory does not exist)."""
    return {str(d): sorted(p.name for p in d.iterdir()) if d.is_dir() else None
            for d in HOST_DIRS}  # fmt: skip


def _api_ready() -> bool:
    ctx = ssl.create_default_context(cafile=str(PKI / "ca.crt"))
    ctx.load_cert_chain(str(PKI / "admin.crt"), str(PKI / "admin.key"))
    with urllib.request.urlopen(f"https://127.0.0.1:{API_PORT}/readyz", context=ctx,
                                timeout=2) as r:  # fmt: skip
        return bool(r.status == 200)


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as r:
        return bool(r.status == 200)


def _write_configs(ip: str) -> None:
    for d in (STATE, RUN, KUBELET_ROOT, CNI_CONF_DIR, ETCD_DATA, LOGS, DOT):
        d.mkdir(parents=True, exist_ok=True)
    ETCD_DATA.chmod(0o700)
    # The Service range's first address: the `kubernetes` Service's ClusterIP.
    make_pki(PKI, NODE_NAME, ip, service_ip=str(ipaddress.IPv4Network(SERVICE_CIDR)[1]))
    server = f"https://127.0.0.1:{API_PORT}"
    for name in (*CLIENTS, "kubelet"):
        (PKI / f"{name}.kubeconfig").write_text(kubeconfig(PKI, name, server))
    KUBECONFIG.write_text((PKI / "admin.kubeconfig").read_text())
    KUBECONFIG.chmod(0o600)
    (STATE / "containerd.toml").write_text(containerd_toml())
    (CNI_CONF_DIR / "10-fiboserver.conflist").write_text(cni_conflist())
    (STATE / "kubelet.yaml").write_text(kubelet_yaml(ip))
    (STATE / "kube-proxy.yaml").write_text(kube_proxy_yaml(PKI / "kube-proxy.kubeconfig"))
    (STATE / "kube-scheduler.yaml").write_text(scheduler_yaml(PKI / "scheduler.kubeconfig"))


def _apiserver_argv(ip: str) -> list[str | Path]:
    return [
        K("kube-apiserver"), "--etcd-servers", ETCD_CLIENT,
        # Loopback only: kubectl and every component run on this host.
        "--bind-address", "127.0.0.1", "--secure-port", str(API_PORT),
        # The node address; the `kubernetes` Service keeps no endpoints (no pod here
        # talks to the API: automountServiceAccountToken is false; CoreDNS still
        # resolves its name to the ClusterIP).
        "--advertise-address", ip, "--endpoint-reconciler-type", "none",
        "--service-cluster-ip-range", SERVICE_CIDR,
        "--tls-cert-file", PKI / "apiserver.crt", "--tls-private-key-file", PKI / "apiserver.key",
        "--client-ca-file", PKI / "ca.crt",
        "--kubelet-client-certificate", PKI / "apiserver-kubelet-client.crt",
        "--kubelet-client-key", PKI / "apiserver-kubelet-client.key",
        "--kubelet-certificate-authority", PKI / "ca.crt",
        # The node name is not in DNS; its InternalIP is in the kubelet's certificate.
        "--kubelet-preferred-address-types", "InternalIP",
        "--service-account-issuer", "https://kubernetes.default.svc",
        "--service-account-key-file", PKI / "service-account.pub",
        "--service-account-signing-key-file", PKI / "service-account.key",
        "--authorization-mode", "Node,RBAC",
        # The defaults (PodSecurity among them) plus the Node authorizer's partner.
        "--enable-admission-plugins", "NodeRestriction",
        "--allow-privileged=false",
        # The aggregation layer (metrics.k8s.io, tools/cluster/addons.py): the
        # front proxy's identity, checked by metrics-server against its own CA.
        "--requestheader-client-ca-file", PKI / "front-proxy-ca.crt",
        "--requestheader-allowed-names", FRONT_PROXY_CLIENT,
        "--requestheader-username-headers", "X-Remote-User",
        "--requestheader-group-headers", "X-Remote-Group",
        "--requestheader-extra-headers-prefix", "X-Remote-Extra-",
        "--proxy-client-cert-file", PKI / f"{FRONT_PROXY_CLIENT}.crt",
        "--proxy-client-key-file", PKI / f"{FRONT_PROXY_CLIENT}.key",
        # Dial metrics-server's endpoint, not its ClusterIP: no kube-proxy needed.
        "--enable-aggregator-routing",
    ]  # fmt: skip


def _control_plane(ip: str) -> None:
    start("etcd", [
        ETCD.path("etcd"), "--name", NODE_NAME, "--data-dir", ETCD_DATA,
        "--listen-client-urls", ETCD_CLIENT, "--advertise-client-urls", ETCD_CLIENT,
        "--listen-peer-urls", ETCD_PEER, "--initial-advertise-peer-urls", ETCD_PEER,
        "--initial-cluster", f"{NODE_NAME}={ETCD_PEER}",
        "--listen-metrics-urls", "http://127.0.0.1:2381",
    ])  # fmt: skip
    wait_component("etcd", lambda: _http_ok("http://127.0.0.1:2381/health"), 60, "etcd")
    start("kube-apiserver", _apiserver_argv(ip))
    wait_component("kube-apiserver", _api_ready, 120, "kube-apiserver")
    # The API server may call the kubelet (logs, exec) with its client certificate.
    kubectl_out("create", "clusterrolebinding", "apiserver-kubelet-client",
            "--clusterrole", "system:kubelet-api-admin",
            "--user", CLIENTS["apiserver-kubelet-client"][0], check=False)  # fmt: skip
    start("kube-controller-manager", [
        K("kube-controller-manager"), "--kubeconfig", PKI / "controller-manager.kubeconfig",
        "--authentication-kubeconfig", PKI / "controller-manager.kubeconfig",
        "--authorization-kubeconfig", PKI / "controller-manager.kubeconfig",
        "--bind-address", "127.0.0.1", "--leader-elect=false",
        "--use-service-account-credentials",
        "--service-account-private-key-file", PKI / "service-account.key",
        "--root-ca-file", PKI / "ca.crt", "--cluster-cidr", CLUSTER_CIDR,
        "--service-cluster-ip-range", SERVICE_CIDR,
        # Every default controller: deployment, replicaset, endpointslice,
        # disruption (PDB), horizontal-pod-autoscaling, namespace, ...
        "--controllers", "*",
    ])  # fmt: skip
    start("kube-scheduler", [
        K("kube-scheduler"), "--config", STATE / "kube-scheduler.yaml",
        "--authentication-kubeconfig", PKI / "scheduler.kubeconfig",
        "--authorization-kubeconfig", PKI / "scheduler.kubeconfig",
        "--bind-address", "127.0.0.1",
    ])  # fmt: skip


def _node(ip: str) -> dict[str, str]:
    start("containerd", [CONTAINERD.path("containerd"), "--config", STATE / "containerd.toml"])
    wait_component("containerd", lambda: CONTAINERD_SOCK.is_socket(), 60, "containerd")
    podman = shutil.which("podman") or "podman"
    t0 = time.monotonic()
    images = load_images(podman)
    say(f"images built and imported into containerd in {time.monotonic() - t0:.0f} s: "
        + ", ".join(f"{k} {v}" for k, v in images.items()))  # fmt: skip
    # The image the manifests must name on this cluster (clusterlib.Cluster.render).
    OWNER.write_text(json.dumps({**owner(), "image": images["app"]}))
    start("kubelet", [
        K("kubelet"), "--config", STATE / "kubelet.yaml",
        "--kubeconfig", PKI / "kubelet.kubeconfig",
        "--root-dir", KUBELET_ROOT, "--hostname-override", NODE_NAME, "--node-ip", ip,
    ])  # fmt: skip
    wait_component(
        "the node",
        lambda: (
            "True"
            in kubectl_out(
                "get",
                "node",
                NODE_NAME,
                "-o",
                "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                check=False,
            )
        ),
        120,
        "kubelet",
    )
    start("kube-proxy", [K("kube-proxy"), "--config", STATE / "kube-proxy.yaml"])
    wait_component(
        "kube-proxy", lambda: _http_ok("http://127.0.0.1:10256/healthz"), 60, "kube-proxy"
    )
    return images


def _tls_secret() -> None:
    env = {**os.environ, "KUBECONFIG": str(KUBECONFIG)}
    for target in ("certgen", "tls-secret"):
        proc = subprocess.run(["make", "-s", "-C", str(REPO_ROOT), target], env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        if proc.returncode != 0:
            raise SystemExit(f"cluster: make {target} failed:\n{proc.stdout}{proc.stderr}")


def up() -> int:
    missing = missing_tools()
    if missing:
        raise SystemExit("cluster: cannot start, missing:\n  " + "\n  ".join(missing))
    live = running()
    if live:
        who = owner().get("repo", "?")
        if who == str(REPO_ROOT) and len(live) == len(COMPONENTS) and KUBECONFIG.exists():
            say(f"already up (kubeconfig {KUBECONFIG.relative_to(REPO_ROOT)})")
            return 0
        raise SystemExit(f"cluster: a cluster started from {who} is running ({', '.join(live)}); "
                         f"`make -C {who} cluster-down` first")  # fmt: skip
    from tools.cluster.down import down  # a previous run that died: clear what it left

    down(quiet=True)
    clash = overlaps(host_networks())
    if clash:
        raise SystemExit("cluster: address ranges collide:\n  " + "\n  ".join(clash))
    t_all = time.monotonic()
    LOGS.mkdir(parents=True, exist_ok=True)
    spent = build_all(LOGS / "build.log")
    built = {k: round(v) for k, v in spent.items() if v}
    say("binaries " + (f"built in seconds: {built}" if built else "from the cache"))
    ip = node_ip()
    STATE.mkdir(parents=True, exist_ok=True)
    OWNER.write_text(json.dumps({
        "repo": str(REPO_ROOT),
        "route_localnet": ROUTE_LOCALNET.read_text().strip(),
        "host_dirs": host_dirs(),
    }))  # fmt: skip
    _write_configs(ip)
    t0 = time.monotonic()
    _control_plane(ip)
    say(f"control plane up in {time.monotonic() - t0:.0f} s")
    name, _, tag = _node(ip)["app"].rpartition(":")
    t0 = time.monotonic()
    start_addons(ip)
    say(f"CoreDNS and metrics-server up in {time.monotonic() - t0:.0f} s")
    t0 = time.monotonic()
    start_netpol()
    say(f"kube-router (NetworkPolicy) up in {time.monotonic() - t0:.0f} s")
    _tls_secret()
    say(f"up in {time.monotonic() - t_all:.0f} s; node {NODE_NAME} ({ip}) Ready. Use it:\n"
        f"  export KUBECONFIG={KUBECONFIG}\n  make deploy ENV=all IMAGE={name} TAG={tag}\n"
        f"  make cluster-e2e    # the checks; make cluster-down removes everything")  # fmt: skip
    return 0
