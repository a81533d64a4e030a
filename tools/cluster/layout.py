"""Where the local cluster keeps things, which addresses it uses, and the
configuration files of its parts (pure functions: tests/cluster/test_layout.py
checks them without a cluster).

One cluster per machine: its state lives in STATE and RUN (removed by
`make cluster-down`); the clone that started it keeps the kubeconfig and the
logs in .cluster/ (git-ignored).
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from pathlib import Path

from tests.support.repo import REPO_ROOT
from tools.cluster.binaries import CNI_BIN_DIR, CONTAINERD

DOT = REPO_ROOT / ".cluster"
KUBECONFIG = DOT / "kubeconfig"
LOGS = DOT / "logs"

STATE = Path("/var/lib/fiboserver-cluster")
RUN = Path("/run/fiboserver-cluster")
PKI = STATE / "pki"
KUBELET_ROOT = STATE / "kubelet"
CONTAINERD_ROOT = STATE / "containerd"
CONTAINERD_STATE = RUN / "containerd"
CONTAINERD_SOCK = RUN / "containerd.sock"
CNI_CONF_DIR = STATE / "cni" / "net.d"
CNI_DATA_DIR = STATE / "cni" / "networks"
ETCD_DATA = STATE / "etcd"
PIDS = RUN / "pids"
# Written at `up`: which clone owns the cluster and the host settings to restore.
OWNER = STATE / "owner.json"
# Host directories the cluster's parts write into at fixed places: the kubelet's
# CRI log files (its default podLogsDir, as on any node) and their links, and
# containerd's shim sockets (/run/containerd/s, not configurable). `up` records
# what they held; `down` removes what was added, or the directory it created.
POD_LOGS = Path("/var/log/pods")
HOST_DIRS = (POD_LOGS, Path("/var/log/containers"), Path("/run/containerd"))

NODE_NAME = "fiboserver-node"
# Pods and Services get ranges of their own; `up` refuses to start if a route or an
# address on the host overlaps either.
CLUSTER_CIDR = "10.244.0.0/16"
POD_CIDR = "10.244.0.0/24"  # this node's share: the CNI bridge's host-local range
# The bridge's address on the host (the range's first, host-local's usual choice):
# the pods' default route, and the address a host process serves pods on.
POD_GATEWAY = str(ipaddress.IPv4Network(POD_CIDR)[1])
SERVICE_CIDR = "10.96.0.0/24"
# The kube-dns Service's ClusterIP, the kubelet's clusterDNS: .10 of the Service
# range, where kubeadm and most distributions put it.
CLUSTER_DNS_IP = str(ipaddress.IPv4Network(SERVICE_CIDR)[10])
CLUSTER_DOMAIN = "cluster.local"
# CoreDNS and metrics-server run on the host (they reach the API server, which listens
# on loopback only); their Services' endpoints are the node address at these ports.
# 53: what every resolver asks; 4443: metrics-server's usual port when not in a pod.
DNS_PORT = 53
METRICS_SERVER_PORT = 4443
COREDNS_READY = "127.0.0.1:8181"  # the ready plugin's default port, on loopback
CNI_NETWORK = "fiboserver-cluster"
BRIDGE = "cni0"
API_PORT = 6443
ETCD_CLIENT = "http://127.0.0.1:2379"
ETCD_PEER = "http://127.0.0.1:2380"
# kube-proxy serves NodePorts on loopback only (route_localnet=1, restored on down).
NODEPORT_ADDRESSES = "127.0.0.0/8"
ROUTE_LOCALNET = Path("/proc/sys/net/ipv4/conf/all/route_localnet")

# No registry: the pause image is catatonit in an image of its own, built here.
PAUSE_IMAGE = "localhost/fiboserver-cluster/pause:catatonit"


def node_ip() -> str:
    """The host's address on its default route: what the node reports as its
    InternalIP (the kubelet refuses a loopback node IP). Only cluster components
    use it (the API server reaching the kubelet)."""
    out = subprocess.run(
        ["ip", "-j", "route", "get", "192.0.2.1"], capture_output=True, text=True, check=True
    )
    src: str = json.loads(out.stdout)[0]["prefsrc"]
    return src


def host_networks() -> list[ipaddress.IPv4Network]:
    """IPv4 networks of the host's routes and addresses (our own bridge excluded)."""
    nets: list[ipaddress.IPv4Network] = []
    routes = json.loads(
        subprocess.run(["ip", "-j", "-4", "route", "show", "table", "all"],
                       capture_output=True, text=True, check=True).stdout
    )  # fmt: skip
    for r in routes:
        dst = r.get("dst", "")
        if r.get("dev") == BRIDGE or dst in ("", "default") or r.get("type") == "local":
            continue
        nets.append(ipaddress.IPv4Network(dst if "/" in dst else f"{dst}/32", strict=False))
    addrs = json.loads(
        subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True,
                       check=True).stdout
    )  # fmt: skip
    for link in addrs:
        if link.get("ifname") == BRIDGE:
            continue
        for a in link.get("addr_info", []):
            nets.append(ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False))
    return nets


