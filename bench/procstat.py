"""What processes and the machine use, from /proc: CPU ticks and resident memory."""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.serverproc import ServerProcess

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_ticks(pid: int) -> int:
    """utime + stime of one process, in clock ticks (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def proc_rss_bytes(pid: int) -> int:
    """Resident set size of `pid` (VmRSS in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    # A zombie has no VmRSS: measuring it is a mistake, not a size of 0.
    raise RuntimeError(f"no VmRSS for process {pid}")


def machine_busy_ticks() -> int:
    """CPU ticks spent busy by the whole machine (all cores), from /proc/stat."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in first[:8])
    return user + nice + system + irq + softirq + steal


def server_cpu_ticks(server: ServerProcess) -> int:
    """CPU ticks of a gunicorn master and its current workers."""
    return proc_cpu_ticks(server.pid) + sum(proc_cpu_ticks(p) for p in server.worker_pids())
