"""On the real cluster: `kubectl apply --server-side -k k8s` under Pod Security
`restricted`, both Deployments 3/3 Ready through their real probes, QoS classes,
and the container's user and read-only root (docs/cluster.md, issue 9 items 1-2)."""

from __future__ import annotations

import json

import pytest

from tests.support.clusterlib import NS, Cluster
from tests.support.testlog import say

pytestmark = pytest.mark.cluster


def test_apply_server_side_is_accepted_without_warnings(cluster: Cluster) -> None:
    for cmd, result in cluster.deploy():
        assert result.returncode == 0, (cmd, result.stderr)
        # kubectl prints admission warnings (Pod Security among them) on stderr.
        assert result.stderr.strip() == "", (cmd, result.stderr)
        say("cluster", f"{cmd}:\n" + result.stdout.strip())
    # Pods are created by the ReplicaSets, where Pod Security enforces: none refused.
    events = cluster.get("-n", NS, "events", "--field-selector", "reason=FailedCreate")
    assert events["items"] == [], [e["message"] for e in events["items"]]
    ns = cluster.get("namespace", NS)["metadata"]["labels"]
    assert ns["pod-security.kubernetes.io/enforce"] == "restricted"


def test_pod_security_restricted_is_enforced(cluster: Cluster) -> None:
    """The check above is not vacuous: a pod that breaks `restricted` is refused."""
    cluster.deploy()
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "not-restricted", "namespace": NS},
        "spec": {"containers": [{"name": "c", "image": "fiboserver:0.1.0"}]},
    }
    out = cluster.kubectl("apply", "--server-side", "--dry-run=server", "-f", "-",
                          stdin=json.dumps(pod), check=False)  # fmt: skip
    assert out.returncode != 0
    labels = cluster.get("namespace", NS)["metadata"]["labels"]
    version = labels.get("pod-security.kubernetes.io/enforce-version", "latest")
    assert f'violates PodSecurity "restricted:{version}"' in out.stderr, out.stderr
    say("cluster", f"a non-restricted pod: {out.stderr.strip().splitlines()[0][:160]}")


@pytest.mark.parametrize(("env", "qos"), [("dev", "Burstable"), ("prod", "Guaranteed")])
def test_three_ready_pods_with_their_qos_class(cluster: Cluster, env: str, qos: str) -> None:
    cluster.deploy()
    # `kubectl rollout status` exits 0 (deploy() already waited with it; again here
    # so this test says it).
    cluster.rollout_status(f"fiboserver-{env}", timeout="2m")
    pods = cluster.wait_ready(f"fiboserver-{env}")
    dep = cluster.get("-n", NS, "deployment", f"fiboserver-{env}")
    assert dep["status"]["readyReplicas"] == 3 == dep["status"]["replicas"], dep["status"]
    if env == "prod":
        # prod's manifest leaves `replicas` to the HPA: its minReplicas made it 3
        # (there is no metrics server here, so it stays at the floor).
        hpa = cluster.get("-n", NS, "hpa", "fiboserver-prod")
        assert hpa["spec"]["minReplicas"] == 3 == hpa["status"]["desiredReplicas"], hpa["status"]
    assert {p["status"]["qosClass"] for p in pods} == {qos}
    for p in pods:
        # Ready came through the real probes: the startup probe passed (started)
        # and the container never restarted on the way.
        (status,) = p["status"]["containerStatuses"]
        assert status["started"] and status["ready"] and status["restartCount"] == 0, status
    say(
        "cluster",
        f"{env}: 3/3 Ready, qosClass {qos}: " + ", ".join(p["metadata"]["name"] for p in pods),
    )


def test_container_runs_as_10001_on_a_read_only_root(cluster: Cluster) -> None:
    cluster.deploy()
    pod = cluster.wait_ready("fiboserver-prod")[0]["metadata"]["name"]
    script = (
        "import os\nprint(os.getuid(), os.getgid())\n"
        "try:\n    open('/probe', 'w')\nexcept OSError as e:\n    print(e.strerror)\n"
        "open('/tmp/probe', 'w').write('ok')\nprint('tmp writable')\n"
    )
    out = cluster.kubectl("exec", "-n", NS, pod, "-c", "fiboserver", "--",
                          "python3", "-c", script).stdout.splitlines()  # fmt: skip
    assert out == ["10001 10001", "Read-only file system", "tmp writable"], out
    say("cluster", f"kubectl exec {pod}: uid/gid {out[0]}, / {out[1].lower()}, /tmp {out[2]}")
