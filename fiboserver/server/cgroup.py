"""CPU limit of the container, read from its cgroup, and the worker count it implies.

gunicorn's usual `2 * cores + 1` counts the host's cores; in a container with
`limits.cpu: 1` on a 64-core node that would start 129 processes fighting for
one CPU. CPU-bound Python wants one process per CPU it may actually use.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

CGROUP_ROOT = "/sys/fs/cgroup"


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2 `cpu.max` ("<quota> <period>" or "max <period>") as CPUs."""
    fields = text.split()
    if not fields or fields[0] == "max":
        return None
    period = int(fields[1]) if len(fields) > 1 else 100_000
    return int(fields[0]) / period


def parse_cfs(quota_text: str, period_text: str) -> float | None:
    """cgroup v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us` as CPUs (-1: no limit)."""
    quota, period = int(quota_text), int(period_text)
    if quota <= 0 or period <= 0:
        return None
    return quota / period


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def cpu_limit(root: str = CGROUP_ROOT) -> float | None:
    """CPUs this container may use by its cgroup quota; None when unlimited or unknown."""
    base = Path(root)
    cpu_max = _read(base / "cpu.max")
    if cpu_max is not None:
        return parse_cpu_max(cpu_max)
    for controller in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        quota = _read(base / controller / "cpu.cfs_quota_us")
        period = _read(base / controller / "cpu.cfs_period_us")
        if quota is not None and period is not None:
            return parse_cfs(quota, period)
    return None


def workers_for(limit: float | None, usable_cpus: int) -> int:
    """One worker per CPU of the quota, rounded up, else per usable CPU."""
    if limit is None:
        return max(1, usable_cpus)
    return max(1, math.ceil(limit))


def default_workers(environ: Mapping[str, str], cgroup_root: str = CGROUP_ROOT) -> int:
    """`WEB_CONCURRENCY` when set, else the rule of `workers_for`."""
    override = environ.get("WEB_CONCURRENCY")
    if override:
        count = int(override)
        if count < 1:
            raise ValueError(f"WEB_CONCURRENCY must be >= 1, got {override!r}")
        return count
    return workers_for(cpu_limit(cgroup_root), len(os.sched_getaffinity(0)))
