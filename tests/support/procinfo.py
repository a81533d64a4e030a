"""What the kernel says about loopback ports and processes, for tests and bench/ alike.

Read without side effects: free and listening ports on 127.0.0.1; a process's
children, state, CPU time and pending signals (/proc/<pid>); a listener's accept
queue and a port's established connections (/proc/net/tcp, tcp6), and which process holds the
server's end of a connection. Plus ``wait_until``, the one
polling loop. ``serverproc.ServerProcess`` uses them for the server it starts.

Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path

HOST = "127.0.0.1"


def free_port(avoid: int = 0) -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (the kernel picks it),
    other than `avoid`."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port: int = s.getsockname()[1]
        if port != avoid:
            return port


def is_listening(port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def child_pids(pid: int) -> set[int]:
    """Direct children of `pid` (the gunicorn master's workers), from /proc."""
    children: set[int] = set()
    task_dir = Path(f"/proc/{pid}/task")
    try:
        tasks = list(task_dir.iterdir())
    except FileNotFoundError:
        return children
    for task in tasks:
        try:
            text = (task / "children").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        children.update(int(p) for p in text.split())
    return children


def listen_queue(port: int) -> int:
    """Connections the kernel has accepted on a TCP listener on `port` that no
    process has accept()ed yet (the `rx_queue` of a LISTEN socket in /proc/net/tcp)."""
    queued = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                local, state, queues = fields[1], fields[3], fields[4]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    queued += int(queues.split(":")[1], 16)
    return queued


def established(port: int) -> int:
    """Established TCP connections whose local port is `port` (the server's side
    of its clients' connections), from /proc/net/tcp and tcp6."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


def socket_owner(port: int, peer_port: int, pids: Iterable[int]) -> int | None:
    """Which of `pids` holds the socket whose local port is `port` and whose peer's
    is `peer_port` (a server's end of one client connection on 127.0.0.1), or None.
    The socket's inode from /proc/net/tcp, then each process's descriptors."""
    inode = None
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, remote = fields[1], fields[2]
            if int(local.rsplit(":", 1)[1], 16) == port and (
                int(remote.rsplit(":", 1)[1], 16) == peer_port
            ):
                inode = fields[9]
                break
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        with contextlib.suppress(FileNotFoundError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == target:
                        return pid
    return None


def process_state(pid: int) -> str:
    """The state letter of /proc/<pid>/stat: R, S, D, T (stopped), Z, ..."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


def has_exited(pid: int) -> bool:
    """Whether `pid` has exited: gone, or a zombie not reaped yet (an orphan's
    new parent may take its time)."""
    try:
        return process_state(pid) == "Z"
    except FileNotFoundError:
        return True


def cpu_seconds(pid: int) -> float:
    """CPU time `pid` has used, user and system (utime and stime of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pending_signals(pid: int) -> set[int]:
    """Signals sent to `pid` and not yet delivered (SigPnd and ShdPnd in /proc/<pid>/status)."""
    mask = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("SigPnd", "ShdPnd"):
            mask |= int(value, 16)
    return {sig for sig in range(1, 65) if mask & (1 << (sig - 1))}


def wait_until(
    condition: Callable[[], object], timeout: float, what: str, interval: float = 0.01
) -> None:
    """Poll `condition` every `interval` s until it is true; fail naming `what`
    after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(interval)
