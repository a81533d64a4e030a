"""gunicorn server hooks: what the master and the workers do at each stage.

gunicorn.conf.py wires each of gunicorn's hooks to one function here; the
comment next to each says when gunicorn calls it (most in the master; three in
a worker, before it serves and as it exits).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from fiboserver import gunicorn_internals as gunicorn
from fiboserver import tracing
from fiboserver.metrics import master
from fiboserver.server.listener import refuse_new_connections
from fiboserver.server.reload import reload_safely
from fiboserver.serving import serving_of

log = logging.getLogger("fiboserver.server")


# Master, once the listening sockets are open, before the workers start.
def when_ready(server: Any) -> None:
    logging.captureWarnings(True)
    serving = serving_of(gunicorn.preloaded_wsgi(server))
    master.server_ready(serving.metrics_port, upgrading=gunicorn.started_by_upgrade(server))
    log.info("server start", extra={"addr": gunicorn.listener_addresses(server)})
    tracing.prepare(os.environ)
    stop_gracefully_on_sigterm(server)
    reload_safely(server)


def stop_gracefully_on_sigterm(server: Any) -> None:
    """Log the stop and refuse new connections before gunicorn's SIGTERM handling
    (which runs in the master's loop, not in signal context: logging is safe)."""

    def graceful(handle_term: Callable[[], None]) -> Callable[[], None]:
        def graceful_stop() -> None:
            # The effective value: the config file's, or GUNICORN_CMD_ARGS' override.
            timeout = server.cfg.graceful_timeout
            log.info("graceful stopping server", extra={"graceful_timeout": timeout})
            master.server_draining()
            # New connections are refused here, by the master, and only when the
            # whole server stops: the listening socket is shared by all workers, so
            # a filter set by one worker that exits alone (max_requests, its own
            # SIGTERM) would leave the running service dropping every new
            # connection. For the same reason not while another master shares the
            # socket (a USR2 upgrade).
            if gunicorn.shares_listeners(server, os.getppid()):
                log.info("listeners shared with another master: not filtered")
            else:
                for sock in gunicorn.listener_sockets(server):
                    try:
                        refuse_new_connections(sock)
                    except OSError as exc:
                        # Without the filter, the workers still serve what is queued.
                        log.warning("cannot filter new connections", extra={"errmsg": str(exc)})
            handle_term()

        return graceful_stop

    gunicorn.replace_term_handler(server, graceful)


# Master, just before it forks a worker.
def pre_fork(server: Any, worker: Any) -> None:
    # The worker's heartbeat file starts with its creation time on the wall clock,
    # and the master compares it with its monotonic clock: a worker that hangs
    # before its first heartbeat (the post_fork and post_worker_init hooks, the
    # loop's start) would never be aborted on timeout. Its heartbeat starts now.
    worker.notify()
    master.worker_forking(worker)


# Worker, after it has loaded the app and before it serves.
def post_worker_init(worker: Any) -> None:
    # The span exporter's thread belongs to this process: started after the fork.
    tracing.start_worker(os.environ)
    master.worker_booted()
    log.info("worker booted", extra={"pid": worker.pid})


# Worker, when it got SIGABRT from the master for exceeding `timeout`.
def worker_abort(worker: Any) -> None:
    log.error("worker aborted on timeout", extra={"pid": worker.pid})


# Worker, on every exit it makes itself (not when killed by a signal).
def worker_exit(server: Any, worker: Any) -> None:
    # After a graceful stop every request is answered and its span ended: export
    # them before the process is gone.
    tracing.stop_worker()
    master.worker_exiting(worker)


# Master, after a worker has exited for any reason (even SIGKILL).
def child_exit(server: Any, worker: Any) -> None:
    reason = master.worker_exited(worker, gunicorn.aborted_on_timeout(worker))
    log.info("worker exited", extra={"pid": worker.pid, "reason": reason.value})


# Master, just before the process exits.
def on_exit(server: Any) -> None:
    master.server_exiting()
    log.info("server stopped")
