"""Tracing with OpenTelemetry: the only package that imports it.

Configured by the standard OTEL_* environment variables alone (settings.py).
The app calls `RequestTracing` for every request (fiboserver.app.access) and
`computation` around an uncached Fibonacci computation (fiboserver.app.routes);
the server hooks call `prepare`, `start_worker` and `stop_worker`. Without an
exporter only the OpenTelemetry API is imported (no SDK, no thread, no socket):
an incoming W3C traceparent is still honoured and its ids logged. This package
imports nothing of the app, the worker or the server.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fiboserver.tracing.requests import ACTIVE, RequestTrace, RequestTracing
from fiboserver.tracing.settings import TracingSettings, settings_from_env
from fiboserver.tracing.spans import computation

log = logging.getLogger("fiboserver.tracing")

__all__ = [
    "RequestTrace",
    "RequestTracing",
    "TracingSettings",
    "computation",
    "prepare",
    "settings_from_env",
    "start_worker",
    "stop_worker",
]


def prepare(env: Mapping[str, str]) -> TracingSettings:
    """In the master: say whether spans will be exported and, if so, import the
    SDK now, so each forked worker shares it instead of importing it (a few
    tenths of a second) before it can serve. Starts no thread."""
    settings = settings_from_env(env)
    if settings.exporting:
        from fiboserver.tracing import exporting  # noqa: F401  (imported for its import cost)

        log.info("tracing exporting", extra={"endpoint": settings.endpoint})
    else:
        log.info("tracing not exporting", extra={"reason": settings.why_not})
    return settings


def start_worker(env: Mapping[str, str]) -> None:
    """In a worker, after the fork: start exporting if the environment asks for it."""
    settings = settings_from_env(env)
    if settings.exporting:
        from fiboserver.tracing import exporting

        exporting.start(settings)


def stop_worker() -> None:
    """In a worker, as it exits: export every queued span, stop the exporter."""
    ACTIVE.shut_down()
