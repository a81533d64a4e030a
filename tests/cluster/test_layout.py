"""The local cluster's pure parts, without a cluster: pins, address ranges, the
configuration files, image names and the small-node overlay. Always run."""

from __future__ import annotations

import ipaddress
import json
import re
import tomllib
from pathlib import Path

import yaml

from tests.support.clusterlib import K8S, fit_node
from tests.support.kube import render
from tools.cluster import netpol
from tools.cluster.addons import manifests
from tools.cluster.binaries import COMPONENTS, KUBERNETES, KUBERNETES_VERSION
from tools.cluster.down import _octets, _ours
from tools.cluster.images import normalize, podman_name
from tools.cluster.layout import (
    CLUSTER_CIDR,
    CNI_CONF_DIR,
    POD_CIDR,
    SERVICE_CIDR,
    cni_conflist,
    containerd_toml,
    kube_proxy_yaml,
    kubelet_yaml,
    overlaps,
)
from tools.cluster.pki import CLIENTS


def test_every_component_is_pinned_in_its_go_mod() -> None:
    for c in COMPONENTS:
        mod = (c.moddir / "go.mod").read_text()
        # go mod tidy marks the module of a `tool` as indirect.
        pin = rf"^(require |\t)\S+ {re.escape(c.version)}( // indirect)?$"
        assert re.search(pin, mod, re.M), c.name
        assert (c.moddir / "go.sum").stat().st_size > 0, c.name
        for pkg in c.packages.values():
            assert pkg in mod, f"{c.name}: {pkg} is not a tool of {c.moddir}/go.mod"


def test_kubernetes_staging_modules_match_the_release() -> None:
    mod = (KUBERNETES.moddir / "go.mod").read_text()
    staging = re.findall(r"^\t(k8s\.io/[\w-]+) => (k8s\.io/[\w-]+) (v\S+)$", mod, re.M)
    assert len(staging) >= 30, staging
    want = "v0." + KUBERNETES_VERSION.removeprefix("v1.")
    assert {(a, b, v) for a, b, v in staging} == {(a, a, want) for a, _, _ in staging}


def test_ranges_are_disjoint_and_collisions_are_found() -> None:
    pods, services = ipaddress.IPv4Network(CLUSTER_CIDR), ipaddress.IPv4Network(SERVICE_CIDR)
    assert ipaddress.IPv4Network(POD_CIDR).subnet_of(pods)
    assert not pods.overlaps(services)
    host = [ipaddress.IPv4Network("10.88.0.0/16"), ipaddress.IPv4Network("192.0.2.0/24")]
    assert overlaps(host) == []
    assert overlaps([*host, ipaddress.IPv4Network("10.244.7.0/24")]) == [
        "10.244.0.0/16 overlaps 10.244.7.0/24 on the host"
    ]
    assert overlaps([ipaddress.IPv4Network("10.0.0.0/8")]) != []


def test_leftover_rules_are_recognised() -> None:
    assert _octets("10.244.0.0/16") == "10.244." and _octets("10.96.0.0/24") == "10.96.0."
    assert _ours("-A KUBE-SERVICES -j KUBE-NODEPORTS")
    assert _ours('-A CNI-abc -d 10.244.0.0/24 -m comment --comment "name: ..." -j ACCEPT')
    # podman's CNI rules and chains are not ours.
    assert not _ours("-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE")
    assert not _ours("-A CNI-abc -d 10.88.0.0/16 -j ACCEPT")


def test_containerd_config() -> None:
    conf = tomllib.loads(containerd_toml())
    assert conf["version"] == 3
    runtime = conf["plugins"]["io.containerd.cri.v1.runtime"]
    runc = runtime["containerd"]["runtimes"]["runc"]["options"]
    assert runc["SystemdCgroup"] is False  # cgroupfs, as the kubelet's cgroupDriver
    assert runtime["restrict_oom_score_adj"] is True
    assert runtime["cni"]["conf_dir"] == str(CNI_CONF_DIR)  # not podman's /etc/cni/net.d
    assert "cgroupDriver: cgroupfs" in kubelet_yaml("192.0.2.2")
    assert 'nodePortAddresses: ["127.0.0.0/8"]' in kube_proxy_yaml(Path("/k"))


def test_cni_config() -> None:
    conf = json.loads(cni_conflist())
    assert [p["type"] for p in conf["plugins"]] == ["bridge", "portmap"]
    assert conf["plugins"][0]["ipam"]["ranges"] == [[{"subnet": POD_CIDR, "gateway": "10.244.0.1"}]]


