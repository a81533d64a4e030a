"""`GET /metrics` on metrics_port, served by threads of the gunicorn master.

Why the master: a scrape reads the files of every process (fiboserver.metrics.multiproc),
so any process could answer it, and the master is the one that is always there:
it is never busy with requests, never sheds load, and keeps answering while the
workers drain and after one dies. The API's workers and their listener are not
involved at all, so /metrics is not reachable on the API port.

Why threads in a process that forks: fork() copies only the thread that calls
it, so a lock that another thread holds at that moment (logging's, stdout's,
one inside prometheus_client) stays locked forever in the child. So no fork
happens while one of these threads does anything but socket I/O on its own
connection: `os.register_at_fork` takes `_no_fork` around every fork, and the
threads hold it whenever they collect metrics or write a log record. A child
closes its copy of the listening socket.
"""

from __future__ import annotations

import gzip
import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fiboserver.logs import client_name

log = logging.getLogger("fiboserver.metrics")

PATH = "/metrics"
# A scraper that connects and sends nothing is dropped after this many seconds.
REQUEST_TIMEOUT = 10.0
# While the port is taken (by the old master during a USR2 upgrade), try again
# this often.
RETRY_SECONDS = 1.0

_no_fork = threading.Lock()
# Listening sockets a forked child must close.
_listeners: list[ThreadingHTTPServer] = []


def _before_fork() -> None:
    _no_fork.acquire()


def _after_fork_in_parent() -> None:
    _no_fork.release()


def _after_fork_in_child() -> None:
    _no_fork.release()
    for server in _listeners:
        server.socket.close()
    _listeners.clear()


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        if self.path.partition("?")[0] == PATH:
            from prometheus_client.exposition import gzip_accepted

            status = 200
            body, content_type = self.server.render(self.headers.get("Accept", ""))
            encoded: bool = gzip_accepted(self.headers.get("Accept-Encoding", ""))
            if encoded:
                body = gzip.compress(body)
        else:
            status, body, content_type = 404, b'{"error": "not found"}', "application/json"
            encoded = False
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if encoded:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged (the default would write plain text to stderr)."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, registry: Any) -> None:
        self.registry = registry
        # All interfaces, like the API: the pod is scraped on its own address.
        super().__init__(("0.0.0.0", port), _Handler)

    def render(self, accept: str) -> tuple[bytes, str]:
        """The exposition the client asked for (OpenMetrics or Prometheus text)."""
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(accept)
        with _no_fork:
            return encoder(self.registry), content_type

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A scraper that went away, mostly: one JSON record, not socketserver's
        # traceback on stderr.
        with _no_fork:
            log.warning(
                "metrics request failed",
                exc_info=True,
                extra={"client": client_name(client_address)},
            )


class MetricsServer:
    """The /metrics listener on 0.0.0.0:`port` and the thread that serves it."""

    def __init__(self, port: int, registry: Any, directory: str = "") -> None:
        self.port = port
        self.directory = directory  # logged with the start, for whoever looks for the files
        self._registry = registry
        self._server: _Server | None = None
        self._stopped = threading.Event()

    @property
    def addr(self) -> str:
        return f"http://0.0.0.0:{self.port}"

    def start(self) -> None:
        """Listen now (OSError if the port is taken) and serve in a thread."""
        self._serve(self._listen())

    def _listen(self) -> _Server:
        # No fork between opening the socket and registering it for children to close.
        with _no_fork:
            server = _Server(self.port, self._registry)
            _listeners.append(server)
        return server

    def start_when_free(self) -> None:
        """Listen as soon as the port is free, in a thread: a master started by
        USR2 takes the port over when the old master exits."""
        threading.Thread(target=self._retry, name="metrics-bind", daemon=True).start()

    def _retry(self) -> None:
        logged = False
        while not self._stopped.is_set():
            try:
                server = self._listen()
            except OSError as exc:
                if not logged:
                    with _no_fork:
                        log.info(
                            "metrics port in use, waiting for it",
                            extra={"addr": self.addr, "errmsg": str(exc)},
                        )
                    logged = True
                self._stopped.wait(RETRY_SECONDS)
                continue
            with _no_fork:
                self._serve(server)
            return

    def _serve(self, server: _Server) -> None:
        self._server = server
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
        log.info("metrics server start", extra={"addr": self.addr, "metrics_dir": self.directory})

    def stop(self) -> None:
        self._stopped.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
