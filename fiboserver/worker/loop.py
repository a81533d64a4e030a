"""The gunicorn worker: threads serve requests, an event loop holds the connections.

Runs in each worker process: `run` is its main thread's event loop; `_serve`
runs in the pool threads.

gunicorn's gthread hands every new connection to a pool thread at once, and the
thread waits up to 5 s for the first byte: four idle connections stall a
four-thread worker, and a client that dribbles its head keeps a thread for as
long as it likes. This worker keeps gthread's request handling (gunicorn's
parser, `wsgi.create`, `Response`, keep-alive, `max_requests`, the hooks) and
replaces what happens before and after it, in the worker's main thread:

- Every connection is read without blocking until its whole head has arrived
  (fiboserver/worker/heads.py); only then does a thread get it, with the bytes already
  read handed to gunicorn's parser. Idle and slow clients cost a file
  descriptor, not a thread, and are closed after HEAD_TIMEOUT (no complete
  head) or `keepalive` (idle between requests).
- Probe paths (`healthz`, `readyz` under the prefix) have a thread of their
  own, so the kubelet gets its answer in milliseconds however busy the others are.
- Other requests go through admission (fiboserver/worker/admission.py): they start when
  a thread is free, wait when one will be within about a second, and are
  otherwise answered `503 overloaded` at once, at a paced rate.
- The loop accepts whenever it holds no more than its share of the server's
  connections, and otherwise leaves new ones to the other workers for a moment
  and ends one of its kept-alive connections with `Connection: close`
  (fiboserver/worker/balance.py). A full listen queue would drop a probe's SYN:
  no connection waits longer than one short pause.
- On SIGTERM, what is already in the listen queue is accepted and served (the
  master makes the kernel drop new SYNs), then what is in flight.

A subclass of gthread's ThreadWorker, not of the base Worker: its request path,
thread pool and wake-up pipe stay gunicorn's, each reached through
fiboserver.gunicorn_internals (docs/worker.md says more). What the loop needs to
know about the app (the probe paths, where refusals are counted) comes from the
app's `Serving` record (fiboserver.serving).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from concurrent import futures
from functools import partial
from http import HTTPStatus
from types import FrameType
from typing import Any

from fiboserver.gunicorn_internals import GthreadWorker, signals_queued_before_init
from fiboserver.lifecycle import begin_draining
from fiboserver.serving import serving_of
from fiboserver.worker import refusals
from fiboserver.worker.accepting import DRAIN_BATCH, Acceptor
from fiboserver.worker.admission import Admission, Pacer, ProbeLane, Verdict
from fiboserver.worker.balance import Balancer
from fiboserver.worker.connections import Conn, Connections, State, raise_open_files_limit
from fiboserver.worker.heads import HEAD_TIMEOUT, HeadError, head_length, probe_prefixes
from fiboserver.worker.heartbeat import Heartbeat
from fiboserver.worker.refusals import PendingRefusals, Refusal
from fiboserver.worker.settings import unsupported_setting

# After SIGTERM: how long the listener is still accepted from (handshakes that
# began before the master's SYN filter complete within a round trip, well under
# a millisecond inside a cluster), and how long kept-alive and not yet
# complete connections are still waited for (gthread's STOP_KEEPALIVE_LINGER).
DRAIN_LINGER = 0.2
STOP_LINGER = 2.0
RECV_BYTES = 8192  # gunicorn's own read size
# How long a thread holding the GIL keeps it while another wants it (CPython's
# default is 5 ms). Every system call of the loop lets a computing thread take
# the GIL, and the loop waits up to this long to get it back: at 5 ms a few
# such waits make a probe slow under load. docs/worker.md has the measurements.
SWITCH_INTERVAL = 0.001

log = logging.getLogger("fiboserver.worker")


def keep_alive_after(fut: futures.Future[Any]) -> bool:
    """Whether a pool thread's request leaves its connection open for the next.

    gthread's request path catches what a request raises and hands it to
    `handle_error`; a thread that raised all the same met a bug in that error
    path. Its connection is closed, not kept waiting for a request it may never
    read, and the log says why.
    """
    exc = fut.exception()
    if exc is not None:
        log.error("error handling request", exc_info=exc)
        return False
    return bool(fut.result())


class RequestThreadWorker(GthreadWorker):
    """gthread with threads for requests only; see the module docstring."""

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """Refuse, at start, every setting this worker cannot honour (exit 78)."""
        problem = unsupported_setting(cfg)
        if problem is not None:
            logging.getLogger("fiboserver.server").critical(
                "invalid configuration", extra={"errmsg": f"{cls.__name__}: {problem}"}
            )
            raise SystemExit(os.EX_CONFIG)

    def init_process(self) -> None:
        sys.setswitchinterval(SWITCH_INTERVAL)
        # Every idle connection costs a descriptor now, and running out of them
        # means accept() fails while probes wait in the listen queue.
        raise_open_files_limit()
        self._probe_pool = futures.ThreadPoolExecutor(1, thread_name_prefix="probe")
        self._serving = threading.local()  # the Conn a pool thread is serving
        self._admission: Admission[Conn] = Admission(self.cfg.threads)
        self._probe_lane = ProbeLane()
        self._balancer = Balancer(self.age)
        super().init_process()  # creates the poller, then runs run()

    # -- signals ---------------------------------------------------------------
    def init_signals(self) -> None:
        # A signal that came between fork() and here was only queued by the
        # master's handler: act on it now.
        inherited = signal.getsignal(signal.SIGTERM)
        super().init_signals()
        caught = signals_queued_before_init(inherited)
        if caught & {signal.SIGINT, signal.SIGQUIT}:
            self.handle_quit(signal.SIGQUIT, None)
        elif signal.SIGTERM in caught:
            self.handle_exit(signal.SIGTERM, None)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        begin_draining()  # /readyz answers 503 from now on
        super().handle_exit(sig, frame)

    # -- the loop ----------------------------------------------------------------
    def run(self) -> None:
        serving = serving_of(self.wsgi)
        self.conns = Connections(self.poller)
        self._acceptor = Acceptor(
            self.cfg, self.conns, self._balancer, self.set_accept_enabled, self._arrived
        )
        self._sink = serving.requests
        self._refusals = PendingRefusals(self.conns, Pacer(time.monotonic()), self._sink)
        self._probe_heads = probe_prefixes(serving.probe_paths)
        self._max_line = self.cfg.limit_request_line
        self.watch_wakeups()
        self.set_accept_enabled(True)
        heartbeat = Heartbeat()
        keepalive = self.cfg.keepalive
        while self.alive:
            now = time.monotonic()
            if heartbeat.due(now):
                self.notify()
            # Computed once a turn, looked at after it: a connection that starts
            # waiting during the turn waits past the earliest of those already waiting.
            due = self.conns.next_deadline()
            self._dispatch_events(self._timeout(now, due))
            if not self.parent_alive():
                break
            now = time.monotonic()
            if now >= due:
                self._expire(now)
            if self._refusals.pending:
                self._refusals.write(now, keepalive)
            if not self.accepting() and now >= self._acceptor.paused_until:
                self._acceptor.resume(self.sockets)
            self._balancer.publish(self._acceptor.held(), now)
        self._drain()

    def _dispatch_events(self, timeout: float) -> None:
        try:
            events = self.poller.select(timeout)
        except InterruptedError:
            return
        for key, _ in events:
            data = key.data
            if data.__class__ is Conn:
                self._on_readable(data)
            else:
                data(key.fileobj)

    def _timeout(self, now: float, due: float) -> float:
        """Seconds until the loop has something to do without an event (`due`:
        the earliest deadline of a waiting connection)."""
        timeout = min(1.0, due - now)
        if self._refusals.pending:
            timeout = min(timeout, self._refusals.wait(now))
        if not self.accepting() and self.alive:
            timeout = min(timeout, self._acceptor.paused_until - now)
        return max(timeout, 0.0)

    def _expire(self, now: float) -> None:
        for conn in self.conns.expired(now):
            if conn.buf:  # part of a head: say why it is closed
                conn.head = conn.buf
                timeout = HTTPStatus.REQUEST_TIMEOUT
                self._refusals.add(conn, Refusal(timeout, "request head timeout", "head timeout"))
            else:
                self.conns.close(conn)

    # -- accepting -----------------------------------------------------------------
    def accept(self, listener: Any) -> int:
        """The poller's callback for a listener (by gthread's `set_accept_enabled`)."""
        return self._acceptor.on_listener(listener, self.alive)

    def _arrived(self, conn: Conn) -> None:
        # Most clients send their request right after connecting: read it now
        # rather than after a round through the poller.
        self._on_readable(conn)

    # -- reading heads ---------------------------------------------------------------
    def _on_readable(self, conn: Conn) -> None:
        state = conn.state
        if state is State.REFUSING:
            # Waiting for its refusal: the client left (after a flood, thousands
            # may), or sent more, which shows once the refusal is written.
            if conn.client_left():
                self.conns.close(conn)  # the refusal is dropped unwritten
            else:
                self.conns.release(conn, State.REFUSING)
            return
        try:
            data = conn.sock.recv(RECV_BYTES, socket.MSG_DONTWAIT)
        except BlockingIOError:
            if state is State.NEW:  # nothing sent yet
                self.conns.wait(conn, State.HEAD, conn.deadline)
            return
        except OSError:
            data = b""
        if not data:
            self.conns.close(conn)  # the client closed (or reset) its side
            return
        if state is State.CLOSING:
            return  # input after our last answer: dropped
        self._feed(conn, conn.buf + data)

    def _feed(self, conn: Conn, data: bytes) -> None:
        """`data` is what the client sent since its last request: serve it when it
        holds a whole head, else keep it and wait for more."""
        try:
            complete = head_length(data, self._max_line)
        except HeadError as exc:
            conn.head, conn.buf, conn.head_only = data, b"", False
            self._refusals.add(conn, Refusal(exc.status, exc.error, exc.error))
            return
        if not complete:
            conn.buf = data
            if conn.state is State.NEW:  # its head timeout runs from the accept
                self.conns.wait(conn, State.HEAD, conn.deadline)
            elif conn.state is not State.HEAD:  # the first bytes of a next request
                self.conns.wait(conn, State.HEAD, time.monotonic() + HEAD_TIMEOUT)
            return
        conn.head, conn.buf, conn.head_only = data, b"", complete == len(data)
        self._dispatch(conn, time.monotonic())

    def _dispatch(self, conn: Conn, now: float) -> None:
        conn.started = now
        if conn.head.startswith(self._probe_heads) and self._probe_lane.enter():
            conn.probe = True
            self._submit(self._probe_pool, conn)
            return
        conn.probe = False
        verdict = self._admission.offer(conn, now)
        if verdict is Verdict.START:
            self._submit(self.tpool, conn)
        elif verdict is Verdict.QUEUED:
            self.conns.release(conn, State.QUEUED)
        else:
            self._refusals.add(conn, refusals.overloaded(self._admission.waiting))

    def _submit(self, pool: futures.ThreadPoolExecutor, conn: Conn) -> None:
        # A connection with nothing after its head (no body, no pipelined request)
        # may leave a worker above its share: its client loses nothing.
        if (
            conn.head_only
            and not conn.probe
            and self._balancer.should_close(self._acceptor.held(), time.monotonic())
        ):
            conn.last_request = True
            self._balancer.leaving += 1
        self.conns.release(conn, State.SERVING)
        conn.hand_back(conn.head)
        pool.submit(self._serve, conn).add_done_callback(partial(self._done, conn))

    def _done(self, conn: Conn, fut: futures.Future[Any]) -> None:
        # In the pool thread: hand the connection back to the loop.
        self.call_in_loop(self._finished, conn, fut)

    def _start_waiting(self, now: float) -> None:
        """Start queued requests while threads are free; shed those that waited too long."""
        while True:
            conn, expired = self._admission.take(now)
            for late in expired:
                self._refusals.add(late, refusals.overloaded(self._admission.waiting))
            if conn is None:
                return
            if conn.client_left():
                self._admission.cancel()
                self.conns.close(conn)
                continue
            self._submit(self.tpool, conn)

    # -- back from a thread ---------------------------------------------------------------
    def _serve(self, conn: Conn) -> bool:
        # In a pool thread. The time it takes is what admission estimates from:
        # the time until _finished runs would add the loop's own delays.
        self._serving.conn = conn
        started = time.monotonic()
        try:
            keep_alive = self.serve_connection(conn)
            if not keep_alive:
                # Our side is done: the client sees the end of the answer now, not
                # when the loop gets round to closing.
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_WR)
            return keep_alive
        finally:
            conn.service = time.monotonic() - started

    def _finished(self, conn: Conn, fut: futures.Future[Any]) -> None:
        now = time.monotonic()
        if conn.last_request:
            self._balancer.leaving -= 1
        if conn.probe:
            self._probe_lane.leave()
        else:
            self._admission.done(conn.service)
            if self._admission.waiting:
                self._start_waiting(now)
        if not keep_alive_after(fut):
            self.conns.close_lingering(conn)
            return
        conn.started = now
        leftover = conn.take_unread()
        if leftover:  # the client sent its next request already (pipelining)
            self.conns.wait(conn, State.HEAD, now + HEAD_TIMEOUT)
            self._feed(conn, leftover)
        else:
            self.conns.wait(conn, State.IDLE, now + self.cfg.keepalive)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """gunicorn's answer to a request it could not read or serve, as JSON."""
        conn: Conn | None = getattr(self._serving, "conn", None)
        if refusals.parse_error(exc) is None:
            log.error("error handling request", exc_info=exc)
        refusals.refuse_error(client, exc, conn, str(addr), self._sink)

    # -- stopping -----------------------------------------------------------------------------
    def _drain(self) -> None:
        """After SIGTERM (or max_requests): serve what the kernel queued, then what
        is in flight, within graceful_timeout."""
        now = time.monotonic()
        log.info("worker stopping", extra={"pid": self.pid, "connections": self.conns.open})
        self.conns.stop_by(now + STOP_LINGER)
        if not self.accepting():
            self.set_accept_enabled(True)
        for listener in self.sockets:
            while self._acceptor.take(listener, DRAIN_BATCH) == DRAIN_BATCH:
                pass  # until the listen queue is empty
        accept_until = now + DRAIN_LINGER
        graceful_until = now + self.cfg.graceful_timeout
        while now < graceful_until and (self.accepting() or self.conns.open > 0):
            self.notify()
            if self.accepting() and now >= accept_until:
                self.set_accept_enabled(False)
                continue
            timeout = self._timeout(now, self.conns.next_deadline())
            if self.accepting():
                timeout = min(timeout, max(accept_until - now, 0.0))
            self._dispatch_events(timeout)
            now = time.monotonic()
            self._expire(now)
            self._refusals.write(now, None)
        self.conns.close_all()
        self.tpool.shutdown(wait=False)
        self._probe_pool.shutdown(wait=False)
        self.poller.close()
        self.close_wakeups()
        for listener in self.sockets:
            listener.close()
        self._balancer.leave()

    def handle_quit(self, sig: int, frame: FrameType | None) -> None:
        self._probe_pool.shutdown(wait=False)
        super().handle_quit(sig, frame)
