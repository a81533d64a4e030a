"""Request ids and the `start` / `end` access records, as Flask request hooks."""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, Response, g, request

from fiboserver.logs import request_id_var

REQUEST_ID_HEADER = "X-Request-ID"
# An incoming id is echoed only when it is safe to put in logs and headers.
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")

log = logging.getLogger("fiboserver.access")


def choose_request_id(incoming: str | None) -> str:
    """The caller's id when it is 1 to 128 of [A-Za-z0-9._-], else a new UUID4."""
    if incoming is not None and _VALID_REQUEST_ID.fullmatch(incoming):
        return incoming
    return str(uuid.uuid4())


def _client() -> str:
    environ = request.environ
    return f"{environ.get('REMOTE_ADDR', '')}:{environ.get('REMOTE_PORT', '')}"


def _start() -> None:
    request_id = choose_request_id(request.headers.get(REQUEST_ID_HEADER))
    g.request_id = request_id
    g.request_id_token = request_id_var.set(request_id)
    g.started = time.perf_counter()
    log.info("start", extra={"method": request.method, "path": request.path, "client": _client()})


def _end(response: Response) -> Response:
    response.headers[REQUEST_ID_HEADER] = g.request_id
    duration_ms = round((time.perf_counter() - g.started) * 1000, 3)
    log.info(
        "end",
        extra={
            "method": request.method,
            "path": request.path,
            "client": _client(),
            "status": response.status_code,
            "duration_ms": duration_ms,
        },
    )
    return response


def _forget(_exc: BaseException | None) -> None:
    token = g.pop("request_id_token", None)
    if token is not None:
        request_id_var.reset(token)


def init_app(app: Flask) -> None:
    app.before_request(_start)
    app.after_request(_end)
    app.teardown_request(_forget)
