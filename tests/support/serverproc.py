"""Run the real fiboserver process (``gunicorn -c gunicorn.conf.py``) from tests and benchmarks.

THE one helper that starts a real server: pytest, tests/e2e and bench/ (``make bench``)
all start theirs through ``ServerProcess``.

The process is started exactly as users start it: from the repository root, with
``FIBOSERVER_CONFIG`` naming a YAML file, using the gunicorn next to ``sys.executable``
(i.e. ``.venv/bin/gunicorn``). Every line it writes to stdout or stderr is collected by
background threads; lines that parse as JSON objects become ``records`` (``serverlog``).

Typical use::

    from tests.support.serverproc import ServerProcess

    with ServerProcess({"env": "DEV", "maxseq": 100000}, tmp_path,
                       env={"WEB_CONCURRENCY": "2"}) as srv:
        srv.wait_for("server start")
        status, headers, body = srv.get("/dev/fibo?n=10")
        srv.terminate(signal.SIGTERM)
        assert srv.wait(30) == 0
    srv.records      # every JSON log record, in arrival order
    srv.bad_lines    # lines that were not one JSON object (should stay empty)

- ``config`` is a mapping (written as YAML to ``tmp_dir``; ``port`` and ``metrics_port``
  are set to free loopback ports unless the mapping has them), a ``Path`` used as is,
  or ``None`` to leave ``FIBOSERVER_CONFIG`` unset. ``srv.port`` is the port in use,
  ``srv.metrics_port`` the one of /metrics (0: off, or unknown for a ``Path``).
- ``PROMETHEUS_MULTIPROC_DIR`` is ``tmp_dir/<name>.metrics`` (``srv.metrics_dir``)
  unless ``env`` names one (an empty value: the server makes a private one).
- ``env`` adds or overrides environment variables (``WEB_CONCURRENCY``, ...). The
  inherited ``WEB_CONCURRENCY``, ``GUNICORN_CMD_ARGS``, ``FIBOSERVER_CONFIG`` and
  ``PYTHONDONTWRITEBYTECODE``, and every ``OTEL_*`` (tracing), are dropped first so a
  developer's shell cannot change what a test runs (the image ships compiled
  bytecode: a measured start-up uses it too).
- ``args`` follow ``-c gunicorn.conf.py`` (options, then an app such as
  ``bench.ceiling:app``); ``cwd`` is the tree to run from (``bench.compare`` runs an
  older commit's).
- ``log_path``: stdout and stderr go to this file instead of being read line by
  line. For load runs, where parsing every record would take CPU from the server
  under test; ``records``, ``lines``, ``find`` and ``wait_for`` are then unused and
  ``output()`` reads the file.
- ``on_line(stream, line)`` is called from the reader thread for each line as it
  arrives, for tests that must react within milliseconds (e.g. signal a worker
  while it boots).
- The server runs in its own session (process group); leaving the ``with`` block
  (or ``close()``) SIGKILLs that group if anything is still running, so no worker
  outlives a test. Signals from ``terminate()`` go to the master only, as a
  container runtime would send them to PID 1.
- Only 127.0.0.1 is ever contacted.

Ports and processes are inspected with ``procinfo`` (``free_port``, ``child_pids``,
``wait_until``, ...), which tests import from there.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

import yaml

from tests.support.clients import request_once
from tests.support.procinfo import (
    HOST,
    child_pids,
    free_port,
    listen_queue,
    pending_signals,
    process_state,
    wait_until,
)
from tests.support.repo import REPO_ROOT
from tests.support.serverlog import Record, ServerLog

GUNICORN = str(Path(sys.executable).parent / "gunicorn")
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


class ServerProcess:
    """One real fiboserver process; see the module docstring."""

    def __init__(
        self,
        config: Mapping[str, object] | Path | None,
        tmp_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        name: str = "fiboserver.yaml",
        on_line: Callable[[str, str], None] | None = None,
        cwd: Path = REPO_ROOT,
        log_path: Path | None = None,
    ) -> None:
        self.port: int = free_port()
        self.metrics_port: int = 0
        self.config_path: Path | None
        if isinstance(config, Path):
            self.config_path = config
        elif config is None:
            self.config_path = None
        else:
            data = dict(config)
            if "port" in data and isinstance(data["port"], int) and data["port"] > 0:
                self.port = int(data["port"])
            data.setdefault("port", self.port)
            if "metrics_port" not in data:
                data["metrics_port"] = free_port(avoid=self.port)
            if isinstance(data["metrics_port"], int) and not isinstance(data["metrics_port"], bool):
                self.metrics_port = data["metrics_port"]
            self.config_path = tmp_dir / name
            self.config_path.write_text(yaml.safe_dump(data))
        self.metrics_dir = tmp_dir / f"{Path(name).stem}.metrics"
        self._env = dict(os.environ)
        for var in (
            "WEB_CONCURRENCY",
            "GUNICORN_CMD_ARGS",
            "FIBOSERVER_CONFIG",
            "PYTHONDONTWRITEBYTECODE",
            METRICS_DIR_ENV,
        ):
            self._env.pop(var, None)
        # Tracing is configured by OTEL_* variables alone: a shell that exports to
        # `make traces` must not turn it on in a test that did not ask.
        for var in [v for v in self._env if v.startswith("OTEL_")]:
            del self._env[var]
        if self.config_path is not None:
            self._env["FIBOSERVER_CONFIG"] = str(self.config_path)
        self._env[METRICS_DIR_ENV] = str(self.metrics_dir)
        self._env.update(env or {})
        self._args = [GUNICORN, "-c", "gunicorn.conf.py", *args]
        self.cwd = cwd
        self.log_path = log_path
        self._log = ServerLog(on_line)
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0  # time.perf_counter() just before the process started

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> ServerProcess:
        self.started_at = time.perf_counter()
        if self.log_path is not None:
            with open(self.log_path, "ab") as log_file:  # the child keeps its own copy
                self.proc = self._popen(log_file, subprocess.STDOUT)
            return self
        self.proc = self._popen(subprocess.PIPE, subprocess.PIPE)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._log.follow("stdout", self.proc.stdout)
        self._log.follow("stderr", self.proc.stderr)
        return self

    def _popen(self, stdout: IO[bytes] | int, stderr: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self._args,
            cwd=self.cwd,
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,  # own process group: teardown can kill workers too
        )

    def print_config(self) -> dict[str, str]:
        """gunicorn's resolved settings for this command line and environment
        (``--print-config``; the server itself need not run)."""
        out = subprocess.run(
            [*self._args[:3], "--print-config", *self._args[3:]],
            cwd=self.cwd,
            env=self._env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        settings = {}
        for line in out.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                settings[key.strip()] = value.strip()
        return settings

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def freeze_workers(self, count: int) -> list[int]:
        """SIGSTOP this server's `count` workers once booted: new connections then
        wait in the listen queue, accepted by nobody. Their pids."""
        workers = self.wait_workers(count)
        wait_until(lambda: len(self.find("worker booted")) == count, 30, "workers booted")
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        wait_until(lambda: all(process_state(p) == "T" for p in workers), 10, "workers stopped")
        return workers

    def sigterm_with_queue(self, workers: Sequence[int], queued: int) -> None:
        """Once `queued` connections wait in the listen queue of the frozen
        `workers`, SIGTERM the server, let the master's SIGTERM reach every worker,
        and let them go on: they stop with the whole queue still to serve."""
        wait_until(lambda: listen_queue(self.port) == queued, 10, f"{queued} queued")
        self.terminate(signal.SIGTERM)
        self.wait_for("graceful stopping server", timeout=10)
        wait_until(
            lambda: all(signal.SIGTERM in pending_signals(pid) for pid in workers),
            10,
            "SIGTERM pending in every worker",
        )
        for pid in workers:
            os.kill(pid, signal.SIGCONT)

    def terminate(self, sig: int = signal.SIGTERM) -> None:
        """Send `sig` to the master process only."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def wait_ready(self, path: str, timeout: float = 30.0) -> float:
        """Poll GET `path` until it answers 200; seconds from `start()` to that answer.
        Fails with the log tail if the process exits; kills it after `timeout` s."""
        assert self.proc is not None, "not started"
        deadline = self.started_at + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"exited {self.proc.returncode} before {path} answered 200; "
                    f"last lines:\n{self._tail()}"
                )
            with contextlib.suppress(OSError):  # not listening yet
                if self.get(path, timeout=1.0)[0] == 200:
                    return time.perf_counter() - self.started_at
            time.sleep(0.005)
        self.close()
        raise AssertionError(f"{path} not 200 within {timeout}s; last lines:\n{self._tail()}")

    def worker_pids(self) -> list[int]:
        return sorted(child_pids(self.pid))

    def wait_workers(self, count: int, timeout: float = 30.0) -> list[int]:
        """Wait until `count` workers run (the first 200 may come from the first one
        alone); their pids."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = self.worker_pids()
            if len(pids) == count:
                return pids
            time.sleep(0.02)
        raise AssertionError(f"{len(self.worker_pids())} workers, expected {count}")

    def stop(self, timeout: float = 40.0) -> tuple[float, int]:
        """SIGTERM the master and wait: (seconds from the signal to its exit, exit
        status). Kills the process group if it is still running after `timeout`."""
        t0 = time.perf_counter()
        self.terminate(signal.SIGTERM)
        try:
            code = self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.close()
            raise
        return time.perf_counter() - t0, code

    def wait(self, timeout: float = 30.0, *, log_eof: bool = True) -> int:
        """Exit status of the master (negative: killed by that signal); waits for log
        EOF unless `log_eof` is False (a new master from USR2 keeps the pipes open)."""
        assert self.proc is not None
        rc = self.proc.wait(timeout=timeout)
        if log_eof:
            self._log.join()
        return rc

    def close(self) -> None:
        """Kill whatever is left of the process group (idempotent)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self._log.join()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- logs ----------------------------------------------------------------------
    @property
    def lines(self) -> list[tuple[str, str]]:
        """Every line so far as (stream name, raw line), in arrival order."""
        return self._log.lines

    @property
    def records(self) -> list[Record]:
        """Every JSON log record so far, in arrival order."""
        return self._log.records

    @property
    def bad_lines(self) -> list[tuple[str, str]]:
        """Lines that were not one JSON object (should stay empty)."""
        return self._log.bad_lines

    def find(
        self,
        msg: str | None = None,
        where: Callable[[Record], bool] | None = None,
        start: int = 0,
    ) -> list[Record]:
        """Records from index `start` on with this `msg` that satisfy `where`."""
        return self._log.find(msg, where, start)

    def wait_for(
        self,
        msg: str | None,
        timeout: float = 15.0,
        where: Callable[[Record], bool] | None = None,
        start: int = 0,
    ) -> Record:
        """First record (index >= `start`) with this `msg` matching `where`; waits up to
        `timeout` s. Fails with the log tail if it does not come or the process exits."""
        if self.log_path is not None:
            raise RuntimeError(f"records are not collected: the output goes to {self.log_path}")
        return self._log.wait_for(
            msg, timeout, where, start, lambda: None if self.proc is None else self.proc.poll()
        )

    def output(self) -> str:
        """All captured lines, stdout and stderr interleaved in arrival order."""
        if self.log_path is not None:
            return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return self._log.text()

    def _tail(self, count: int = 30) -> str:
        if self.log_path is not None:
            return "\n".join(self.output().splitlines()[-count:])
        return self._log.tail(count)

    # -- HTTP ----------------------------------------------------------------------
    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"

    def connection(
        self, timeout: float = 30.0, port: int | None = None
    ) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(HOST, port or self.port, timeout=timeout)

    def get(
        self,
        path: str,
        headers: Mapping[str, str] | None = None,
        method: str = "GET",
        timeout: float = 30.0,
        port: int | None = None,
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """One request on a fresh connection (Connection: close): (status, headers, body).
        `port`: another of the server's ports (``metrics_port``) instead of the API's."""
        return request_once(self.connection(timeout, port), method, path, headers)

    def scrape(self, timeout: float = 10.0) -> str:
        """The server's `GET /metrics` on ``metrics_port``, Prometheus text format."""
        assert self.metrics_port, "metrics are off"
        status, _, body = self.get("/metrics", timeout=timeout, port=self.metrics_port)
        assert status == 200, (status, body[:200])
        return body.decode()
