"""e2e, containers: the project's image built with podman on a local debootstrap base,
run with the Deployment's constraints, then the rendered dev and prod Deployments
themselves under `podman kube play`.

Ports are published on 127.0.0.1 only; every container and pod is removed at the end,
also when a test fails.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.kube import parse_quantity, render
from tests.support.podmanlib import (
    NAME_PREFIX,
    Record,
    http_get,
    json_records,
    podman,
    wait_http,
)
from tests.support.procinfo import free_port
from tests.support.repo import REPO_ROOT
from tests.support.testlog import say

pytestmark = pytest.mark.e2e

Manifest = dict[str, Any]
CAP_EFF = "print([ln.split()[1] for ln in open('/proc/1/status') if ln.startswith('CapEff')][0])"


@pytest.fixture(scope="module")
def tools(podman_tools: dict[str, str]) -> dict[str, str]:
    return podman_tools


@pytest.fixture(scope="module")
def image(e2e_image: tuple[str, float, str]) -> tuple[str, float, str]:
    """The session's one build of the service image (tests/e2e/conftest.py)."""
    return e2e_image


def overlay(env: str) -> tuple[Manifest, Manifest]:
    """(Deployment, its ConfigMap) of `kubectl kustomize k8s/overlays/<env>`."""
    objs = render(REPO_ROOT / "k8s" / "overlays" / env)
    (deploy,) = [o for o in objs if o["kind"] == "Deployment"]
    assert deploy["metadata"]["name"] == f"fiboserver-{env}"
    cm_name = next(
        v["configMap"]["name"] for v in deploy["spec"]["template"]["spec"]["volumes"]
        if "configMap" in v
    )  # fmt: skip
    (cm,) = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == cm_name]
    return deploy, cm


def worker_pids(records: list[Record]) -> set[int]:
    return {int(r["pid"]) for r in records if r.get("msg") == "worker booted"}


def check_json_only(text: str) -> list[Record]:
    records, bad = json_records(text)
    assert not bad, f"non-JSON log lines: {bad[:5]}"
    for r in records:
        assert {"ts", "level", "logger", "msg"} <= r.keys(), r
    return records


def test_image_runs_as_10001_without_compiler(
    tools: dict[str, str], image: tuple[str, float, str]
) -> None:
    tag, seconds, base_note = image
    say("e2e", base_note)
    say("e2e", f"image: built {tag} from Dockerfile on the debootstrap base in {seconds:.0f} s")
    user = podman(tools["podman"], "image", "inspect", "--format", "{{.Config.User}}", tag)
    assert user.stdout.strip().split(":")[0] == "10001", user.stdout
    probe = (
        "import glob, json, os;"
        "dirs = os.environ['PATH'].split(':') + ['/usr/lib/gcc', '/usr/libexec'];"
        "pats = ['gcc*', '*-gcc*', 'cc', 'c++', '*g++*', 'clang*', 'tcc', 'cc1*'];"
        "found = sorted({p for d in dirs for pat in pats"
        " for p in glob.glob(os.path.join(d, '**', pat), recursive=True)});"
        "print(json.dumps({'uid': os.getuid(), 'compilers': found,"
        " 'tests': os.path.exists('/app/tests'),"
        " 'pip_cache': glob.glob('/root/.cache/pip') + glob.glob('/home/*/.cache/pip')}))"
    )
    out = podman(tools["podman"], "run", "--rm", "--network", "none", tag, "python3", "-c", probe)
    facts = json.loads(out.stdout)
    say("e2e", f"image: {facts}")
    assert facts["uid"] == 10001
    assert facts["compilers"] == []
    assert not facts["tests"] and not facts["pip_cache"]


@pytest.fixture
def container(tools: dict[str, str]) -> Iterator[str]:
    name = f"{NAME_PREFIX}-{os.getpid()}-run"
    yield name
    podman(tools["podman"], "rm", "-f", "-t", "0", name, check=False)


@dataclass(frozen=True)
class AsDeployed:
    """The dev Deployment's container as `podman run` was given it."""

    port: int  # the service's, published on 127.0.0.1
    metrics_port: int  # the metrics port's, published on 127.0.0.1
    metrics_container_port: int
    cpus: float
    memory: int
    grace: int  # terminationGracePeriodSeconds


def config_files(cm: Manifest, tmp_path: Path) -> Path:
    """The ConfigMap's keys as files, readable by the image's user (10001)."""
    cfg_dir = tmp_path / "config"
    cfg_dir.mkdir()
    for key, text in cm["data"].items():
        (cfg_dir / key).write_text(text)
    cfg_dir.chmod(0o755)
    for f in cfg_dir.iterdir():
        f.chmod(0o644)
    return cfg_dir


