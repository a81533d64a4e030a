"""A WSGI app with a fault no app handled: `/ok` answers 200, every other path
raises before answering. Served by fiboserver's worker in place of the service
(`gunicorn -c gunicorn.conf.py tests.support.faultyapp:app`), it shows what the
worker itself does with such a fault (tests/test_worker_faults.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    if path == "/ok":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]
    raise RuntimeError(f"boom at {path}")
