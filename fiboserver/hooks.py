"""gunicorn server hooks: what the master and the workers do at each stage.

gunicorn.conf.py wires each of gunicorn's hooks to one function here; the
comment next to each says when gunicorn calls it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from fiboserver import servermetrics
from fiboserver.listener import refuse_new_connections
from fiboserver.reload import reload_safely

log = logging.getLogger("fiboserver.server")


# Master, once the listening sockets are open, before the workers start.
def when_ready(server: Any) -> None:
    logging.captureWarnings(True)
    servermetrics.server_ready(server)
    addresses = ",".join(str(listener) for listener in server.LISTENERS)
    log.info("server start", extra={"addr": addresses})
    stop_gracefully_on_sigterm(server)
    reload_safely(server)


def stop_gracefully_on_sigterm(server: Any) -> None:
    """Log the stop and refuse new connections before gunicorn's SIGTERM handling.

    gunicorn has no hook for SIGTERM in the master; this wraps its handler,
    which runs in the main loop (not in signal context), so logging is safe.
    """
    handle_term = server.handle_term

    def graceful_stop() -> None:
        # The effective value: the config file's, or GUNICORN_CMD_ARGS' override.
        log.info(
            "graceful stopping server", extra={"graceful_timeout": server.cfg.graceful_timeout}
        )
        servermetrics.server_draining()
        # New connections are refused here, by the master, and only when the whole
        # server stops: the listening socket is shared by all workers, so a filter
        # set by one worker that exits alone (max_requests, its own SIGTERM) would
        # leave the running service dropping every new connection. For the same
        # reason not while another master shares the socket (a USR2 upgrade).
        if shares_listeners(server):
            log.info("listeners shared with another master: not filtered")
            handle_term()
            return
        for listener in server.LISTENERS:
            try:
                refuse_new_connections(listener.sock)
            except OSError as exc:
                # Without the filter, the workers still serve what is queued.
                log.warning("cannot filter new connections", extra={"errmsg": str(exc)})
        handle_term()

    server.handle_term = graceful_stop


def shares_listeners(server: Any) -> bool:
    """Whether another gunicorn master serves this master's listening sockets.

    After USR2 the old master forks and execs a new one that inherits them:
    the old one's `reexec_pid` names the new one until it exits, and the new
    one's `master_pid` names its parent until that exits (gunicorn's own test
    for whether it may unlink a UNIX socket on stop).
    """
    if server.reexec_pid:
        return True
    return bool(server.master_pid) and server.master_pid == os.getppid()


# Master, just before it forks a worker.
def pre_fork(server: Any, worker: Any) -> None:
    servermetrics.worker_forking(worker)


# Worker, after it has loaded the app and before it serves.
def post_worker_init(worker: Any) -> None:
    servermetrics.worker_booted()
    log.info("worker booted", extra={"pid": worker.pid})


# Worker, when it got SIGABRT from the master for exceeding `timeout`.
def worker_abort(worker: Any) -> None:
    log.error("worker aborted on timeout", extra={"pid": worker.pid})


# Worker, on every exit it makes itself (not when killed by a signal).
def worker_exit(server: Any, worker: Any) -> None:
    servermetrics.worker_exiting(worker)


# Master, after a worker has exited for any reason (even SIGKILL).
def child_exit(server: Any, worker: Any) -> None:
    reason = servermetrics.worker_exited(worker)
    log.info("worker exited", extra={"pid": worker.pid, "reason": reason})


# Master, just before the process exits.
def on_exit(server: Any) -> None:
    servermetrics.server_exiting()
    log.info("server stopped")