def run_as_deployed(pm: str, container: str, tag: str, tmp_path: Path) -> AsDeployed:
    """`podman run` with the dev Deployment's limits, security context and mounts."""
    deploy, cm = overlay("dev")
    pod = deploy["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    limits = c["resources"]["limits"]
    cpus = parse_quantity(limits["cpu"])
    mem = int(parse_quantity(limits["memory"]))
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] and sc["capabilities"]["drop"] == ["ALL"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["config"]["readOnly"]
    cfg_dir = config_files(cm, tmp_path)
    port = free_port()
    metrics_port = free_port()
    container_ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    env = [f"--env={e['name']}={e['value']}" for e in c.get("env", [])]
    # The pod's memory emptyDirs (/tmp, the metrics directory) as tmpfs mounts.
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    tmpfs = [f"--tmpfs={m['mountPath']}" for m in c["volumeMounts"] if m["name"] in empty_dirs]
    assert f"--tmpfs={mounts['tmp']['mountPath']}" in tmpfs
    podman(
        pm, "run", "--detach", "--name", container,
        # readOnlyRootFilesystem; only the emptyDirs writable, nothing else that
        # podman would otherwise add as tmpfs.
        "--read-only", "--read-only-tmpfs=false", *tmpfs,
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--user", f"{sc['runAsUser']}:{sc['runAsGroup']}",
        "--memory", str(mem), "--cpus", str(cpus),
        "-v", f"{cfg_dir}:{mounts['config']['mountPath']}:ro",
        *env,
        "-p", f"127.0.0.1:{port}:{c['ports'][0]['containerPort']}",
        "-p", f"127.0.0.1:{metrics_port}:{container_ports['metrics']}",
        tag,
    )  # fmt: skip
    say(
        "e2e",
        f"container: read-only root, tmpfs /tmp, cap-drop ALL, user {sc['runAsUser']}, "
        f"memory {limits['memory']} ({mem} B), cpus {cpus}, config ro; "
        f"published on 127.0.0.1:{port}",
    )
    return AsDeployed(
        port, metrics_port, container_ports["metrics"], cpus, mem,
        int(pod["terminationGracePeriodSeconds"]),
    )  # fmt: skip


def assert_confined(pm: str, container: str, run: AsDeployed) -> None:
    """Limits as given, a read-only root but /tmp, user 10001, one worker per CPU."""
    inspect = json.loads(podman(pm, "inspect", container).stdout)[0]
    hc = inspect["HostConfig"]
    assert hc["ReadonlyRootfs"] is True
    assert hc["Memory"] == run.memory
    assert hc["CpuQuota"] / hc["CpuPeriod"] == run.cpus
    # Writes: only /tmp. The config mount is read-only too.
    writes = podman(
        pm, "exec", container, "python3", "-c",
        "import json\nres = {}\nfor p in ('/x', '/tmp/x', '/etc/fiboserver/x'):\n"
        "    try:\n        open(p, 'w').close(); res[p] = 'writable'\n"
        "    except OSError as e:\n        res[p] = e.strerror\nprint(json.dumps(res))",
    )  # fmt: skip
    w = json.loads(writes.stdout)
    assert w == {"/x": "Read-only file system", "/tmp/x": "writable",
                 "/etc/fiboserver/x": "Read-only file system"}, w  # fmt: skip
    uid = podman(pm, "exec", container, "id", "-u").stdout.strip()
    assert uid == "10001"
    records = check_json_only(podman(pm, "logs", container).stdout)
    workers = worker_pids(records)
    expected = max(1, math.ceil(run.cpus))  # the rule: one worker per CPU of the limit
    procs = podman(pm, "top", container, "pid", "args").stdout
    n_proc = sum(1 for ln in procs.splitlines()[1:] if "gunicorn" in ln)
    say(
        "e2e",
        f"container: uid {uid}, writes {w}; workers booted {len(workers)} "
        f"(CPU limit {run.cpus} -> expected {expected}), gunicorn processes {n_proc}",
    )
    assert len(workers) == expected
    assert n_proc == expected + 1  # master + workers


def assert_stops_cleanly(pm: str, container: str, grace: int) -> None:
    """`podman stop` (SIGTERM, then SIGKILL after the grace period): exit 0, at once."""
    t0 = time.monotonic()
    podman(pm, "stop", "-t", str(grace), container, timeout=grace + 30)
    stop_s = time.monotonic() - t0
    state = json.loads(podman(pm, "inspect", container).stdout)[0]["State"]
    logs = podman(pm, "logs", container)
    records = check_json_only(logs.stdout + logs.stderr)
    msgs = [r["msg"] for r in records]
    say(
        "e2e",
        f"container: podman stop -> exit {state['ExitCode']} in {stop_s:.2f} s "
        f"(grace period {grace} s); {len(records)} log lines, all JSON; "
        f"shutdown records present: {'graceful stopping server' in msgs}, "
        f"{'server stopped' in msgs}",
    )
    assert state["ExitCode"] == 0
    # Far inside the grace period: an idle server stops in about a second.
    assert stop_s < 15
    assert msgs.index("graceful stopping server") < msgs.index("server stopped")


def test_container_with_the_deployments_constraints(
    tools: dict[str, str],
    image: tuple[str, float, str],
    container: str,
    tmp_path: Path,
) -> None:
    pm = tools["podman"]
    run = run_as_deployed(pm, container, image[0], tmp_path)
    ready = wait_http(f"http://127.0.0.1:{run.port}/dev/readyz", timeout=60)
    status, body = http_get(f"http://127.0.0.1:{run.port}/dev/fibo?n=10")
    assert status == 200 and json.loads(body)["result"] == 55, (status, body)
    say("e2e", f"container: ready in {ready:.1f} s; /dev/fibo?n=10 -> {body.decode()}")
    # Metrics on the `metrics` port, their files in the pod's emptyDir.
    status, body = http_get(f"http://127.0.0.1:{run.metrics_port}/metrics")
    assert status == 200, (status, body[:200])
    assert b'fiboserver_cache_requests_total{result="miss"} 1.0' in body
    say("e2e", f"container: /metrics on {run.metrics_container_port}, {len(body)} bytes")
    assert_confined(pm, container, run)
    assert_stops_cleanly(pm, container, run.grace)


def play_copy(deploy: Manifest, cm: Manifest, image: str, host_port: int) -> str:
    """The rendered Deployment as played: image swapped for the local build, one
    replica, and the `http` port bound to 127.0.0.1:<host_port> (kube play has no
    --publish). Everything else as rendered."""
    d = json.loads(json.dumps(deploy))
    d["spec"]["replicas"] = 1
    (c,) = d["spec"]["template"]["spec"]["containers"]
    c["image"] = image
    (port,) = [p for p in c["ports"] if p["name"] == "http"]
    port["hostPort"] = host_port
    port["hostIP"] = "127.0.0.1"
    return yaml.safe_dump_all([cm, d], sort_keys=False)


def k8s_file_lines(text: str) -> str:
    """The container's own output from a k8s-file log ("<time> <stream> <F|P> <text>";
    P marks a partial line continued by the next entry)."""
    out: list[str] = []
    partial = ""
    for entry in text.splitlines():
        parts = entry.split(" ", 3)
        if len(parts) < 3:
            continue
        chunk = parts[3] if len(parts) == 4 else ""
        if parts[2] == "P":
            partial += chunk
        else:
            out.append(partial + chunk)
            partial = ""
    return "\n".join(out)


class Played:
    """One `podman kube play` of a file, its container log kept in a file of ours."""

    def __init__(self, binary: str, path: Path) -> None:
        self.binary, self.path = binary, path
        self.log_path = path.with_suffix(".log")

    def play(self) -> None:
        podman(
            self.binary, "kube", "play", "--log-opt", f"path={self.log_path}", str(self.path),
            timeout=180,
        )  # fmt: skip

    def log_text(self) -> str:
        return k8s_file_lines(self.log_path.read_text()) if self.log_path.exists() else ""

    def stop(self, pod: str, grace: int) -> tuple[int, float]:
        """Stop the pod as the kubelet does: SIGTERM, SIGKILL after the grace period.
        (podman 4.3's `kube down` alone SIGKILLs at once: containers/podman#22397.)"""
        t0 = time.monotonic()
        rc = podman(
            self.binary, "pod", "stop", "-t", str(grace), pod, check=False, timeout=grace + 60
        ).returncode
        return rc, time.monotonic() - t0

    def down(self) -> int:
        return podman(
            self.binary, "kube", "down", str(self.path), check=False, timeout=120
        ).returncode


@pytest.fixture
def kube(tools: dict[str, str]) -> Iterator[list[Played]]:
    played: list[Played] = []
    yield played
    for p in played:
        p.down()


def assert_played_as_written(pm: str, ctr: str, deploy: Manifest, env: str) -> None:
    """The played container got the Deployment's user, limits and read-only mounts."""
    inspect = json.loads(podman(pm, "inspect", ctr).stdout)[0]
    hc = inspect["HostConfig"]
    (c,) = deploy["spec"]["template"]["spec"]["containers"]
    limits = c["resources"]["limits"]
    mounts = {m["Destination"]: m for m in inspect["Mounts"]}
    facts = {
        "user": inspect["Config"]["User"],
        "read_only_root": hc["ReadonlyRootfs"],
        "memory": hc["Memory"],
        "cpus": hc["CpuQuota"] / hc["CpuPeriod"] if hc["CpuPeriod"] else None,
        "config_mount_rw": mounts.get("/etc/fiboserver", {}).get("RW"),
        # Effective capabilities of gunicorn (PID 1): drop ALL leaves none.
        "cap_eff": podman(pm, "exec", ctr, "python3", "-c", CAP_EFF).stdout.strip(),
    }
    say("e2e", f"kube play {env}: {facts}")
    assert facts["user"].split(":")[0] == "10001"
    assert facts["read_only_root"] is True
    assert facts["memory"] == int(parse_quantity(limits["memory"]))
    assert facts["cpus"] == parse_quantity(limits["cpu"])
    assert facts["config_mount_rw"] is False
    assert int(facts["cap_eff"], 16) == 0


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_kube_play_the_rendered_deployment(
    env: str,
    tools: dict[str, str],
    image: tuple[str, float, str],
    kube: list[Played],
    tmp_path: Path,
) -> None:
    pm = tools["podman"]
    deploy, cm = overlay(env)
    port = free_port()
    path = tmp_path / f"{env}.yaml"
    path.write_text(play_copy(deploy, cm, image[0], port))
    p = Played(pm, path)
    p.down()  # a leftover of a killed run with the same names
    kube.append(p)
    t0 = time.monotonic()
    p.play()
    name = deploy["metadata"]["name"]
    pod = f"{name}-pod-0"  # podman names the pods of a played Deployment <name>-pod-<i>
    ctr = f"{pod}-{deploy['spec']['template']['spec']['containers'][0]['name']}"
    prefix = f"/{env}"
    ready = wait_http(f"http://127.0.0.1:{port}{prefix}/readyz", timeout=60)
    say("e2e", f"kube play {env}: pod {pod} ready on 127.0.0.1:{port} in "
                f"{time.monotonic() - t0:.1f} s (readyz polled for {ready:.1f} s)")  # fmt: skip

    # Uncached n: DEV logs its cache records at DEBUG, PROD (INFO) must not.
    for n in (10, 4321):
        status, body = http_get(f"http://127.0.0.1:{port}{prefix}/fibo?n={n}")
        assert status == 200, (status, body)
        if n == 10:
            assert json.loads(body)["result"] == 55
    other = "/prod" if env == "dev" else "/dev"
    assert http_get(f"http://127.0.0.1:{port}{other}/fibo?n=10")[0] == 404

    assert_played_as_written(pm, ctr, deploy, env)

    grace = int(deploy["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])
    stop_rc, seconds = p.stop(pod, grace)
    exit_code = json.loads(podman(pm, "inspect", ctr).stdout)[0]["State"]["ExitCode"]
    rc = p.down()
    records = check_json_only(p.log_text())
    levels = sorted({r["level"] for r in records})
    msgs = [r["msg"] for r in records]
    debug = sum(1 for r in records if r["level"] == "DEBUG")
    say(
        "e2e",
        f"kube play {env}: {len(records)} JSON log lines, levels {levels} ({debug} DEBUG); "
        f"podman pod stop -t {grace} -> container exit {exit_code} in {seconds:.2f} s, "
        f"'server stopped' logged: {'server stopped' in msgs}; podman kube down -> exit {rc}",
    )
    assert stop_rc == 0 and exit_code == 0 and rc == 0
    assert seconds < 15  # an idle server: about a second, far inside the grace period
    if env == "dev":
        assert any(r["msg"] == "cache miss" and r["level"] == "DEBUG" for r in records)
    else:
        assert debug == 0
        assert any(r["msg"] == "end" for r in records)  # it did log the requests
    assert msgs.index("graceful stopping server") < msgs.index("server stopped")
    assert podman(pm, "pod", "exists", pod, check=False).returncode != 0
