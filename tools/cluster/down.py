"""`make cluster-down`: stop what `make cluster-up` started and remove what it and
its parts made, then list anything left (`leftovers()`, also used by the tests).
Safe to run twice, and after a run that died half way.

Order matters: the kubelet stops first (nothing restarts pods), then every pod
sandbox is removed through the CRI (containerd runs the CNI DEL: veths, IP
leases, the bridge plugin's NAT rules go), then kube-proxy removes its rules
(`kube-proxy --cleanup`), then the rest stops and its mounts, bridge, cgroups,
state and host settings go, and the chains and ipsets kube-router made.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from tools.cluster.addons import NAMES as ADDONS
from tools.cluster.binaries import CACHE, CONTAINERD, CRITOOLS, KUBERNETES
from tools.cluster.layout import (
    BRIDGE,
    CLUSTER_CIDR,
    CNI_NETWORK,
    CONTAINERD_SOCK,
    HOST_DIRS,
    KUBECONFIG,
    OWNER,
    ROUTE_LOCALNET,
    RUN,
    SERVICE_CIDR,
    STATE,
)
from tools.cluster.netpol import NAME as NETPOL
from tools.cluster.netpol import ipsets, remove_ipsets
from tools.cluster.procs import kill, pid_of, processes_running, stop

CGROUP_ROOT = Path("/sys/fs/cgroup")
TABLES = ("filter", "nat", "mangle")


def _run(*argv: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def _remove_pods() -> None:
    if pid_of("containerd") is None or not CRITOOLS.cached():
        return
    crictl: list[str | Path] = [CRITOOLS.path("crictl"), "--runtime-endpoint",
                                f"unix://{CONTAINERD_SOCK}", "--timeout", "60s"]  # fmt: skip
    _run(*crictl, "rmp", "--all", "--force", timeout=180)
    _run(*crictl, "rm", "--all", "--force")


def _kubepods_cgroups() -> list[Path]:
    """The kubelet's cgroups (cgroupfs driver: /kubepods in every hierarchy)."""
    found: list[Path] = []
    for hierarchy in CGROUP_ROOT.iterdir():
        top = hierarchy / "kubepods"
        if top.is_dir():
            found += sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
            found.append(top)
    return found


def _kill_and_remove_cgroups() -> None:
    for cg in _kubepods_cgroups():
        with contextlib.suppress(OSError):
            for pid in (cg / "cgroup.procs").read_text().split():
                kill(int(pid), timeout=5)
    for cg in _kubepods_cgroups():
        with contextlib.suppress(OSError):
            cg.rmdir()


def _our_mounts() -> list[str]:
    prefixes = (f"{STATE}/", f"{RUN}/", str(STATE), str(RUN))
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefixes):
            points.append(point)
    return sorted(set(points), key=lambda p: -p.count("/"))


def _unmount() -> None:
    for point in _our_mounts():
        if _run("umount", point).returncode != 0:
            _run("umount", "--lazy", point)


def _iptables_rules(table: str) -> list[str]:
    return _run("iptables-save", "-t", table).stdout.splitlines()


