"""The ceiling of the stack: a bare WSGI callable under the service's own gunicorn settings.

`make bench` starts it as `gunicorn -c gunicorn.conf.py bench.ceiling:app` with the
same FIBOSERVER_CONFIG as the service it is compared with, so worker class,
workers, threads and keep-alive are the service's and only the app differs. It
answers `<prefix>/fibo?n=N` with the body and header set the service sends, using
the service's own `fibonacci_digits`, and does nothing else: no Flask, no
validation, no request id generation, no logging. Whatever the service spends
beyond this is the price of the framework and of the features.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from fiboserver.app.fibo import fibonacci_digits
from fiboserver.config import CONFIG_ENV, load_config

_CONFIG = load_config(os.environ[CONFIG_ENV])
_FIBO_PATH = _CONFIG.prefix + "/fibo"
_READY_PATH = _CONFIG.prefix + "/readyz"
_READY_BODY = b'{"status": "ready"}'
# Same length as a UUID4, so the bytes on the wire match the service's.
_REQUEST_ID = ("X-Request-ID", "00000000-0000-4000-8000-000000000000")
# The benchmark asks the cached case for one n only, so an unbounded dict is fine here.
_memo: dict[int, bytes] | None = {} if _CONFIG.cacheresult else None

StartResponse = Callable[..., Any]


def _body(n: int) -> bytes:
    """The service's JSON body for F(n); bench/servers.py checks the two are byte-identical."""
    return b'{"result": ' + fibonacci_digits(n).encode("ascii") + b"}"


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    if path == _FIBO_PATH:
        # The harness only sends `n=<digits>`; a bare app parses just that.
        n = int(environ.get("QUERY_STRING", "").partition("n=")[2])
        body = _memo.get(n) if _memo is not None else None
        if body is None:
            body = _body(n)
            if _memo is not None:
                _memo[n] = body
        status = "200 OK"
    elif path == _READY_PATH:
        body, status = _READY_BODY, "200 OK"
    else:
        body, status = b'{"error": "not found"}', "404 NOT FOUND"
    start_response(
        status,
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            _REQUEST_ID,
        ],
    )
    return [body]
