"""Every part of gunicorn that fiboserver relies on beyond its documented settings and hooks.

gunicorn documents its settings, its server hooks and the base Worker class. The
worker (fiboserver.worker) and the master's hooks (fiboserver.server) need more:
gthread's ThreadWorker (its poller, thread pool, wake-up queue and request path),
its connection class, the HTTP parser's read-back buffer, and the Arbiter's
signal queue, SIGTERM handler, reload, listeners and upgrade state. Each of those
is reached here and nowhere else, under a name that says what we use it for, and
tests/test_gunicorn_contract.py asserts that the pinned gunicorn has each one and
behaves as assumed: a gunicorn upgrade that changes one fails there, by name.
The import contracts of `make lint` keep every other module away from gunicorn.

Runs in the master (the Arbiter helpers) and in each worker (the base classes).
"""

from __future__ import annotations

import queue
import selectors
import socket
from collections.abc import Callable
from concurrent import futures
from typing import Any

from gunicorn import http as _http
from gunicorn.glogging import Logger as _Logger
from gunicorn.http import errors as http_errors
from gunicorn.workers.gthread import TConn as _TConn
from gunicorn.workers.gthread import ThreadWorker as _ThreadWorker

__all__ = [
    "GthreadConn",
    "GthreadWorker",
    "GunicornLogger",
    "aborted_on_timeout",
    "http_errors",
    "listener_addresses",
    "listener_sockets",
    "preloaded_wsgi",
    "reload_keeping_old_app",
    "replace_reload",
    "replace_term_handler",
    "shares_listeners",
    "signals_queued_before_init",
    "started_by_upgrade",
]


# --- the worker: gthread's ThreadWorker and TConn -------------------------------------


class GthreadWorker(_ThreadWorker):  # type: ignore[misc]
    """gthread's ThreadWorker, with the internals the fiboserver worker uses named.

    gthread's own `init_process` creates `poller` (a selector), `tpool` (the
    request threads) and the wake-up queue before the base Worker runs `run()`;
    `set_accept_enabled` registers each listener with the poller with `accept`
    as its callback, so a subclass's `accept(listener)` is what the loop calls.
    """

    poller: selectors.BaseSelector
    tpool: futures.ThreadPoolExecutor

    def accepting(self) -> bool:
        """Whether the listeners are registered with the poller (gthread's flag)."""
        return bool(self._accepting)

    def watch_wakeups(self) -> None:
        """Register the wake-up queue with the poller: a callback deferred from a
        thread (`call_in_loop`) or a signal handler then runs in the loop."""
        queue_ = self.method_queue
        self.poller.register(queue_.fileno(), selectors.EVENT_READ, queue_.run_callbacks)

    def call_in_loop(self, callback: Callable[..., object], *args: Any) -> None:
        """Run `callback(*args)` in the loop's thread (safe from any thread)."""
        self.method_queue.defer(callback, *args)

    def close_wakeups(self) -> None:
        self.method_queue.close()

    def serve_connection(self, conn: GthreadConn) -> bool:
        """gthread's request path for one request on `conn`, in a pool thread:
        parse, call the app, write the answer; whether to keep the connection.
        Errors reach `handle_error(req, sock, client, exc)`."""
        return bool(_ThreadWorker.handle(self, conn))

    def handle_request(self, req: Any, conn: GthreadConn) -> bool:
        """gthread's handling of one parsed request; for a connection marked
        `last_request`, the request's `force_close` first, so that the answer says
        `Connection: close` and the request path does not keep the connection."""
        if conn.last_request:
            req.force_close()
        return bool(_ThreadWorker.handle_request(self, req, conn))

    def parent_alive(self) -> bool:
        """False once the master is gone (the worker then stops)."""
        return bool(self.is_parent_alive())


class GthreadConn(_TConn):  # type: ignore[misc]
    """A connection as gthread's request path reads it.

    TConn's constructor is not called: it makes the socket non-blocking, a system
    call here and one more in the thread for every request, where the pool
    threads want it blocking and the loop passes MSG_DONTWAIT instead. Only the
    attributes gthread's `handle` reads are set, with `data_ready` true (the loop
    hands over a connection only once its request head is there).
    """

    def __init__(self, cfg: Any, sock: socket.socket, client: Any, server: Any) -> None:
        self.cfg = cfg
        self.sock = sock
        self.client = client
        self.server = server
        self.timeout: float | None = None
        self.parser: Any = None
        self.initialized = False
        self.is_http2 = False
        self.data_ready = True
        # Answer the next request with `Connection: close` (the worker's balancing).
        self.last_request = False

    def hand_back(self, data: bytes) -> None:
        """Give gunicorn's parser the bytes the loop has read already (the whole
        head, and what followed it): it reads them before the socket."""
        if self.parser is None:
            self.parser = _http.get_parser(self.cfg, self.sock, self.client)
        self.parser.unreader.unread(data)

    def take_unread(self) -> bytes:
        """What the client sent after the request just served (a pipelined next
        request), taken out of the parser's buffer."""
        return bytes(self.parser.unreader.take_buffered())


