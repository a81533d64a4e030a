"""gunicorn configuration for fiboserver: settings first, then server hooks.

Start with `FIBOSERVER_CONFIG=<file> gunicorn -c gunicorn.conf.py`. The file is
validated here, before gunicorn opens a socket: a bad file ends the process
with one JSON error record and exit status 78 (EX_CONFIG).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, NoReturn

from fiboserver import logs
from fiboserver.cgroup import default_workers
from fiboserver.config import CONFIG_ENV, ConfigError, load_config
from fiboserver.worker import refuse_new_connections

log = logging.getLogger("fiboserver.server")


def _refuse_to_start(msg: str, **fields: Any) -> NoReturn:
    logs.configure_logging("INFO")
    log.critical(msg, extra=fields)
    sys.exit(os.EX_CONFIG)


_config_path = os.environ.get(CONFIG_ENV)
if not _config_path:
    _refuse_to_start(
        "invalid configuration", errmsg=f"environment variable {CONFIG_ENV} is not set"
    )
# Underscored names: gunicorn takes a public name that matches a setting as one.
try:
    _config = load_config(_config_path)
except ConfigError as exc:
    _refuse_to_start(
        "invalid configuration",
        file=exc.path,
        **({"config_key": exc.key} if exc.key is not None else {}),
        errmsg=str(exc),
    )
try:
    _workers = default_workers(os.environ)
except ValueError as exc:
    _refuse_to_start("invalid configuration", errmsg=str(exc))

# --- settings ---------------------------------------------------------------

wsgi_app = "fiboserver.app:create_app()"
bind = [f"0.0.0.0:{_config.port}"]
# Import the app in the master: errors surface before listening, and forked
# workers share its memory.
preload_app = True

# gthread: a few threads per process for slow clients; one process per CPU the
# container may use (cgroup quota), since Python computes under one GIL.
worker_class = "fiboserver.worker.DrainingThreadWorker"
workers = _workers
threads = 4

# A worker silent for this long is stuck: the largest n takes milliseconds.
timeout = 30
# SIGTERM to exit at most; Kubernetes' terminationGracePeriodSeconds is larger.
graceful_timeout = 20
# Longer than the proxy's idle upstream timeout (ingress-nginx: 60 s), so the
# proxy, not the app, closes idle connections and never reuses a closed one.
keepalive = 75

# The heartbeat file lives on tmpfs: no disk I/O, and a read-only root works.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None

# No gunicornc control socket: nothing here uses it, and it would need a
# writable home directory, which the read-only container does not have.
control_socket_disable = True

# Every record, gunicorn's own included, is JSON on stdout (fiboserver.logs).
loglevel = _config.loglevel.lower()
logconfig_dict = logs.logconfig_dict(_config.loglevel)
accesslog = None  # the app logs `start` and `end` for each request
# ...and this logger class spares gunicorn building an access record per request
# that nobody sees (bench, README "Performance").
logger_class = "fiboserver.logs.GunicornLogger"
errorlog = "-"

# --- server hooks -------------------------------------------------------------


# Master, once the listening sockets are open, before the workers start.
def when_ready(server: Any) -> None:
    logging.captureWarnings(True)
    addresses = ",".join(str(listener) for listener in server.LISTENERS)
    log.info("server start", extra={"addr": addresses})
    _stop_gracefully_on_sigterm(server)


def _stop_gracefully_on_sigterm(server: Any) -> None:
    # gunicorn has no hook for SIGTERM in the master; wrap its handler, which
    # runs in the main loop (not in signal context), so logging is safe.
    handle_term = server.handle_term

    def graceful_stop() -> None:
        log.info("graceful stopping server", extra={"graceful_timeout": graceful_timeout})
        # New connections are refused here, by the master, and only when the whole
        # server stops: the listening socket is shared by all workers, so a filter
        # set by one worker that exits alone (max_requests, its own SIGTERM) would
        # leave the running service dropping every new connection.
        for listener in server.LISTENERS:
            try:
                refuse_new_connections(listener.sock)
            except OSError as exc:
                # Without the filter, the workers still serve what is queued.
                log.warning("cannot filter new connections", extra={"errmsg": str(exc)})
        handle_term()

    server.handle_term = graceful_stop


# Worker, after it has loaded the app and before it serves.
def post_worker_init(worker: Any) -> None:
    log.info("worker booted", extra={"pid": worker.pid})


# Worker, when it got SIGABRT from the master for exceeding `timeout`.
def worker_abort(worker: Any) -> None:
    log.error("worker aborted on timeout", extra={"pid": worker.pid})


# Master, after a worker has exited for any reason (even SIGKILL).
def child_exit(server: Any, worker: Any) -> None:
    log.info("worker exited", extra={"pid": worker.pid})


# Master, just before the process exits.
def on_exit(server: Any) -> None:
    log.info("server stopped")
