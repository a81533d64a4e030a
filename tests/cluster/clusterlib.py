"""What the cluster tests share: the session's cluster (brought up here only with
CI=true), kubectl against it, the deployment of k8s/ and CRI look-ups.

Only 127.0.0.1 is contacted by the tests: the API server and NodePorts listen on
loopback, and the edge (tests/cluster/edges.py) listens there too.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from binaries import CRITOOLS
from conftest import IN_CI, require_tool
from layout import API_PORT, CONTAINERD_SOCK, KUBECONFIG, PKI, REPO_ROOT, ROUTE_LOCALNET

NS = "cloudnative"
HOW_TO = "make cluster-up && make cluster-e2e"
Obj = dict[str, Any]


def say(text: str) -> None:
    """A line in the test log past pytest's capture (figures for the CI log)."""
    sys.__stdout__.write(f"\n[cluster] {text}")
    sys.__stdout__.flush()


@dataclass
class Cluster:
    owned: bool  # brought up by this test session (CI), so it takes it down too
    route_localnet_before: str = ""
    down_done: bool = False
    _deployed: subprocess.CompletedProcess[str] | None = field(default=None, repr=False)

    # --- kubectl ----------------------------------------------------------------
    def kubectl(self, *args: str, check: bool = True, timeout: float = 120,
                stdin: str | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
        proc = subprocess.run(
            [require_tool("kubectl"), "--kubeconfig", str(KUBECONFIG), *args],
            input=stdin, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
        )  # fmt: skip
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
    def deploy(self) -> subprocess.CompletedProcess[str]:
        """`kubectl apply --server-side -k k8s`, once per session; its result."""
        if self._deployed is None:
            self._deployed = self.kubectl("apply", "--server-side", "-k", "k8s", check=False)
            if self._deployed.returncode == 0:
                for env in ("dev", "prod"):
                    self.rollout_status(f"fiboserver-{env}")
        return self._deployed

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
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return False
    proc = subprocess.run([kubectl, "--kubeconfig", str(KUBECONFIG), "get", "--raw", "/readyz"],
                          capture_output=True, text=True, timeout=20)  # fmt: skip
    return proc.returncode == 0 and proc.stdout.strip() == "ok"


def run_make(target: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`make <target>` from the repository root, its output echoed to the test log."""
    t0 = time.monotonic()
    proc = subprocess.run(["make", "-s", target], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip
    say(f"make {target}: exit {proc.returncode} in {time.monotonic() - t0:.0f} s\n"
        + (proc.stdout + proc.stderr).strip())  # fmt: skip
    return proc


def session() -> Iterator[Cluster]:
    """The `cluster` fixture (tests/conftest.py): a cluster that is up is used as it
    is; with CI=true one is brought up (and down at the end); otherwise skip."""
    if api_ready():
        yield Cluster(owned=False)
        return
    if not IN_CI:
        pytest.skip(f"no local cluster is up; run them with `{HOW_TO}` (the first "
                    "start compiles Kubernetes: README 'Run it on a real cluster')")  # fmt: skip
    before = ROUTE_LOCALNET.read_text().strip()
    up = run_make("cluster-up", timeout=3600)
    if up.returncode != 0:
        run_make("cluster-down", timeout=600)
        pytest.fail(f"make cluster-up failed:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}")
    cluster = Cluster(owned=True, route_localnet_before=before)
    os.environ["KUBECONFIG"] = str(KUBECONFIG)
    try:
        yield cluster
    finally:
        if not cluster.down_done:
            run_make("cluster-down", timeout=600)
