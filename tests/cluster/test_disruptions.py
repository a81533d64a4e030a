"""On the real cluster, under constant HTTPS load through the edge (issue 9 item 4):
`kubectl rollout restart`, a config change (new ConfigMap hash) and `kubectl delete
pod` on a busy pod lose no request; the same restart with the preStop sleep patched
out loses some (the control that shows the load can see a loss).

Each run reports requests sent, failed, p99 latency and its duration.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.clusterlib import NS, Cluster
from tests.support.edgeclients import LoadReport
from tests.support.edges import Edge, cluster_edge, load_through
from tests.support.repo import REPO_ROOT
from tests.support.testlog import say

pytestmark = pytest.mark.cluster

DEPLOYMENT = "fiboserver-dev"


@pytest.fixture(scope="module")
def edge(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    cluster.deploy()
    with cluster_edge(cluster, tmp_path_factory.mktemp("edge")) as e:
        yield e


def under_load(cluster: Cluster, edge: Edge, label: str, action: Callable[[], None]) -> LoadReport:
    """Load through the edge around `action` until the Deployment is back to 3
    Ready pods and no pod is terminating any more."""
    return load_through(
        edge, "cluster", label, action,
        lambda: cluster.wait_ready(DEPLOYMENT, count=3, timeout=300),
    )  # fmt: skip


def rollout_restart(cluster: Cluster) -> None:
    cluster.kubectl("-n", NS, "rollout", "restart", f"deployment/{DEPLOYMENT}")
    cluster.rollout_status(DEPLOYMENT)


def pod_names(cluster: Cluster) -> set[str]:
    return {p["metadata"]["name"] for p in cluster.pods(DEPLOYMENT)}


def test_rollout_restart_loses_nothing(cluster: Cluster, edge: Edge) -> None:
    before = pod_names(cluster)
    report = under_load(cluster, edge, "kubectl rollout restart", lambda: rollout_restart(cluster))
    assert not before & pod_names(cluster), "every pod was replaced"
    assert report.failed == 0, report.failures


def config_change_overlay(cluster: Cluster, tmp: Path) -> Path:
    """An overlay of what the tests deploy whose only change is DEV's config file
    (cacheresult flipped): kustomize gives the ConfigMap a new hashed name."""
    config = yaml.safe_load((REPO_ROOT / "k8s/overlays/dev/config.yaml").read_text())
    config["cacheresult"] = not config["cacheresult"]
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(cluster.manifests(), tmp)],
        "configMapGenerator": [{"name": "fiboserver-config-dev", "namespace": NS,
                                "behavior": "replace", "files": ["config.yaml"]}],
    }))  # fmt: skip
    return tmp


def configmap_of(cluster: Cluster) -> str:
    dep = cluster.get("-n", NS, "deployment", DEPLOYMENT)
    vols = dep["spec"]["template"]["spec"]["volumes"]
    name: str = next(v["configMap"]["name"] for v in vols if "configMap" in v)
    return name


def caches(cluster: Cluster, pod: str) -> bool:
    """Whether the service in `pod` caches results, as it behaves: inside the pod
    (kubectl exec) the same n is asked twice, and DEV's DEBUG log shows a `cache
    hit` for the second only when `cacheresult` is on (off: no cache records)."""
    rid = f"cache-check-{time.time_ns()}"
    code = (
        "import urllib.request as u\n"
        "for i in range(2):\n"
        "    u.urlopen(u.Request('http://127.0.0.1:8080/dev/fibo?n=4321',\n"
        f"        headers={{'X-Request-ID': '{rid}-' + str(i)}}), timeout=10).read()\n"
    )
    cluster.kubectl("exec", "-n", NS, pod, "-c", "fiboserver", "--", "python3", "-c", code)
    logs = cluster.kubectl("logs", "-n", NS, pod, "-c", "fiboserver", "--since=60s").stdout
    records = [json.loads(ln) for ln in logs.splitlines() if ln.startswith("{")]
    mine = [r for r in records if str(r.get("request_id", "")).startswith(rid)]
    assert [r["status"] for r in mine if r["msg"] == "end"] == [200, 200], mine
    return any(r["msg"] == "cache hit" and r["request_id"] == f"{rid}-1" for r in mine)


def test_config_change_loses_nothing(cluster: Cluster, edge: Edge, tmp_path: Path) -> None:
    overlay = config_change_overlay(cluster, tmp_path)
    old = configmap_of(cluster)
    # The control: the pods as deployed cache (DEV's config has cacheresult: true).
    assert all(caches(cluster, pod) for pod in pod_names(cluster))

    def change() -> None:
        cluster.reapply(overlay)
        cluster.rollout_status(DEPLOYMENT)

    try:
        report = under_load(cluster, edge, "config change (new ConfigMap hash)", change)
        new = configmap_of(cluster)
        assert new != old and new.startswith("fiboserver-config-dev-"), (old, new)
        data = cluster.get("-n", NS, "configmap", new)["data"]["config.yaml"]
        assert yaml.safe_load(data)["cacheresult"] is not True
        assert report.failed == 0, report.failures
        # The new value is in effect in every pod, not just in the ConfigMap.
        pods = pod_names(cluster)
        assert not any(caches(cluster, pod) for pod in pods), pods
        say("cluster", f"  cacheresult off in effect in {len(pods)} new pods (no cache hit)")
    finally:
        cluster.reapply()
        cluster.rollout_status(DEPLOYMENT)
        cluster.wait_ready(DEPLOYMENT)


def served_recently(cluster: Cluster, pod: str) -> int:
    """/dev/fibo requests `pod` answered in the last 3 s (its access log)."""
    logs = cluster.kubectl("logs", "-n", NS, pod, "--since=3s").stdout
    records = [json.loads(ln) for ln in logs.splitlines() if ln.startswith("{")]
    return sum(r.get("msg") == "end" and r.get("path") == "/dev/fibo" for r in records)


def test_delete_busy_pod_loses_nothing(cluster: Cluster, edge: Edge) -> None:
    chosen: list[tuple[int, str]] = []

    def delete() -> None:
        # The busiest pod: the edge's keep-alive connections through the ClusterIP
        # stay with the pod they were first sent to, so the load is uneven.
        chosen.append(max((served_recently(cluster, p), p) for p in pod_names(cluster)))
        cluster.kubectl("-n", NS, "delete", "pod", chosen[0][1], "--wait=false")

    report = under_load(cluster, edge, "kubectl delete pod (the busiest)", delete)
    served, victim = chosen[0]
    say("cluster", f"  deleted {victim}, which answered {served} requests in the 3 s before")
    assert served > 0, f"{victim} was not serving the load"
    assert victim not in pod_names(cluster)
    assert report.failed == 0, report.failures


def test_restart_without_prestop_loses_some(cluster: Cluster, edge: Edge) -> None:
    """The control: pods that stop listening as soon as they are told to, while the
    endpoint removal is still on its way to kube-proxy and the edge."""
    patch = [{"op": "remove", "path": "/spec/template/spec/containers/0/lifecycle"}]
    cluster.kubectl("-n", NS, "patch", "deployment", DEPLOYMENT, "--type", "json",
                    "-p", json.dumps(patch))  # fmt: skip
    try:
        # The patch itself rolls out pods without the hook (the old pods still had
        # it); the restart then ends pods that have none.
        cluster.rollout_status(DEPLOYMENT)
        cluster.wait_ready(DEPLOYMENT)
        # A loss needs a request to reach a stopping pod in the second or two before
        # the edge drops it: likely in each restart of 3 pods, not certain. Up to 3
        # restarts, each reported; one that loses something is the proof.
        failed = 0
        for attempt in range(1, 4):
            label = f"kubectl rollout restart, preStop patched out (control, run {attempt})"
            report = under_load(cluster, edge, label, lambda: rollout_restart(cluster))
            failed = report.failed
            if failed:
                break
        assert failed > 0, "the control lost nothing in 3 restarts: the test cannot see a loss"
    finally:
        cluster.reapply()
        cluster.rollout_status(DEPLOYMENT)
        cluster.wait_ready(DEPLOYMENT)
    lifecycle = cluster.get("-n", NS, "deployment", DEPLOYMENT)["spec"]["template"]["spec"][
        "containers"][0]["lifecycle"]  # fmt: skip
    assert lifecycle["preStop"]["sleep"]["seconds"] == 10
