"""gunicorn configuration for fiboserver: settings first, then server hooks.

Start with `FIBOSERVER_CONFIG=<file> gunicorn -c gunicorn.conf.py`. The file is
validated here, before gunicorn opens a socket: a bad file ends the process
with one JSON error record and exit status 78 (EX_CONFIG).
"""

from __future__ import annotations

import os

from fiboserver import logs
from fiboserver.server import hooks
from fiboserver.server.startup import config_or_exit, workers_or_exit

# Underscored names: gunicorn takes a public name that matches a setting as one.
_config = config_or_exit(os.environ)
_workers = workers_or_exit(os.environ)

# --- settings ---------------------------------------------------------------

wsgi_app = "fiboserver.app:create_app()"
bind = [f"0.0.0.0:{_config.port}"]
# Import the app in the master: errors surface before listening, and forked
# workers share its memory.
preload_app = True

# gthread's request handling behind an event loop that holds idle and slow
# connections, gives the probes a thread of their own and sheds overload
# (docs/worker.md); 4 threads for requests per process, one process per CPU the
# container may use (cgroup quota), since Python computes under one GIL.
worker_class = "fiboserver.worker.RequestThreadWorker"
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
# that nobody sees (docs/performance.md).
logger_class = "fiboserver.gunicorn_internals.GunicornLogger"
errorlog = "-"

# --- server hooks (fiboserver/server/hooks.py) ---------------------------------

# Master, once the listening sockets are open, before the workers start.
when_ready = hooks.when_ready
# Master, just before it forks a worker.
pre_fork = hooks.pre_fork
# Worker, after it has loaded the app and before it serves.
post_worker_init = hooks.post_worker_init
# Worker, when it got SIGABRT from the master for exceeding `timeout`.
worker_abort = hooks.worker_abort
# Worker, on every exit it makes itself (not when killed by a signal).
worker_exit = hooks.worker_exit
# Master, after a worker has exited for any reason (even SIGKILL).
child_exit = hooks.child_exit
# Master, just before the process exits.
on_exit = hooks.on_exit
