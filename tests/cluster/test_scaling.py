"""The prod HPA (k8s/overlays/prod/hpa.yaml) on real CPU figures: metrics-server
(tools/cluster/addons.py) serves metrics.k8s.io, the controller-manager's HPA
controller reads it.

Load comes from a client pod inside the cluster, in the Ingress controller's
namespace (the one prod's NetworkPolicy admits to `http`), to the prod Service's
name, so CoreDNS is on the path too. Scale-up: from the minimum, while every pod that was
Ready stays Ready. Scale-down: the manifests keep the default 300 s stabilization
window; the test asserts the controller's decision to wait (condition AbleToScale,
reason ScaleDownStabilized) rather than sitting through the window. Named so that
it runs after the other cluster tests, which expect prod at its minimum.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

import pytest

from tests.support.clusterlib import NS, PROXIES_NS, Cluster, Obj, is_ready
from tests.support.podclient import delete_pod, ensure_namespace, start_pod
from tests.support.testlog import say

pytestmark = pytest.mark.cluster

HPA = "fiboserver-prod"
LOAD_POD = "hpa-load"
# prod's CPU for this test (requests == limits, still Guaranteed): what one client
# pod can hold over the target even on a shared, busy machine (docs/cluster.md,
# "The HPA test"). Every HPA setting stays as the manifest has it.
CPU = "200m"
# Uncached Fibonacci numbers of 50k-100k (tens of thousands of digits each) from 2
# processes of 6 threads (one process alone is held back by its GIL): enough to hold
# prod's pods at their CPU limit. The client is BestEffort: under contention the
# kernel gives the Guaranteed prod pods their share first.
LOAD = """
import os, random, socket, threading, urllib.request
# Resolved once (through CoreDNS): the CPU goes to the requests, not to lookups.
ip = socket.gethostbyname(SERVICE)
def hit():
    while True:
        n = random.randint(50000, 100000)
        try:
            urllib.request.urlopen(f"http://{ip}/prod/fibo?n={n}", timeout=30).read()
        except OSError:
            pass
os.fork()
for _ in range(6):
    threading.Thread(target=hit, daemon=True).start()