# --- the master: the Arbiter -------------------------------------------------------------


def signals_queued_before_init(inherited_handler: Callable[..., Any] | int | None) -> set[int]:
    """The signals that reached this worker between fork() and its own handlers.

    Until `init_signals` the child runs the master's handler, which only puts the
    signal on the Arbiter's SIG_QUEUE for the master's loop, a loop the child
    never runs; the child's copy of that queue holds exactly what arrived in
    between. `inherited_handler` is `signal.getsignal(SIGTERM)` before the
    worker installs its own: a bound method of the Arbiter.
    """
    pending = getattr(getattr(inherited_handler, "__self__", None), "SIG_QUEUE", None)
    caught: set[int] = set()
    if not isinstance(pending, queue.SimpleQueue):
        return caught
    while True:
        try:
            caught.add(pending.get_nowait())
        except queue.Empty:
            return caught


def replace_term_handler(
    server: Any, make: Callable[[Callable[[], None]], Callable[[], None]]
) -> None:
    """Replace the master's SIGTERM handling with `make(original)`.

    gunicorn has no hook for SIGTERM in the master. Its loop looks the handler up
    by name (`handle_term`) on the Arbiter when it takes the signal off its queue,
    outside signal context, so the replacement may log and take locks.
    """
    server.handle_term = make(server.handle_term)


def replace_reload(server: Any, make: Callable[[Callable[[], None]], Callable[[], None]]) -> None:
    """Replace what the master does on SIGHUP (`Arbiter.reload`) with `make(original)`."""
    server.reload = make(server.reload)


def reload_keeping_old_app(server: Any, reload: Callable[[], None]) -> None:
    """Run gunicorn's `reload` so that the app is built again from the new config
    (with preload_app gunicorn would keep the one built at start); if it raises
    or exits, put the settings and app in use back and re-raise."""
    app = server.app
    old_cfg, old_app = app.cfg, app.callable
    app.callable = None  # gunicorn's Application.wsgi() builds it again when None
    try:
        reload()
    except (Exception, SystemExit):
        app.cfg, app.callable = old_cfg, old_app
        server.setup(app)
        raise


def preloaded_wsgi(server: Any) -> object:
    """The WSGI app the master loaded (preload_app), as its workers get it."""
    return server.app.wsgi()


def listener_sockets(server: Any) -> list[socket.socket]:
    """The master's listening sockets, shared by every worker."""
    return [listener.sock for listener in server.LISTENERS]


def listener_addresses(server: Any) -> str:
    """The listening addresses as gunicorn prints them, comma-separated."""
    return ",".join(str(listener) for listener in server.LISTENERS)


def started_by_upgrade(server: Any) -> bool:
    """Whether this master was started by USR2 beside an old one (gunicorn sets
    `master_pid` to the old master's pid in the new one)."""
    return bool(server.master_pid)


def shares_listeners(server: Any, parent_pid: int) -> bool:
    """Whether another master serves this master's listening sockets.

    After USR2 the old master forks and execs a new one that inherits them: the
    old one's `reexec_pid` names the new one until it exits, and the new one's
    `master_pid` names its parent (`parent_pid`, os.getppid()) until that exits;
    gunicorn asks the same before it unlinks a UNIX socket on stop.
    """
    if server.reexec_pid:
        return True
    return bool(server.master_pid) and server.master_pid == parent_pid


def aborted_on_timeout(worker: Any) -> bool:
    """Whether the master aborted `worker` for being silent past `timeout`."""
    return bool(worker.aborted)


# --- logging ------------------------------------------------------------------------------


class GunicornLogger(_Logger):  # type: ignore[misc]
    """gunicorn's logger minus its access record; gunicorn's `logger_class` setting.

    The app writes `start` and `end` itself. gunicorn builds the atoms of its own
    access record for every request whenever a logging config is given, even with
    `accesslog` unset and the `gunicorn.access` logger silenced: a measurable part
    of a cached request (docs/performance.md), for a record nobody sees.
    """

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        return None
