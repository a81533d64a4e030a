"""The chart on the real cluster (issue 17 item 4), one release through its life:

- `helm install --wait` of DEV (packaged by `make chart`, the cluster's image)
  reaches 3/3 Ready; `helm test` passes in a namespace enforcing Pod Security
  `restricted`;
- under constant HTTPS load through the edge, each losing 0 requests: `helm test`,
  `helm upgrade --install` unchanged (nothing rolls), `helm upgrade` with a larger
  `maxseq` (the pods roll and a request refused before now succeeds), and `helm
  rollback` to revision 1 (refused again);
- `helm upgrade` and `helm install` with bad values are refused naming the key,
  and the release, its pods and the namespace are as they were;
- `helm uninstall` leaves the namespace as it was before the install.

Each run under load reports sent, failed, p99 and its duration (`[cluster] helm:`
lines).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.clusterlib import Cluster
from tests.support.edges import Edge
from tests.support.fibref import fib
from tests.support.helmlib import (
    BAD_VALUES,
    NS,
    RELEASE,
    VALUES_DEV,
    create_namespace,
    delete_namespace,
    helm,
    helm_ok,
    namespace_objects,
    package_chart,
    pods,
    traefik_for_namespace,
    under_load,
    wait_ready,
)
from tests.support.testlog import say

pytestmark = pytest.mark.cluster

# Revision 1 serves n up to 5000 (the load asks for n <= 3000); the upgrade raises
# it to the service's 100000. n = 20000 tells them apart (and its 4180 digits stay
# under Python's default limit for parsing an int).
FIRST_MAXSEQ, RAISED_MAXSEQ, PROBE_N = 5000, 100000, 20000


class Release:
    def __init__(self, cluster: Cluster, tgz: Path) -> None:
        self.cluster, self.tgz = cluster, tgz
        name, _, tag = cluster.image().rpartition(":")
        self.image_args = ["--set", f"image.repository={name}", "--set", f"image.tag={tag}"]
        self.before: set[str] = set()
        self.install: Any = None
        self.install_seconds = 0.0

    def upgrade_args(self, maxseq: int | None, *values: Path) -> list[str]:
        """`helm upgrade --install` of DEV with the cluster's image; `maxseq` set over
        the values files (None: left to them, so a bad file's own value counts)."""
        files = [a for v in (VALUES_DEV, *values) for a in ("--values", str(v))]
        sets = ["--set", f"config.maxseq={maxseq}"] if maxseq is not None else []
        return ["upgrade", "--install", RELEASE, str(self.tgz), *files, *self.image_args,
                *sets, "--wait", "--timeout", "5m"]  # fmt: skip

    def history(self) -> list[dict[str, Any]]:
        revs: list[dict[str, Any]] = json.loads(helm_ok("history", RELEASE, "-o", "json"))
        return revs

    def configmap_maxseq(self) -> int:
        dep = self.cluster.get("-n", NS, "deployment", RELEASE)
        (name,) = [
            v["configMap"]["name"]
            for v in dep["spec"]["template"]["spec"]["volumes"]
            if "configMap" in v
        ]
        data = self.cluster.get("-n", NS, "configmap", name)["data"]["config.yaml"]
        maxseq: int = yaml.safe_load(data)["maxseq"]
        return maxseq


@pytest.fixture(scope="module")
def release(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    delete_namespace(cluster)  # what a failed earlier run may have left
    create_namespace(cluster)
    rel = Release(cluster, package_chart(tmp_path_factory.mktemp("dist")))
    rel.before = namespace_objects(cluster)
    t0 = time.monotonic()
    rel.install = helm("install", *rel.upgrade_args(FIRST_MAXSEQ)[2:])
    rel.install_seconds = time.monotonic() - t0
    try:
        yield rel
    finally:
        helm("uninstall", RELEASE, "--wait", "--ignore-not-found")
        delete_namespace(cluster)


@pytest.fixture(scope="module")
def edge(
    cluster: Cluster, release: Release, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Edge]:
    assert release.install.returncode == 0, release.install.stderr
    with traefik_for_namespace(cluster, tmp_path_factory.mktemp("helm-edge")) as e:
        yield e


def pod_names(cluster: Cluster) -> set[str]:
    return {p["metadata"]["name"] for p in pods(cluster)}


def probe(edge: Edge) -> tuple[int, dict[str, Any]]:
    status, _, body = edge.get(f"/dev/fibo?n={PROBE_N}")
    return status, json.loads(body)


def test_install_waits_for_three_ready_pods(cluster: Cluster, release: Release) -> None:
    out = release.install
    say("helm", f"install --wait: exit {out.returncode} in {release.install_seconds:.1f} s")
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(wait_ready(cluster, timeout=5)) == 3
    (rev,) = release.history()
    assert (rev["revision"], rev["status"]) == (1, "deployed")
    labels = cluster.get("namespace", NS)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_helm_test_passes_under_load(cluster: Cluster, release: Release, edge: Edge) -> None:
    outs: list[str] = []
    report = under_load(
        cluster,
        edge,
        "helm test",
        lambda: outs.append(helm_ok("test", RELEASE, "--logs", timeout=300)),
    )
    assert "Succeeded" in outs[0], outs[0]
    assert "readyz 200, fibo?n=10 = 55" in outs[0], outs[0]
    assert report.failed == 0, report.failures


def test_upgrade_install_unchanged_rolls_nothing(
    cluster: Cluster, release: Release, edge: Edge
) -> None:
    before = pod_names(cluster)
    report = under_load(
        cluster,
        edge,
        "helm upgrade --install, nothing changed",
        lambda: helm_ok(*release.upgrade_args(FIRST_MAXSEQ)),
    )
    assert pod_names(cluster) == before
    assert release.history()[-1]["revision"] == 2
    assert report.failed == 0, report.failures


def test_upgrade_with_a_config_change_rolls_the_pods(
    cluster: Cluster, release: Release, edge: Edge
) -> None:
    status, body = probe(edge)
    assert status == 400 and str(FIRST_MAXSEQ) in body["error"], body
    before = pod_names(cluster)
    report = under_load(
        cluster,
        edge,
        f"helm upgrade config.maxseq {FIRST_MAXSEQ} -> {RAISED_MAXSEQ}",
        lambda: helm_ok(*release.upgrade_args(RAISED_MAXSEQ)),
    )
    assert not before & pod_names(cluster), "every pod was replaced"
    assert release.configmap_maxseq() == RAISED_MAXSEQ
    status, body = probe(edge)
    assert status == 200 and body["result"] == fib(PROBE_N), "the new maxseq is in effect"
    assert report.failed == 0, report.failures


def test_rollback_to_the_first_revision(cluster: Cluster, release: Release, edge: Edge) -> None:
    before = pod_names(cluster)
    report = under_load(
        cluster,
        edge,
        "helm rollback to revision 1",
        lambda: helm_ok("rollback", RELEASE, "1", "--wait", "--timeout", "5m"),
    )
    assert not before & pod_names(cluster), "every pod was replaced"
    last = release.history()[-1]
    assert (last["revision"], last["status"]) == (4, "deployed")
    assert release.configmap_maxseq() == FIRST_MAXSEQ
    status, body = probe(edge)
    assert status == 400 and str(FIRST_MAXSEQ) in body["error"], "the old maxseq is back"
    assert report.failed == 0, report.failures


def pod_state(cluster: Cluster) -> dict[str, tuple[str, int]]:
    return {
        p["metadata"]["uid"]: (
            p["metadata"]["name"],
            p["status"]["containerStatuses"][0]["restartCount"],
        )
        for p in pods(cluster)
    }


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ("maxseq-over-limit.yaml", "/config/maxseq"),
        ("grace-shorter-than-drain.yaml", "/terminationGracePeriodSeconds"),
        ("metrics-port-equals-port.yaml", "config.metrics_port"),
    ],
)
def test_an_invalid_upgrade_is_refused_and_changes_nothing(
    cluster: Cluster, release: Release, edge: Edge, bad: str, named: str
) -> None:
    history = release.history()
    pods_before = pod_state(cluster)
    generation = cluster.get("-n", NS, "deployment", RELEASE)["metadata"]["generation"]
    out = helm(*release.upgrade_args(None, BAD_VALUES / bad))
    assert out.returncode != 0 and named in out.stderr, out.stdout + out.stderr
    say("helm", f"upgrade with {bad}: exit {out.returncode}: {out.stderr.strip().splitlines()[-1]}")
    assert release.history() == history, "the release stays at its revision"
    assert pod_state(cluster) == pods_before, "the same pods, not restarted"
    assert cluster.get("-n", NS, "deployment", RELEASE)["metadata"]["generation"] == generation


def test_an_invalid_install_creates_nothing(cluster: Cluster, release: Release) -> None:
    before = namespace_objects(cluster)
    out = helm(
        "install",
        "fiboserver-bad",
        str(release.tgz),
        *release.image_args,
        "--values",
        str(BAD_VALUES / "top-level-unknown-key.yaml"),
    )
    assert out.returncode != 0 and "replicas" in out.stderr, out.stderr
    assert helm("status", "fiboserver-bad").returncode != 0
    assert namespace_objects(cluster) == before


def test_uninstall_leaves_nothing(cluster: Cluster, release: Release, edge: Edge) -> None:
    helm_ok("uninstall", RELEASE, "--wait", "--timeout", "5m")
    deadline = time.monotonic() + 120  # pods end after their grace period
    while (left := namespace_objects(cluster) - release.before) and time.monotonic() < deadline:
        time.sleep(2)
    say("helm", f"after uninstall, left in {NS} beyond what was there before: {sorted(left)}")
    assert left == set()
    assert helm("status", RELEASE).returncode != 0