threading.Event().wait()
"""


@dataclass(frozen=True)
class Sample:
    t: float
    current: int
    desired: int
    utilization: int | None
    ready: int
    pods: int

    @property
    def state(self) -> tuple[int, int, int | None, int]:
        return (self.current, self.desired, self.utilization, self.ready)

    @property
    def state_at(self) -> str:
        return (
            f"{self.t}s {self.current}/{self.desired} {self.utilization}% {self.ready}/{self.pods}"
        )


def utilization(hpa: Obj) -> int | None:
    for m in hpa.get("status", {}).get("currentMetrics") or []:
        if m.get("type") == "Resource":
            value: int | None = m["resource"]["current"].get("averageUtilization")
            return value
    return None


def condition(hpa: Obj, kind: str) -> Obj:
    for c in hpa.get("status", {}).get("conditions", []):
        if c["type"] == kind:
            return dict(c)
    return {}


def sample(t0: float, hpa: Obj, pods: list[Obj]) -> Sample:
    st = hpa.get("status", {})
    return Sample(
        round(time.monotonic() - t0),
        st.get("currentReplicas", 0),
        st.get("desiredReplicas", 0),
        utilization(hpa),
        sum(map(is_ready, pods)),
        len(pods),
    )


def wait_for_metrics(cluster: Cluster, timeout: float = 240) -> Obj:
    deadline = time.monotonic() + timeout
    while True:
        hpa = cluster.get("-n", NS, "hpa", HPA)
        if utilization(hpa) is not None:
            return hpa
        assert time.monotonic() < deadline, f"the HPA reads no CPU figure: {hpa.get('status')}"
        time.sleep(5)


def unready_pods(pods: list[Obj], were_ready: set[str]) -> list[str]:
    """Pods that were Ready and are no longer, though nobody deletes them."""
    return [
        p["metadata"]["name"]
        for p in pods
        if p["metadata"]["name"] in were_ready
        and not is_ready(p)
        and "deletionTimestamp" not in p["metadata"]
    ]


def load_until_scaled(cluster: Cluster, floor: int, ceiling: int) -> list[Sample]:
    """Load prod until the HPA has added a Ready pod; the changes seen on the way.
    No pod that was Ready may turn unready meanwhile."""
    t0 = time.monotonic()
    timeline: list[Sample] = []
    were_ready: set[str] = set()
    ensure_namespace(cluster, PROXIES_NS)
    start_pod(cluster, LOAD_POD, PROXIES_NS, command=f"SERVICE = '{HPA}.{NS}'\n{LOAD}")
    try:
        while True:
            hpa, pods = cluster.get("-n", NS, "hpa", HPA), cluster.pods(HPA)
            assert not unready_pods(pods, were_ready), (unready_pods(pods, were_ready), timeline)
            were_ready |= {p["metadata"]["name"] for p in pods if is_ready(p)}
            s = sample(t0, hpa, pods)
            if not timeline or s.state != timeline[-1].state:
                timeline.append(s)
            assert s.desired <= ceiling, timeline
            if s.current > floor and s.ready > floor:
                return timeline
            assert time.monotonic() - t0 < 420, f"no scale-up under load: {timeline}"
            time.sleep(3)
    finally:
        delete_pod(cluster, LOAD_POD, PROXIES_NS)


def scale_down_decision(cluster: Cluster, target: int) -> tuple[Obj, float]:
    """Once the load is gone: the CPU figure alone would now take pods away (the
    HPA's rule: ceil(current * utilization / target) < current), and the HPA holds
    its count in the stabilization window instead; (that HPA, seconds it took)."""
    t0 = time.monotonic()
    while True:
        hpa = cluster.get("-n", NS, "hpa", HPA)
        util, current = utilization(hpa), hpa["status"]["currentReplicas"]
        reason = condition(hpa, "AbleToScale").get("reason")
        fewer = util is not None and math.ceil(current * util / target) < current
        if fewer and reason == "ScaleDownStabilized":
            return hpa, time.monotonic() - t0
        assert time.monotonic() - t0 < 240, f"no scale-down decision: {hpa.get('status')}"
        time.sleep(5)


def set_prod_cpu(cluster: Cluster, cpu: str) -> None:
    path = "/spec/template/spec/containers/0/resources"
    patch = [{"op": "replace", "path": f"{path}/{k}/cpu", "value": cpu}
             for k in ("requests", "limits")]  # fmt: skip
    cluster.kubectl("-n", NS, "patch", "deployment", HPA, "--type", "json", "-p",
                    json.dumps(patch))  # fmt: skip
    cluster.rollout_status(HPA)
    cluster.wait_ready(HPA)


def test_prod_scales_up_under_load_then_decides_to_scale_down(cluster: Cluster) -> None:
    cluster.deploy()
    set_prod_cpu(cluster, CPU)
    hpa = wait_for_metrics(cluster)
    floor, ceiling = hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]
    target = hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"]
    assert hpa["status"]["currentReplicas"] == floor, hpa["status"]
    timeline = load_until_scaled(cluster, floor, ceiling)
    hpa, waited = scale_down_decision(cluster, target)
    # The window holds the count the load brought.
    assert hpa["status"]["currentReplicas"] >= timeline[-1].current, hpa["status"]
    selector = f"involvedObject.kind=HorizontalPodAutoscaler,involvedObject.name={HPA}"
    events = cluster.get("-n", NS, "events", "--field-selector", selector)
    rescales = [e["message"] for e in events["items"] if e["reason"] == "SuccessfulRescale"]
    assert any("above target" in m for m in rescales), rescales
    able = condition(hpa, "AbleToScale")
    say(
        "cluster",
        "HPA timeline (s since the load started, current/desired replicas, CPU % of "
        f"request, Ready/pods): {[s.state_at for s in timeline]}; load stopped at "
        f"{timeline[-1].t} s; {waited:.0f} s later at {utilization(hpa)}% (target {target}%): "
        f"{able.get('reason')}: {able.get('message')}; events: {rescales}",
    )
