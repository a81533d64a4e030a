"""The contract between fiboserver and the pinned gunicorn: every internal that
fiboserver.gunicorn_internals names, asserted to exist and to behave as the worker
and the hooks assume. A gunicorn upgrade that changes one fails here, by name,
before anything subtle breaks in a running server.

Each test builds gunicorn's own objects (a Config, a ThreadWorker, an Arbiter of a
small Application) and drives them directly; nothing here starts a server.
"""

from __future__ import annotations

import inspect
import os
import selectors
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import pytest
from gunicorn import sock as gunicorn_sock
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.config import Config
from gunicorn.glogging import Logger
from gunicorn.http import errors as http_errors
from gunicorn.workers import base as workers_base
from gunicorn.workers.gthread import TConn

from fiboserver import gunicorn_internals as gi


def _hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


class _App(BaseApplication):  # type: ignore[misc]
    """The smallest gunicorn Application: default settings, `_hello` as the app."""

    def __init__(self, **settings: Any) -> None:
        self._settings = settings
        self.loads = 0
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._settings.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        self.loads += 1
        return _hello


class _Worker(gi.GthreadWorker):
    """A GthreadWorker that records what gthread's request path reports to it."""

    errors: list[tuple[Any, Any, BaseException]]

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        self.errors.append((client, addr, exc))


@pytest.fixture
def worker(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Worker]:
    """A GthreadWorker after gthread's own init_process (the base Worker's part,
    which would run the worker, is skipped), with one listener on 127.0.0.1."""
    app = _App(threads=2)
    listener = gunicorn_sock.create_sockets(_cfg(bind=["127.0.0.1:0"]), Logger(app.cfg))[0]
    w = _Worker(0, os.getpid(), [listener], app, 30, app.cfg, Logger(app.cfg))
    w.errors = []
    w.wsgi = _hello
    monkeypatch.setattr(workers_base.Worker, "init_process", lambda self: None)
    w.init_process()
    try:
        yield w
    finally:
        w.tpool.shutdown(wait=True)
        w.poller.close()
        w.close_wakeups()
        listener.close()
        w.tmp.close()


def _cfg(**settings: Any) -> Config:
    cfg = Config()
    for key, value in settings.items():
        cfg.set(key, value)
    return cfg


# --- the worker -----------------------------------------------------------------------


def test_gthread_init_process_makes_the_poller_pool_and_wakeup_queue(worker: _Worker) -> None:
    assert isinstance(worker.poller, selectors.BaseSelector)
    assert isinstance(worker.tpool, futures.ThreadPoolExecutor)
    assert worker.tpool._max_workers == 2  # the `threads` setting


def test_call_in_loop_wakes_the_poller_and_runs_in_its_thread(worker: _Worker) -> None:
    worker.watch_wakeups()
    ran: list[tuple[str, str]] = []
    thread = threading.Thread(
        target=worker.call_in_loop,
        args=(lambda tag: ran.append((tag, threading.current_thread().name)), "x"),
    )
    thread.start()
    thread.join()
    events = worker.poller.select(timeout=5)
    assert events, "a deferred call did not wake the poller"
    for key, _ in events:
        key.data(key.fileobj)
    assert ran == [("x", threading.current_thread().name)]


def test_set_accept_enabled_registers_listeners_with_accept_as_callback(worker: _Worker) -> None:
    assert not worker.accepting()
    worker.set_accept_enabled(True)
    assert worker.accepting()
    for listener in worker.sockets:
        key = worker.poller.get_key(listener)
        assert key.data == worker.accept and key.events == selectors.EVENT_READ
    worker.set_accept_enabled(False)
    assert not worker.accepting() and not worker.poller.get_map()


def test_handle_exit_stops_the_loop_and_wakes_it(worker: _Worker) -> None:
    worker.watch_wakeups()
    worker.alive = True
    worker.handle_exit(signal.SIGTERM, None)
    assert worker.alive is False
    assert worker.poller.select(timeout=5), "SIGTERM did not wake the loop"