def _octets(cidr: str) -> str:
    """'10.244.0.0/16' -> '10.244.': the text every address in the range starts with."""
    net = ipaddress.ip_network(cidr)
    return ".".join(str(net.network_address).split(".")[: net.prefixlen // 8]) + "."


OUR_TEXT = ("KUBE-", f'"{CNI_NETWORK}"', _octets(CLUSTER_CIDR), _octets(SERVICE_CIDR))


def _ours(line: str) -> bool:
    """A rule or chain kube-proxy or our CNI network made."""
    return any(text in line for text in OUR_TEXT)


def _sweep_iptables() -> None:
    """What `kube-proxy --cleanup` and the CNI DEL did not remove (a run that died):
    rules that name our chains, network or ranges, then those chains."""
    for table in TABLES:
        lines = _iptables_rules(table)
        chains = {ln[1:].split()[0] for ln in lines if ln.startswith(":")}
        ours = {c for c in chains if c.startswith("KUBE-")}
        # The bridge plugin's per-pod NAT chains carry our network's name.
        for ln in lines:
            if ln.startswith("-A ") and f'"{CNI_NETWORK}"' in ln:
                ours.add(ln.split()[1])
        for ln in lines:
            if not ln.startswith("-A "):
                continue
            target = re.search(r" -[jg] (\S+)", ln)
            if _ours(ln) or (target and target.group(1) in ours):
                # iptables-save quotes comments the way a shell does.
                _run("iptables", "-t", table, "-D", *shlex.split(ln[3:]))
        for chain in ours:
            _run("iptables", "-t", table, "-F", chain)
        for chain in ours:
            _run("iptables", "-t", table, "-X", chain)


def _added(saved: dict[str, object]) -> list[Path]:
    """What HOST_DIRS gained since `up` recorded them (a directory it created whole)."""
    record = saved.get("host_dirs")
    if not isinstance(record, dict):
        return []
    added: list[Path] = []
    for d in HOST_DIRS:
        before = record.get(str(d))
        if not d.is_dir():
            continue
        if before is None:
            added.append(d)
        elif isinstance(before, list):
            added += [e for e in d.iterdir() if e.name not in before]
    return added


def _restore_host(saved: dict[str, object]) -> None:
    value = saved.get("route_localnet")
    if isinstance(value, str):
        ROUTE_LOCALNET.write_text(value + "\n")
    for entry in _added(saved):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def down(quiet: bool = False) -> list[str]:
    """Stop and remove everything; returns `leftovers()`."""
    try:
        saved: dict[str, object] = json.loads(OWNER.read_text())
    except (OSError, ValueError):
        saved = {}
    stopped = []
    if stop("kubelet"):
        stopped.append("kubelet")
    _remove_pods()
    if stop("kube-proxy"):
        stopped.append("kube-proxy")
    if KUBERNETES.cached():
        _run(KUBERNETES.path("kube-proxy"), "--cleanup")
    for name in (*ADDONS, NETPOL, "containerd", "kube-scheduler", "kube-controller-manager",
                 "kube-apiserver", "etcd"):  # fmt: skip
        if stop(name):
            stopped.append(name)
    # Shims and anything else from the cache that outlived its parent.
    for pid, _ in processes_running(CACHE):
        kill(pid, timeout=5)
    _kill_and_remove_cgroups()
    _unmount()
    with contextlib.suppress(FileNotFoundError):
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            _run("ip", "link", "delete", BRIDGE)
    _sweep_iptables()  # kube-router's chains too (KUBE-*)
    remove_ipsets()  # kube-router's, no longer used by any rule
    _restore_host(saved)
    for d in (STATE, RUN):
        shutil.rmtree(d, ignore_errors=True)
    repo = saved.get("repo")
    kubeconfig = Path(repo) / ".cluster" / "kubeconfig" if isinstance(repo, str) else KUBECONFIG
    kubeconfig.unlink(missing_ok=True)
    left = leftovers(saved)
    if not quiet:
        print(f"cluster: down; stopped {', '.join(stopped) or 'nothing (was not running)'}")
    return left


def leftovers(saved: dict[str, object] | None = None) -> list[str]:
    """Anything of the cluster still on this machine, one line each; `saved` is
    what `up` recorded (route_localnet, HOST_DIRS) to compare the host with."""
    saved = saved or {}
    left = [f"process {pid}: {cmd}" for pid, cmd in processes_running(CACHE)]
    left += [f"added under {e.parent}: {e.name}" for e in _added(saved)]
    value = saved.get("route_localnet")
    if isinstance(value, str) and ROUTE_LOCALNET.read_text().strip() != value:
        left.append(f"{ROUTE_LOCALNET} is not back to {value}")
    left += [f"mount {m}" for m in _our_mounts()]
    left += [f"directory {d}" for d in (STATE, RUN) if d.exists()]
    left += [f"cgroup {c}" for c in _kubepods_cgroups()]
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        left.append(f"interface {BRIDGE}")
    for table in TABLES:
        left += [f"iptables -t {table}: {ln}" for ln in _iptables_rules(table) if _ours(ln)]
    left += [f"ipset {name}" for name in ipsets()]
    for link in json.loads(_run("ip", "-j", "link").stdout or "[]"):
        if link.get("master") == BRIDGE:
            left.append(f"interface {link['ifname']} (on {BRIDGE})")
    if CONTAINERD.cached():
        with contextlib.suppress(OSError):
            left += [f"socket {p}" for p in (CONTAINERD_SOCK,) if p.exists()]
    if os.path.exists(KUBECONFIG):
        left.append(f"kubeconfig {KUBECONFIG}")
    return left
