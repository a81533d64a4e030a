"""The server's side of the metrics: what the gunicorn master and its workers
record at each stage of their lives. fiboserver.server.hooks calls one function here
from each hook:

- `server_ready` (master, `when_ready`): set up PROMETHEUS_MULTIPROC_DIR, record
  the build info, `fiboserver_draining` 0 and every exit reason at 0 (so the
  first exit is a change that rate() sees), and serve /metrics.
- `worker_forking` (master, `pre_fork`): give the worker its exit mark.
- `worker_booted` (worker, `post_worker_init`): count it in `fiboserver_workers`.
- `worker_exiting` (worker, `worker_exit`): set its exit mark.
- `worker_exited` (master, `child_exit`): the exit reason, counted; the dead
  worker's files handed to fiboserver.metrics.multiproc.
- `server_draining` (master, on SIGTERM) and `server_exiting` (master, `on_exit`).

Why an exit mark: gunicorn gives `child_exit` the worker but not its exit
status. Each worker gets one byte of memory shared with the master (an
anonymous shared mapping, made before the fork) and sets it in gunicorn's
`worker_exit` hook, which runs on every exit the worker makes itself: a
graceful stop, a reload, max_requests, an error, the abort on timeout. A worker
killed by a signal (SIGKILL, the OOM killer, a crash) never sets it.
"""

from __future__ import annotations

import logging
import mmap
import os
import sys
from dataclasses import dataclass
from typing import Any

from fiboserver.metrics import multiproc
from fiboserver.metrics.definitions import ExitReason, build_info, process_metrics
from fiboserver.metrics.exposition import MetricsServer

log = logging.getLogger("fiboserver.server")

_MARK = "fiboserver_exit_mark"


@dataclass
class _Master:
    directory: multiproc.Directory
    server: MetricsServer


_master: _Master | None = None


def exit_reason(aborted_on_timeout: bool, exited_by_itself: bool) -> ExitReason:
    """TIMEOUT when the master aborted the worker for being silent past
    `timeout`, else EXITED when it ended by itself, else KILLED."""
    if aborted_on_timeout:
        return ExitReason.TIMEOUT
    return ExitReason.EXITED if exited_by_itself else ExitReason.KILLED


def server_ready(port: int, *, upgrading: bool) -> None:
    """Master: metrics on /metrics at `port` (0: off). `upgrading`: this master
    was started by USR2 beside an old one, which still serves the port. Exits the
    process when the directory or the port cannot be used."""
    global _master
    if not port or _master is not None:
        return
    try:
        directory = multiproc.prepare(os.environ, upgrading)
    except multiproc.MultiprocDirError as exc:
        log.critical("invalid configuration", extra={"errmsg": str(exc)})
        sys.exit(os.EX_CONFIG)
    if not multiproc.in_multiprocess_mode():
        # Every value would stay in the process that records it, unseen by scrapes.
        log.critical(
            "prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set up",
            extra={
                "errmsg": "import it only where metrics are built (fiboserver.metrics.definitions)"
            },
        )
        sys.exit(os.EX_SOFTWARE)
    from prometheus_client import CollectorRegistry

    metrics = process_metrics()
    metrics.build_info.labels(*build_info()).set(1)
    metrics.draining.set(0)
    for counter in metrics.worker_exits.values():
        counter.inc(0)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(multiproc.Collector(directory.path))
    metrics_server = MetricsServer(port, registry, directory.path)
    if upgrading:
        metrics_server.start_when_free()  # the old master has it until it exits
    else:
        try:
            metrics_server.start()
        except OSError as exc:
            log.critical(
                "cannot listen for metrics",
                extra={"addr": metrics_server.addr, "errmsg": str(exc)},
            )
            sys.exit(1)
    _master = _Master(directory, metrics_server)


def worker_forking(worker: Any) -> None:
    setattr(worker, _MARK, mmap.mmap(-1, 1))  # anonymous, MAP_SHARED: survives the fork


def worker_booted() -> None:
    if _master is not None:  # set in the master before the fork
        process_metrics().workers.set(1)


def worker_exiting(worker: Any) -> None:
    # pre_fork gave every worker its mark; only the master closes its copy.
    mark: mmap.mmap = getattr(worker, _MARK)
    mark[0] = 1


def worker_exited(worker: Any, aborted_on_timeout: bool) -> ExitReason:
    """Master: the worker's exit reason, counted; its metric files archived."""
    mark: mmap.mmap | None = getattr(worker, _MARK, None)
    exited_by_itself = mark is not None and mark[0] == 1
    if mark is not None:
        mark.close()
    reason = exit_reason(aborted_on_timeout, exited_by_itself)
    if _master is not None:
        try:
            process_metrics().worker_exits[reason].inc()
            multiproc.worker_died(_master.directory.path, worker.pid)
        except Exception:
            # The master must go on replacing workers whatever happens here.
            log.exception("cannot account for the worker's metrics", extra={"pid": worker.pid})
    return reason


def server_draining() -> None:
    if _master is not None:
        process_metrics().draining.set(1)


def server_exiting() -> None:
    global _master
    if _master is not None:
        # The listener closes with the process: stopping its thread first would
        # only wait out the thread's poll interval (half a second).
        multiproc.close(_master.directory)
        _master = None
