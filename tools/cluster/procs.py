"""The cluster's long-running processes: started detached (own session, output to
.cluster/logs/<name>.log) with their PID in RUN/pids/<name>, stopped by that PID."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tools.cluster.layout import LOGS, PIDS, component_path


def start(name: str, argv: Sequence[str | Path], env: dict[str, str] | None = None) -> int:
    LOGS.mkdir(parents=True, exist_ok=True)
    PIDS.mkdir(parents=True, exist_ok=True)
    log = (LOGS / f"{name}.log").open("ab")
    proc = subprocess.Popen(
        [str(a) for a in argv],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        # Outlives `make cluster-up`; `make cluster-down` ends it by this PID.
        start_new_session=True,
        env={**os.environ, "PATH": component_path(), **(env or {})},
    )
    log.close()
    (PIDS / name).write_text(f"{proc.pid}\n")
    return proc.pid


def pid_of(name: str) -> int | None:
    path = PIDS / name
    try:
        pid = int(path.read_text())
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def stop(name: str, timeout: float = 20.0) -> bool:
    """SIGTERM, then SIGKILL after `timeout`; True if it was running."""
    pid = pid_of(name)
    (PIDS / name).unlink(missing_ok=True)
    if pid is None:
        return False
    kill(pid, timeout)
    return True


def kill(pid: int, timeout: float = 20.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while alive(pid):
            time.sleep(0.05)
    # Our own child when started by this process: reap it.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def wait_component(what: str, check: Callable[[], bool], timeout: float, name: str) -> float:
    """Poll `check` until true while process `name` runs; seconds waited. Fails
    (SystemExit) with the end of its log as soon as the process exits: unlike
    tests.support.procinfo.wait_until, a check that raises counts as not yet."""
    t0 = time.monotonic()
    problem = f"not ready after {timeout:.0f} s"
    while time.monotonic() - t0 < timeout:
        with contextlib.suppress(Exception):
            if check():
                return time.monotonic() - t0
        if pid_of(name) is None:
            problem = "exited"
            break
        time.sleep(0.25)
    log = LOGS / f"{name}.log"
    tail = "\n    ".join(log.read_text(errors="replace").splitlines()[-15:]) if log.exists() else ""
    raise SystemExit(f"cluster: {what} {problem}; the end of {log}:\n    {tail}")


def processes_running(exe_dir: Path) -> list[tuple[int, str]]:
    """(pid, command) of every process whose executable lives in `exe_dir`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            exe = os.readlink(entry / "exe")
        except OSError:
            continue
        if exe.startswith(f"{exe_dir}/"):
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            found.append((int(entry.name), cmd.strip()))
    return found