def test_image_names_as_containerd_and_podman_resolve_them() -> None:
    assert normalize("fiboserver:0.1.0") == "docker.io/library/fiboserver:0.1.0"
    assert normalize("team/fiboserver:1") == "docker.io/team/fiboserver:1"
    assert normalize("registry.example/fiboserver:1") == "registry.example/fiboserver:1"
    assert normalize("localhost/pause:x") == "localhost/pause:x"
    assert podman_name("fiboserver:0.1.0") == "localhost/fiboserver:0.1.0"


def test_small_node_overlay_changes_only_prods_cpu(tmp_path: Path) -> None:
    assert fit_node(8.0, tmp_path) == K8S
    overlay = fit_node(2.0, tmp_path)
    assert overlay != K8S
    original = {(o["kind"], o["metadata"]["name"]): o for o in render(K8S)}
    fitted = {(o["kind"], o["metadata"]["name"]): o for o in render(overlay)}
    assert original.keys() == fitted.keys()
    changed = [k for k in original if original[k] != fitted[k]]
    assert changed == [("Deployment", "fiboserver-prod")]
    res = fitted[changed[0]]["spec"]["template"]["spec"]["containers"][0]["resources"]
    # 3 pods + 1 surge of prod, 4 x 100m of dev: 4 x 400m + 400m = 2 CPUs.
    assert res["requests"]["cpu"] == res["limits"]["cpu"] == "400m"
    assert res["requests"]["memory"] == res["limits"]["memory"]  # still Guaranteed


def test_cluster_dns_is_the_kube_dns_service_on_the_node_address() -> None:
    kubelet = yaml.safe_load(kubelet_yaml("192.0.2.7"))
    objs = {(o["kind"], o["metadata"]["name"]): o for o in manifests("192.0.2.7", b"ca")}
    service = objs[("Service", "kube-dns")]
    assert kubelet["clusterDNS"] == [service["spec"]["clusterIP"]]
    assert ipaddress.ip_address(kubelet["clusterDNS"][0]) in ipaddress.ip_network("10.96.0.0/24")
    for name in ("kube-dns", "metrics-server"):
        eps = objs[("EndpointSlice", f"{name}-node")]
        assert eps["metadata"]["labels"]["kubernetes.io/service-name"] == name
        assert eps["endpoints"][0]["addresses"] == ["192.0.2.7"]
        # Every Service port has its endpoint port, by name and protocol.
        svc = {(p["name"], p["protocol"]) for p in objs[("Service", name)]["spec"]["ports"]}
        assert svc == {(p["name"], p["protocol"]) for p in eps["ports"]}
    api = objs[("APIService", "v1beta1.metrics.k8s.io")]["spec"]
    assert api["service"] == {"name": "metrics-server", "namespace": "kube-system", "port": 443}
    assert "insecureSkipTLSVerify" not in api and api["caBundle"] == "Y2E="


def test_kube_router_runs_its_policy_controller_alone_and_only_reads() -> None:
    args = netpol.argv(Path("/kubeconfig"))
    for flag in ("--run-firewall=true", "--run-router=false", "--run-service-proxy=false",
                 "--run-loadbalancer=false", "--health-port=0"):  # fmt: skip
        assert flag in args, args
    assert args[args.index("--service-cluster-ip-range") + 1] == SERVICE_CIDR
    role, bound = netpol.manifests()
    assert {v for rule in role["rules"] for v in rule["verbs"]} == {"get", "list", "watch"}
    assert bound["roleRef"]["name"] == role["metadata"]["name"]
    assert bound["subjects"][0]["name"] == CLIENTS[netpol.NAME][0]


def test_kube_router_is_found_hooked_in_by_its_chains() -> None:
    table = [
        ":INPUT ACCEPT [0:0]", ":KUBE-ROUTER-INPUT - [0:0]", ":KUBE-NWPLCY-DEFAULT - [0:0]",
        ":KUBE-POD-FW-ABC - [0:0]", ":KUBE-SERVICES - [0:0]", ":CNI-FORWARD - [0:0]",
        *(f'-A {h} -m comment --comment "kube-router netpol - X" -j KUBE-ROUTER-{h}'
          for h in ("INPUT", "FORWARD")),
    ]  # fmt: skip
    assert netpol.its_chains(table) == ["KUBE-NWPLCY-DEFAULT", "KUBE-POD-FW-ABC",
                                        "KUBE-ROUTER-INPUT"]  # fmt: skip
    assert not netpol.hooked_in(table)  # OUTPUT does not jump yet
    assert netpol.hooked_in([*table, "-A OUTPUT -j KUBE-ROUTER-OUTPUT"])
