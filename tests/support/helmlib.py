"""What the chart's cluster tests (test_helm.py) use: a namespace of their own, helm
against the cluster, an edge that serves only that namespace, load through it.

The chart's release is named `fiboserver-dev`, like the kustomize DEV environment
that the other cluster tests deploy into `cloudnative`: so it gets a namespace
of its own (Pod Security `restricted` enforced, as `cloudnative`), with its own
TLS Secret `cloudnative`. Its Ingress claims the same host and path as
k8s/ingress.yaml's, so the edge here is a Traefik of its own that reads
Ingresses of that namespace only (edges.traefik_edge reads every namespace and
waits for /prod too); the rest is edges.py's: IngressClass, certificates, the
Edge client and its HTTPS load.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

from tests.support.clusterlib import Cluster, Obj, is_ready
from tests.support.edgeclients import LoadReport
from tests.support.edges import (
    INGRESS_CLASS,
    Edge,
    load_through,
    run_traefik,
    tls_files,
    traefik_static,
)
from tests.support.procinfo import free_port
from tests.support.repo import REPO_ROOT
from tools.cluster.binaries import HELM, TRAEFIK
from tools.cluster.layout import KUBECONFIG

NS = "fiboserver-helm"
RELEASE = "fiboserver-dev"
CHART_DIR = REPO_ROOT / "charts" / "fiboserver"
VALUES_DEV = CHART_DIR / "values-dev.yaml"
BAD_VALUES = REPO_ROOT / "tests" / "helm_bad_values"


def helm(*args: str, timeout: float = 420) -> subprocess.CompletedProcess[str]:
    """helm against the cluster, in NS; the result is the caller's to check."""
    assert HELM.cached(), "helm is not built: `make helm` (make cluster-up builds it too)"
    return subprocess.run(
        [str(HELM.path("helm")), "--kubeconfig", str(KUBECONFIG), "--namespace", NS, *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
    )  # fmt: skip


def helm_ok(*args: str, timeout: float = 420) -> str:
    out = helm(*args, timeout=timeout)
    assert out.returncode == 0, (
        f"helm {' '.join(args)}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    )
    return out.stdout


def create_namespace(cluster: Cluster) -> None:
    """k8s/namespace.yaml under another name (its Pod Security labels), and the TLS
    Secret `cloudnative` from `make certgen`'s files, as `make tls-secret` makes it."""
    ns = yaml.safe_load((REPO_ROOT / "k8s" / "namespace.yaml").read_text())
    ns["metadata"]["name"] = NS
    cluster.kubectl("apply", "--server-side", "-f", "-", stdin=json.dumps(ns))
    files = tls_files()
    secret = cluster.kubectl("create", "secret", "tls", "cloudnative", "-n", NS,
                             f"--cert={files['tls.crt']}", f"--key={files['tls.key']}",
                             "--dry-run=client", "-o", "json").stdout  # fmt: skip
    cluster.kubectl("apply", "--server-side", "-f", "-", stdin=secret)


def delete_namespace(cluster: Cluster) -> None:
    cluster.kubectl("delete", "namespace", NS, "--ignore-not-found", "--wait=true",
                    "--timeout=180s", timeout=240, check=False)  # fmt: skip


def package_chart(dist: Path) -> Path:
    """`make chart` into `dist`: the package a user installs (links resolved)."""
    out = subprocess.run(["make", "-s", "--no-print-directory", "chart", f"DIST={dist}"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    (tgz,) = dist.glob("fiboserver-*.tgz")
    return tgz


def pods(cluster: Cluster, instance: str = RELEASE) -> list[Obj]:
    items: list[Obj] = cluster.get("-n", NS, "pods", "-l",
                                   f"app.kubernetes.io/instance={instance}")["items"]  # fmt: skip
    return [
        p for p in items if p["metadata"]["labels"].get("app.kubernetes.io/name") == "fiboserver"
    ]


def wait_ready(cluster: Cluster, count: int = 3, timeout: float = 300) -> list[Obj]:
    """Exactly `count` app pods, all Ready, none terminating."""
    deadline = time.monotonic() + timeout
    while True:
        found = pods(cluster)
        ready = [p for p in found if is_ready(p) and "deletionTimestamp" not in p["metadata"]]
        if len(ready) == count == len(found):
            return ready
        assert time.monotonic() < deadline, f"{len(ready)}/{len(found)} ready, want {count}"
        time.sleep(1)


def namespace_objects(cluster: Cluster) -> set[str]:
    """kind/name of every object in NS, of every namespaced kind that can be listed
    (events aside: they record what happened, they are not what was installed; and
    metrics.k8s.io's pod readings, which metrics-server serves for a pod from its
    first scrape on, whatever was installed meanwhile)."""
    kinds = cluster.kubectl("api-resources", "--verbs=list", "--namespaced", "-o", "name").stdout
    wanted = [
        k for k in kinds.split()
        if k.split(".")[0] != "events" and not k.endswith(".metrics.k8s.io")
    ]  # fmt: skip
    out = cluster.kubectl("get", ",".join(wanted), "-n", NS, "-o", "name", "--ignore-not-found")
    return set(out.stdout.split())


@contextlib.contextmanager
def traefik_for_namespace(cluster: Cluster, prefix: Path, path: str = "/dev") -> Iterator[Edge]:
    """edges.traefik_edge's Traefik, reading Ingresses of NS only: HTTPS on
    `websecure` from the chart's Ingress annotations (plain HTTP is not tested here,
    so no kubernetesCRD provider and no k8s/edge/traefik)."""
    cluster.kubectl("apply", "--server-side", "-f", "-", stdin=json.dumps(INGRESS_CLASS))
    static = traefik_static(free_port(), free_port(),
                            {"kubernetesIngress": {"namespaces": [NS]}})  # fmt: skip
    with run_traefik(prefix, static, f"Traefik {TRAEFIK.version} (Ingresses of {NS})",
                     (path,)) as edge:  # fmt: skip
        yield edge


def under_load(
    cluster: Cluster, edge: Edge, label: str, action: Callable[[], object]
) -> LoadReport:
    """Load through `edge` around `action` until 3 Ready pods and none terminating
    in this namespace."""
    return load_through(edge, "helm", label, action, lambda: wait_ready(cluster))
