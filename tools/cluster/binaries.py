"""The cluster's programs: Go-built upstream components cached outside the clone, and
the Debian tools the cluster needs.

Each component is one pinned Go module (tools/cluster/build/<component>/go.mod and
go.sum, committed) built with ``go build`` into
``/var/cache/fiboserver/cluster/<component>-<version>/`` (``FIBOSERVER_CLUSTER_CACHE``
moves it). A stamp file there holds a digest of go.mod, go.sum, the flags and the Go
version: the same inputs on the same machine reuse the binaries, so only the first
``make cluster-up`` compiles. Go's own module and build caches are outside the clone
too (GOMODCACHE, GOCACHE defaults).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILD_DIR = HERE / "build"
CACHE = Path(os.environ.get("FIBOSERVER_CLUSTER_CACHE", "/var/cache/fiboserver/cluster"))
GO = os.environ.get("GO") or shutil.which("go") or "/usr/local/go/bin/go"

KUBERNETES_VERSION = "v1.34.4"


def _version_ldflags(pkg: str, version: str) -> list[str]:
    # What upstream's hack/lib/version.sh stamps, so `kubectl version` and the
    # node's kubeletVersion say v1.34.4 instead of a development version.
    major, minor = version.lstrip("v").split(".")[:2]
    return [
        f"-X {pkg}.gitVersion={version}",
        f"-X {pkg}.gitMajor={major}",
        f"-X {pkg}.gitMinor={minor}",
        f"-X {pkg}.gitTreeState=clean",
    ]


@dataclass(frozen=True)
class Component:
    name: str  # directory under build/ and cache key prefix
    version: str
    # binary name -> Go package
    packages: dict[str, str]
    ldflags: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()

    @property
    def moddir(self) -> Path:
        return BUILD_DIR / self.name

    @property
    def bindir(self) -> Path:
        return CACHE / f"{self.name}-{self.version}"

    def path(self, binary: str) -> Path:
        return self.bindir / binary

    def digest(self) -> str:
        h = hashlib.sha256()
        # go.mod, go.sum and a main package of our own where there is one (coredns).
        for f in ("go.mod", "go.sum", *sorted(p.name for p in self.moddir.glob("*.go"))):
            h.update((self.moddir / f).read_bytes())
        h.update(repr((self.packages, self.ldflags, self.tags, go_version())).encode())
        return h.hexdigest()

    def cached(self) -> bool:
        stamp = self.bindir / ".stamp"
        return (
            stamp.is_file()
            and stamp.read_text().strip() == self.digest()
            and all(self.path(b).is_file() for b in self.packages)
        )


KUBERNETES = Component(
    "kubernetes",
    KUBERNETES_VERSION,
    {
        name: f"k8s.io/kubernetes/cmd/{name}"
        for name in (
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kubelet",
            "kube-proxy",
        )
    },
    ldflags=(
        *_version_ldflags("k8s.io/component-base/version", KUBERNETES_VERSION),
        *_version_ldflags("k8s.io/client-go/pkg/version", KUBERNETES_VERSION),
    ),
)
ETCD = Component("etcd", "v3.6.16", {"etcd": "go.etcd.io/etcd/server/v3"})
CONTAINERD = Component(
    "containerd",
    "v2.0.14",
    {
        name: f"github.com/containerd/containerd/v2/cmd/{name}"
        for name in ("containerd", "containerd-shim-runc-v2", "ctr")
    },
    ldflags=("-X github.com/containerd/containerd/v2/version.Version=v2.0.14",),
    # No btrfs/devmapper/zfs snapshotters (overlayfs is used); no cgo needed.
    tags=("no_btrfs", "no_devmapper", "no_zfs", "urfave_cli_no_docs"),
)
# crictl: the kubelet's view of containers (host PIDs, sandboxes) for tests and for
# `make cluster-down`, which removes every pod sandbox through the CRI.
CRITOOLS = Component("cri-tools", "v1.34.0", {"crictl": "sigs.k8s.io/cri-tools/cmd/crictl"})
# The edge: a real Ingress controller run as a host process (tests/support/edges.py).
TRAEFIK = Component(
    "traefik",
    "v3.6.12",
    {"traefik": "github.com/traefik/traefik/v3/cmd/traefik"},
    ldflags=("-X github.com/traefik/traefik/v3/pkg/version.Version=v3.6.12",),
)
# helm: installs the chart (charts/fiboserver). Stamped like upstream's Makefile
# does for a release tag, so `helm version` says v4.3.2 and not v4.3+unreleased.
HELM = Component(
    "helm",
    "v4.3.2",
    {"helm": "helm.sh/helm/v4/cmd/helm"},
    ldflags=(
        "-X helm.sh/helm/v4/internal/version.version=v4.3.2",
        "-X helm.sh/helm/v4/internal/version.metadata=",
        "-X helm.sh/helm/v4/internal/version.gitTreeState=clean",
    ),
)
# The HPA's CPU figures: the aggregated metrics.k8s.io API, served by a host process
# (tools/cluster/addons.py). v0.8.0: the release the issue names; v0.9.0 is served by
# the proxy but is not an approved release.
METRICS_SERVER = Component(
    "metrics-server",
    "v0.8.0",
    {"metrics-server": "sigs.k8s.io/metrics-server/cmd/metrics-server"},
    ldflags=("-X k8s.io/client-go/pkg/version.gitVersion=v0.8.0",),
)
# The cluster DNS, a host process behind the kube-dns Service (tools/cluster/addons.py).
# Our own main package (build/coredns/main.go) links only the plugins the Corefile uses.
COREDNS = Component("coredns", "v1.15.0", {"coredns": "fiboserver.local/cluster/coredns"})
# The NetworkPolicy engine: kube-router's policy controller alone, a host process
# (tools/cluster/netpol.py). v2.1.0: the only release the Go proxy serves of its v2
# module (docs/network-policy.md).
KUBE_ROUTER = Component(
    "kube-router",
    "v2.1.0",
    {"kube-router": "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"},
    ldflags=("-X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=v2.1.0",),
)
COMPONENTS = (
    KUBERNETES, ETCD, CONTAINERD, CRITOOLS, TRAEFIK, HELM, METRICS_SERVER, COREDNS, KUBE_ROUTER,
)  # fmt: skip
# The trace backend of the tracing tests and `make traces` (docs/tracing.md): Jaeger v2,
# whose Go module still carries v1 version numbers (v1.75.0 is the v2 release of
# the same day). Not in COMPONENTS: the cluster does not need it to start, so
# `make cluster-up` does not wait for it; tools/cluster/jaeger.py builds it on use.
JAEGER = Component(
    "jaeger",
    "v1.75.0",
    {"jaeger": "github.com/jaegertracing/jaeger/cmd/jaeger"},
    ldflags=("-X github.com/jaegertracing/jaeger/internal/version.latestVersion=v1.75.0",),
)

# What the cluster uses as it is, and how to get it: Debian packages (.ci/run
# installs them): runc (the OCI runtime podman uses here too), catatonit (the pause
# process), iptables and conntrack (kube-proxy), ipset (kube-router), openssl
# (certificates), podman and debootstrap (the images), iproute2 (addresses and
# routes); and kubectl.
TOOLS = {
    "runc": "apt-get install runc",
    "iptables": "apt-get install iptables",
    "conntrack": "apt-get install conntrack",
    "ipset": "apt-get install ipset",
    "catatonit": "apt-get install catatonit",
    "openssl": "apt-get install openssl",
    "podman": "apt-get install podman",
    "debootstrap": "apt-get install debootstrap",
    "ip": "apt-get install iproute2",
    "kubectl": "the Kubernetes command line client",
}
CNI_BIN_DIR = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")


def go_version() -> str:
    out = subprocess.run([GO, "env", "GOVERSION"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def missing_tools() -> list[str]:
    """What is missing to build and run the cluster, each with how to get it."""
    missing = [f"{tool} ({how})" for tool, how in TOOLS.items() if shutil.which(tool) is None]
    if not all((CNI_BIN_DIR / p).is_file() for p in CNI_PLUGINS):
        missing.append(
            f"CNI plugins {', '.join(CNI_PLUGINS)} in {CNI_BIN_DIR} "
            "(apt-get install containernetworking-plugins)"
        )
    if not Path(GO).is_file() and shutil.which(GO) is None:
        missing.append("go (Go 1.24 or newer; e.g. /usr/local/go/bin/go)")
    if os.geteuid() != 0:
        missing.append("root (the kubelet, containerd and kube-proxy need it)")
    return missing


def build(component: Component, log: Path) -> float:
    """Build `component` into its cache directory unless cached; seconds spent."""
    if component.cached():
        return 0.0
    t0 = time.monotonic()
    tmp = component.bindir.with_name(component.bindir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cmd = [
        "nice", "-n", "10", GO, "build", "-trimpath",
        "-ldflags", " ".join(("-s", "-w", *component.ldflags)),
        *(("-tags", ",".join(component.tags)) if component.tags else ()),
        "-o", f"{tmp}/",
        *component.packages.values(),
    ]  # fmt: skip
    # Static binaries, as upstream releases them; -mod=readonly: go.sum is the pin.
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly"}
    with log.open("ab") as out:
        out.write(f"\n$ (cd {component.moddir}) {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.run(cmd, cwd=component.moddir, env=env, stdout=out, stderr=out)
    if proc.returncode != 0:
        raise SystemExit(f"building {component.name} {component.version} failed: see {log}")
    # `go build -o dir/` names a binary after its package path's last element, or the
    # one before a major-version suffix (go.etcd.io/etcd/server/v3 -> server).
    for binary, pkg in component.packages.items():
        parts = pkg.split("/")
        built = tmp / (parts[-2] if re.fullmatch(r"v\d+", parts[-1]) else parts[-1])
        if built != tmp / binary:
            built.rename(tmp / binary)
    (tmp / ".stamp").write_text(component.digest() + "\n")
    shutil.rmtree(component.bindir, ignore_errors=True)
    tmp.rename(component.bindir)
    return time.monotonic() - t0


def build_all(log: Path) -> dict[str, float]:
    """Every component, cached or built; {name: seconds spent building}."""
    spent: dict[str, float] = {}
    for c in COMPONENTS:
        if not c.cached():
            print(f"cluster: building {c.name} {c.version} (first time on this machine; "
                  f"log {log})", file=sys.stderr, flush=True)  # fmt: skip
        spent[c.name] = build(c, log)
    return spent