def _conn(worker: _Worker) -> tuple[gi.GthreadConn, socket.socket]:
    ours, theirs = socket.socketpair()
    # The client's reads fail rather than wait for ever when nothing is answered.
    theirs.settimeout(10)
    return gi.GthreadConn(worker.cfg, ours, ("127.0.0.1", 1), ("127.0.0.1", 8080)), theirs


def test_serve_connection_reads_the_handed_back_head_and_keeps_the_rest(worker: _Worker) -> None:
    """gthread's request path with the head the loop read: no wait for data
    (`data_ready`), the app's answer written, keep-alive, and the pipelined next
    request left in the parser's buffer for the loop."""
    worker.alive = True
    conn, client = _conn(worker)
    with conn.sock, client:
        conn.hand_back(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\n")
        started = time.monotonic()
        assert worker.serve_connection(conn) is True
        assert time.monotonic() - started < 1.0  # gthread's 5 s wait for data skipped
        answer = client.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"hello")
        assert conn.sock.getblocking()
        assert conn.take_unread() == b"GET /b HTTP/1.1\r\n"
        assert conn.take_unread() == b""


def test_a_last_request_is_answered_with_connection_close(worker: _Worker) -> None:
    """`last_request` (the worker's balancing) goes through the request's
    `force_close`: the answer says `Connection: close` although the client asked to
    keep the connection, the request path does not keep it, and what the client
    sent after it stays unread."""
    worker.alive = True
    conn, client = _conn(worker)
    with conn.sock, client:
        conn.last_request = True
        conn.hand_back(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
        assert worker.serve_connection(conn) is False
        head, _, body = client.recv(4096).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == b"hello"
        assert b"\r\nConnection: close" in head


def test_serve_connection_reports_parse_errors_to_handle_error(worker: _Worker) -> None:
    worker.alive = True
    conn, client = _conn(worker)
    with conn.sock, client:
        conn.hand_back(b"NOT A REQUEST\r\n\r\n")
        assert worker.serve_connection(conn) is False
    ((sock, addr, exc),) = worker.errors
    assert sock is conn.sock and addr == ("127.0.0.1", 1)
    assert isinstance(exc, http_errors.ParseException)


def test_gthread_conn_sets_every_attribute_tconn_sets(worker: _Worker) -> None:
    """GthreadConn skips TConn's constructor (it would make the socket
    non-blocking): an attribute gunicorn adds there must not go unnoticed."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        expected = set(vars(TConn(worker.cfg, ours, ("127.0.0.1", 1), ("127.0.0.1", 2))))
        conn = gi.GthreadConn(worker.cfg, ours, ("127.0.0.1", 1), ("127.0.0.1", 2))
        assert expected <= set(vars(conn)), expected - set(vars(conn))


def test_the_settings_the_worker_checks_exist() -> None:
    cfg = Config()
    assert not cfg.is_ssl
    assert cfg.http2_cleartext == "off" and cfg.proxy_protocol == "off"
    assert type(cfg.settings["worker_connections"]).default == cfg.worker_connections
    assert inspect.ismethod(gi.GthreadWorker.check_config)  # a classmethod gunicorn calls


@pytest.mark.parametrize(
    "name",
    [
        "LimitRequestLine", "LimitRequestHeaders", "InvalidRequestLine", "InvalidRequestMethod",
        "InvalidHTTPVersion", "UnsupportedTransferCoding", "ExpectationFailed",
        "ForbiddenProxyRequest", "ParseException", "InvalidHeader",
    ],
)  # fmt: skip
def test_the_http_errors_the_refusals_map_exist(name: str) -> None:
    kind = getattr(http_errors, name)
    assert issubclass(kind, http_errors.ParseException) or name in (
        "LimitRequestLine", "LimitRequestHeaders", "ForbiddenProxyRequest",
    )  # fmt: skip


# --- the master -------------------------------------------------------------------------


@pytest.fixture
def arbiter() -> Arbiter:
    return Arbiter(_App(preload_app=True))


def test_signals_queued_before_init_are_the_arbiters_queue(arbiter: Arbiter) -> None:
    arbiter.signal(signal.SIGTERM, None)
    arbiter.signal(signal.SIGHUP, None)
    assert gi.signals_queued_before_init(arbiter.signal) == {signal.SIGTERM, signal.SIGHUP}
    assert gi.signals_queued_before_init(arbiter.signal) == set()  # taken
    assert gi.signals_queued_before_init(signal.SIG_DFL) == set()


def test_the_master_loop_looks_its_handlers_up_by_name_when_it_dispatches() -> None:
    """replace_term_handler replaces `handle_term` on the Arbiter object: that works
    only while the loop looks the handler up by name for each signal."""
    source = inspect.getsource(Arbiter.run)
    assert 'getattr(self, "handle_%s" % signame' in source
    assert callable(Arbiter.handle_term) and callable(Arbiter.reload)


def test_replaced_handlers_get_the_originals(arbiter: Arbiter) -> None:
    originals = {"term": arbiter.handle_term, "reload": arbiter.reload}
    calls: list[str] = []

    def wrapper(name: str) -> Any:
        def wrap(handle: Any) -> Any:
            assert handle == originals[name]
            return lambda: calls.append(name)

        return wrap

    gi.replace_term_handler(arbiter, wrapper("term"))
    gi.replace_reload(arbiter, wrapper("reload"))
    arbiter.handle_term()
    arbiter.reload()
    assert calls == ["term", "reload"]


def test_reload_builds_the_app_again_and_a_failed_one_keeps_the_old(arbiter: Arbiter) -> None:
    app = arbiter.app
    first = gi.preloaded_wsgi(arbiter)
    assert first is _hello and app.loads == 1
    old_cfg = app.cfg

    def failing_reload() -> None:
        assert app.callable is None  # gunicorn's wsgi() will load it again
        app.cfg = Config()
        raise SystemExit(78)

    with pytest.raises(SystemExit):
        gi.reload_keeping_old_app(arbiter, failing_reload)
    assert app.cfg is old_cfg and app.callable is first and arbiter.cfg is old_cfg
    gi.reload_keeping_old_app(arbiter, lambda: None)
    assert gi.preloaded_wsgi(arbiter) is _hello and app.loads == 2


def test_upgrade_state(arbiter: Arbiter) -> None:
    assert arbiter.reexec_pid == 0 and arbiter.master_pid == 0
    assert not gi.started_by_upgrade(arbiter) and not gi.shares_listeners(arbiter, 1)
    arbiter.master_pid = 4242  # a master that USR2 started: its parent's pid
    assert gi.started_by_upgrade(arbiter) and gi.shares_listeners(arbiter, 4242)
    assert not gi.shares_listeners(arbiter, 1)  # its parent has exited
    arbiter.master_pid, arbiter.reexec_pid = 0, 4343  # an old master with a new one
    assert gi.shares_listeners(arbiter, 1)


def test_listeners(arbiter: Arbiter) -> None:
    arbiter.LISTENERS = gunicorn_sock.create_sockets(_cfg(bind=["127.0.0.1:0"]), arbiter.log)
    try:
        (sock,) = gi.listener_sockets(arbiter)
        port = sock.getsockname()[1]
        assert isinstance(sock, socket.socket)
        assert gi.listener_addresses(arbiter) == f"http://127.0.0.1:{port}"
    finally:
        gunicorn_sock.close_sockets(arbiter.LISTENERS)
        arbiter.LISTENERS = []


def test_a_worker_silent_past_timeout_is_marked_aborted(arbiter: Arbiter) -> None:
    app = arbiter.app
    child = subprocess.Popen(["sleep", "30"])
    w = workers_base.Worker(0, os.getpid(), [], app, 1, app.cfg, arbiter.log)
    try:
        assert not gi.aborted_on_timeout(w)
        # The heartbeat is the file's mtime, written from time.monotonic() (notify).
        w.tmp.notify()
        arbiter.timeout = 0.01
        arbiter.WORKERS = {child.pid: w}
        time.sleep(0.05)
        arbiter.murder_workers()
        assert gi.aborted_on_timeout(w)
        assert child.wait(timeout=10) == -signal.SIGABRT
    finally:
        child.kill()
        child.wait()
        w.tmp.close()


def test_the_access_method_the_logger_class_overrides() -> None:
    ours = inspect.signature(gi.GunicornLogger.access)
    assert ours.parameters.keys() == inspect.signature(Logger.access).parameters.keys()
