"""What the cluster tests share: kubectl against the cluster of tools/cluster, the
deployment of k8s/ and CRI look-ups (the session's `cluster` fixture, which brings
one up only with CI=true, is in tests/cluster/conftest.py).

Only 127.0.0.1 is contacted by the tests: the API server and NodePorts listen on
loopback, and the edge (tests/support/edges.py) listens there too.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.hosttools import require_tool
from tests.support.kube import parse_quantity
from tests.support.repo import REPO_ROOT
from tests.support.testlog import say
from tools.cluster.binaries import CRITOOLS
from tools.cluster.kubectl import kubectl
from tools.cluster.layout import (
    API_PORT,
    CONTAINERD_SOCK,
    KUBECONFIG,
    NODE_NAME,
    OWNER,
    PKI,
)

NS = "cloudnative"
# The Ingress controller's namespace, the one k8s/base's NetworkPolicy admits to
# port `http`: where a client pod stands for the proxies in front of the pods.
PROXIES_NS = "ingress-nginx"
K8S = REPO_ROOT / "k8s"
HOW_TO = "make cluster-up && make cluster-e2e"
Obj = dict[str, Any]


@dataclass
class Cluster:
    owned: bool  # brought up by this test session (CI), so it takes it down too
    host_before: dict[str, object] = field(default_factory=dict)
    down_done: bool = False
    _deployed: list[tuple[str, subprocess.CompletedProcess[str]]] = field(
        default_factory=list, repr=False
    )
    _manifests: Path | None = field(default=None, repr=False)

    # --- kubectl ----------------------------------------------------------------
    def kubectl(self, *args: str, check: bool = True, timeout: float = 120,
                stdin: str | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
        proc = kubectl(*args, timeout=timeout, stdin=stdin, binary=require_tool("kubectl"))
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")  # fmt: skip
        return proc

    def get(self, *args: str) -> Obj:
        out: Obj = json.loads(self.kubectl("get", "-o", "json", *args).stdout)
        return out

    def pods(self, instance: str) -> list[Obj]:
        items: list[Obj] = self.get(
            "-n", NS, "pods", "-l", f"app.kubernetes.io/instance={instance}"
        )["items"]
        return items

    def ready_pods(self, instance: str) -> list[Obj]:
        return [p for p in self.pods(instance) if is_ready(p)]

    def rollout_status(self, deployment: str, timeout: str = "5m") -> None:
        self.kubectl("-n", NS, "rollout", "status", f"deployment/{deployment}",
                     f"--timeout={timeout}", timeout=400)  # fmt: skip

    def wait_ready(self, instance: str, count: int = 3, timeout: float = 300) -> list[Obj]:
        """Exactly `count` pods, all Ready, none terminating."""
        deadline = time.monotonic() + timeout
        while True:
            pods = self.pods(instance)
            ready = [p for p in pods if is_ready(p) and "deletionTimestamp" not in p["metadata"]]
            if len(ready) == count == len(pods):
                return ready
            if time.monotonic() > deadline:
                raise AssertionError(f"{instance}: {len(ready)}/{len(pods)} ready, want {count}")
            time.sleep(1)

    # --- the app ------------------------------------------------------------------
    def image(self) -> str:
        """The app image `make cluster-up` built and imported (`make print-image`'s)."""
        ref: str = json.loads(OWNER.read_text())["image"]
        return ref

    def render(self, k8s_dir: Path = K8S) -> str:
        """`make manifests ENV=all` (what `make deploy` applies) for the cluster's image;
        `k8s_dir` replaces k8s/ (an overlay of it)."""
        name, _, tag = self.image().rpartition(":")
        out = subprocess.run(
            ["make", "-s", "--no-print-directory", "manifests", "ENV=all", f"K8S_DIR={k8s_dir}",
             f"IMAGE={name}", f"TAG={tag}"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out.stdout

    def apply(self, k8s_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        """`make manifests ENV=all | kubectl apply --server-side -f -`: as `make deploy`
        applies, server-side; stderr (warnings) is the caller's to check."""
        cmd = ("apply", "--server-side", *extra, "-f", "-")
        return self.kubectl(*cmd, stdin=self.render(k8s_dir), check=False)

    def deploy(self) -> list[tuple[str, subprocess.CompletedProcess[str]]]:
        """The app, once per session: [(what, result)]. Then both Deployments are
        rolled out and at 3 Ready pods (prod's count comes from its HPA).

        On a node without the CPUs for prod's whole-CPU pods (CI: 2 CPUs) the
        manifests go through the API server's admission (Pod Security included)
        with --dry-run=server, and `fit_node()`'s overlay of them is applied:
        applying them there would leave a prod pod Pending, and a later change
        stuck behind it (maxUnavailable 0)."""
        if not self._deployed:
            target = self.manifests()
            what = "make manifests ENV=all | kubectl apply --server-side -f -"
            fitted = " (from the overlay fitting prod's CPU to this node)" if target != K8S else ""
            self._deployed.append((what + fitted, self.apply(target)))
            if target != K8S:
                self._deployed.append((f"{what} --dry-run=server", self.apply(K8S,
                                       "--dry-run=server")))  # fmt: skip
            if all(r.returncode == 0 for _, r in self._deployed):
                for env in ("dev", "prod"):
                    self.rollout_status(f"fiboserver-{env}")
                    self.wait_ready(f"fiboserver-{env}")
        return self._deployed

    def reapply(self, k8s_dir: Path | None = None) -> None:
        """Apply again (k8s_dir: an overlay of `manifests()`), asserting no warning."""
        out = self.apply(k8s_dir or self.manifests())
        assert out.returncode == 0 and out.stderr.strip() == "", out.stderr

    def manifests(self) -> Path:
        """What the tests apply: k8s/, or on a small node `fit_node()`'s overlay of it."""
        if self._manifests is None:
            self._manifests = self.fitted(K8S)
        return self._manifests

    def fitted(self, k8s_dir: Path) -> Path:
        """`k8s_dir` (k8s/ or a kustomization of its overlays, like k8s/tracing), or
        on a small node `fit_node()`'s overlay of it."""
        alloc = self.get("node", NODE_NAME)["status"]["allocatable"]["cpu"]
        return fit_node(parse_quantity(alloc), Path(tempfile.mkdtemp()), k8s_dir)

    def api(self, method: str, path: str, body: Obj | None = None) -> tuple[int, Obj]:
        """One API request with the admin client certificate (to 127.0.0.1)."""
        ctx = ssl.create_default_context(cafile=str(PKI / "ca.crt"))
        ctx.load_cert_chain(str(PKI / "admin.crt"), str(PKI / "admin.key"))
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"https://127.0.0.1:{API_PORT}{path}", data=data, method=method,
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")


# prod's pods ask for a whole CPU each (k8s/overlays/prod): 3 replicas + 1 surge
# pod during a rollout = 4 CPUs, and dev's 4 x 100m beside them.
PROD_CPUS_NEEDED = 4 * 1.0 + 4 * 0.1


def fit_node(node_cpus: float, tmp: Path, base: Path = K8S) -> Path:
    """`base` (k8s/ or a kustomization of its overlays) as it is when the node has
    the CPUs for it; else an overlay of it that only lowers prod's CPU (requests ==
    limits still: Guaranteed) to what fits, so 3 pods plus a rollout's surge pod
    can run (CI's node has 2 CPUs)."""
    if node_cpus >= PROD_CPUS_NEEDED:
        return base
    per_pod = int((node_cpus - 4 * 0.1) / 4 * 1000) // 50 * 50
    assert per_pod >= 100, f"a {node_cpus}-CPU node is too small for these tests"
    cpu = f"{per_pod}m"
    (tmp / "kustomization.yaml").write_text(f"""\
# {os.path.relpath(base, REPO_ROOT)} with prod's CPU fitted to a {node_cpus:g}-CPU node
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {os.path.relpath(base, tmp)}
patches:
  - target:
      kind: Deployment
      name: fiboserver-prod
    patch: |-
      - op: replace
        path: /spec/template/spec/containers/0/resources/requests/cpu
        value: {cpu}
      - op: replace
        path: /spec/template/spec/containers/0/resources/limits/cpu
        value: {cpu}
""")
    return tmp


def is_ready(pod: Obj) -> bool:
    conds = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


def crictl(*args: str) -> str:
    out = subprocess.run(
        [str(CRITOOLS.path("crictl")), "--runtime-endpoint", f"unix://{CONTAINERD_SOCK}", *args],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return out.stdout


def container_pid(pod: Obj) -> int:
    """Host PID of the pod's app container (its PID 1: the gunicorn master)."""
    cid = pod["status"]["containerStatuses"][0]["containerID"].removeprefix("containerd://")
    pid: int = json.loads(crictl("inspect", cid))["info"]["pid"]
    return pid


def api_ready() -> bool:
    if not KUBECONFIG.is_file():
        return False
    binary = shutil.which("kubectl")
    if binary is None:
        return False
    proc = kubectl("get", "--raw", "/readyz", timeout=20, binary=binary)
    return proc.returncode == 0 and proc.stdout.strip() == "ok"


def run_make(target: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`make <target>` from the repository root, its output echoed to the test log."""
    t0 = time.monotonic()
    proc = subprocess.run(["make", "-s", target], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip
    say("cluster", f"make {target}: exit {proc.returncode} in {time.monotonic() - t0:.0f} s\n"
        + (proc.stdout + proc.stderr).strip())  # fmt: skip
    return proc
