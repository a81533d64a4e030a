"""On the real cluster: the PodDisruptionBudget refuses an eviction beyond it
(issue 9 item 5), and the liveness probe restarts a container that stopped
answering, not before its thresholds allow (item 6)."""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.support.clusterlib import NS, Cluster, Obj, container_pid
from tests.support.testlog import say

pytestmark = pytest.mark.cluster


def evict(cluster: Cluster, pod: str) -> tuple[int, Obj]:
    """POST pods/<pod>/eviction: the Eviction API, as `kubectl drain` uses it."""
    body = {"apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": pod, "namespace": NS}}  # fmt: skip
    return cluster.api("POST", f"/api/v1/namespaces/{NS}/pods/{pod}/eviction", body)


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_eviction_beyond_the_pdb_is_refused(cluster: Cluster, env: str) -> None:
    cluster.deploy()
    name = f"fiboserver-{env}"
    pods = [p["metadata"]["name"] for p in cluster.wait_ready(name)]
    pdb = cluster.get("-n", NS, "pdb", name)
    assert pdb["status"]["disruptionsAllowed"] == 1, pdb["status"]
    first, first_body = evict(cluster, pods[0])
    second, second_body = evict(cluster, pods[1])
    say("cluster", f"{env}: evict {pods[0]} -> {first}; evict {pods[1]} right after -> {second} "
        f"({second_body.get('message', '')})")  # fmt: skip
    assert first == 201, first_body
    # One pod down already: a second would leave fewer than the PDB allows.
    assert second == 429, second_body
    assert "disruption budget" in second_body.get("message", ""), second_body
    assert "deletionTimestamp" not in cluster.get("-n", NS, "pod", pods[1])["metadata"]
    cluster.wait_ready(name)  # the Deployment replaced the evicted pod


def _event_time(e: Obj) -> float:
    stamp = e.get("lastTimestamp") or e.get("eventTime") or e["firstTimestamp"]
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _stop_every_process(pid: int) -> list[int]:
    """SIGSTOP every process of the container whose PID 1 is host PID `pid`: the
    gunicorn master and its worker (stopping the master alone leaves the worker
    answering the probe). Sent from the host: inside its PID namespace the
    container's PID 1 ignores SIGSTOP-like signals it has no handler for."""
    cgroups = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    cgroup = next(ln.split(":", 2)[2] for ln in cgroups if ln.split(":")[1] == "freezer")
    procs = Path(f"/sys/fs/cgroup/freezer{cgroup}/cgroup.procs").read_text()
    pids = [int(p) for p in procs.split()]
    for p in pids:
        os.kill(p, signal.SIGSTOP)
    return pids


def test_liveness_restarts_a_hung_container_after_its_thresholds(cluster: Cluster) -> None:
    cluster.deploy()
    pod = cluster.wait_ready("fiboserver-dev")[0]
    name = pod["metadata"]["name"]
    probe = pod["spec"]["containers"][0]["livenessProbe"]
    period, threshold = probe["periodSeconds"], probe["failureThreshold"]
    stopped = _stop_every_process(container_pid(pod))
    t_stop = time.time()
    deadline = t_stop + period * (threshold + 2) + 60
    killing: list[Obj] = []
    while not killing and time.time() < deadline:
        time.sleep(2)
        events = cluster.get("-n", NS, "events", "--field-selector",
                             f"involvedObject.name={name},reason=Killing")["items"]  # fmt: skip
        killing = [e for e in events if "liveness" in e.get("message", "")]
    assert killing, f"{name} was not restarted within {deadline - t_stop:.0f} s"
    decided = _event_time(killing[0]) - t_stop
    # `threshold` failures `period` apart: the first may come right after the stop,
    # so no restart before (threshold - 1) x period; event times have 1 s resolution.
    earliest = (threshold - 1) * period - 1
    latest = threshold * period + probe.get("timeoutSeconds", 1) + 5
    say("cluster", f"liveness: stopped {len(stopped)} processes of {name}; the kubelet decided to "
        f"restart it after {decided:.0f} s (allowed {earliest + 1}..{latest} s): "
        f"{killing[0]['message']}")  # fmt: skip
    assert earliest <= decided <= latest, decided
    deadline = time.time() + 120
    while time.time() < deadline:
        status = cluster.get("-n", NS, "pod", name)["status"]["containerStatuses"][0]
        if status["restartCount"] >= 1 and status.get("ready"):
            break
        time.sleep(2)
    assert status["restartCount"] == 1 and status["ready"], status
    unhealthy = cluster.get("-n", NS, "events", "--field-selector",
                            f"involvedObject.name={name},reason=Unhealthy")["items"]  # fmt: skip
    assert any("Liveness probe failed" in e["message"] for e in unhealthy), unhealthy