def overlaps(nets: list[ipaddress.IPv4Network]) -> list[str]:
    """Our ranges that collide with `nets` (loopback aside), as readable lines."""
    out = []
    for ours in (CLUSTER_CIDR, SERVICE_CIDR):
        mine = ipaddress.ip_network(ours)
        for n in nets:
            if not n.is_loopback and mine.overlaps(n):
                out.append(f"{ours} overlaps {n} on the host")
    return out


def containerd_toml() -> str:
    """containerd 2.0 configuration (version 3): its own root, state and socket,
    runc with cgroupfs (the host has cgroup v1, no systemd), the local pause image,
    CNI from Debian's plugins with our own config directory (podman's
    /etc/cni/net.d stays out of it)."""
    return f"""version = 3
root = "{CONTAINERD_ROOT}"
state = "{CONTAINERD_STATE}"
# NRI would open /var/run/nri, opt would write /opt/containerd: neither is used.
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.internal.v1.opt"]

[grpc]
  address = "{CONTAINERD_SOCK}"

[ttrpc]
  address = "{CONTAINERD_SOCK}.ttrpc"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{PAUSE_IMAGE}"

[plugins."io.containerd.cri.v1.runtime"]
  # Network namespaces under the state directory, not /var/run/netns.
  netns_mounts_under_state_dir = true
  # The kubelet asks for negative OOM scores (-998 for the pause container, -997
  # for Guaranteed pods); lowering a score needs CAP_SYS_RESOURCE, which this host
  # (a Firecracker sandbox) withholds even from root, and runc then fails with
  # "failed to update /proc/self/oom_score_adj: Permission denied". Scores are
  # kept at or above containerd's own instead.
  restrict_oom_score_adj = true
  enable_cdi = false
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "/usr/bin/runc"
        # runc's own state with ours, not in /run/containerd.
        Root = "{RUN}/runc"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{CNI_CONF_DIR}"

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
"""


def cni_conflist() -> str:
    """bridge + host-local (state under STATE) + portmap; loopback is added by
    containerd itself from the same plugin directory."""
    conf = {
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                # Pods reach nothing outside but each other and the host; masquerade
                # only what leaves the pod range, as any node does.
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(CNI_DATA_DIR),
                    "ranges": [[{"subnet": POD_CIDR, "gateway": POD_GATEWAY}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    return json.dumps(conf, indent=2) + "\n"


def kubelet_yaml(ip: str) -> str:
    return f"""apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# Serves the API server (exec, logs) on the node address only; health on loopback.
address: {ip}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
# cgroup v1 on this host and no systemd to delegate to (containerd says the same).
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://{CONTAINERD_SOCK}
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {PKI}/ca.crt
authorization:
  mode: Webhook
tlsCertFile: {PKI}/kubelet-serving.crt
tlsPrivateKeyFile: {PKI}/kubelet-serving.key
# Pods ask CoreDNS (tools/cluster/addons.py), which answers for the cluster domain
# and forwards other names to the host's resolver (resolvConf).
clusterDNS: ["{CLUSTER_DNS_IP}"]
clusterDomain: {CLUSTER_DOMAIN}
resolvConf: /etc/resolv.conf
# A shared CI disk must not evict the test pods: only a nearly full disk does.
evictionHard:
  memory.available: 100Mi
  nodefs.available: 2%
  imagefs.available: 2%
imageGCHighThresholdPercent: 98
imageGCLowThresholdPercent: 95
"""


def corefile(ip: str, kubeconfig: Path) -> str:
    """CoreDNS on the node address only: the cluster domain from the API (through
    `kubeconfig`), other names from the host's resolver; `ready` for `up` to wait on."""
    return f""".:{DNS_PORT} {{
    bind {ip}
    errors
    ready {COREDNS_READY}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} fiboserver-local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    forward . /etc/resolv.conf
    # 30 s: the upstream default in Kubernetes' own CoreDNS config.
    cache 30
    loadbalance
}}
"""


def kube_proxy_yaml(kubeconfig: Path) -> str:
    return f"""apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kubeconfig}
hostnameOverride: {NODE_NAME}
mode: iptables
clusterCIDR: {CLUSTER_CIDR}
# NodePorts on loopback only: test traffic enters through 127.0.0.1.
nodePortAddresses: ["{NODEPORT_ADDRESSES}"]
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack:
  # Leave the host's conntrack sysctls as they are.
  maxPerCore: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
"""


def scheduler_yaml(kubeconfig: Path) -> str:
    return f"""apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: {kubeconfig}
leaderElection:
  leaderElect: false
"""


def component_path() -> str:
    """PATH for the cluster's processes: containerd finds its shim, the kubelet and
    kube-proxy find iptables, mount and the rest."""
    return f"{CONTAINERD.bindir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
