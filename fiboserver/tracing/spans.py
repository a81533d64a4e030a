"""Spans inside a request: a child of the request's SERVER span.

Runs in the request threads. `computation(n)` wraps a Fibonacci computation
that missed the cache; only that path calls it, so a cached request pays
nothing here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from opentelemetry.trace import SpanKind

from fiboserver.tracing.requests import ACTIVE, SERVER_SPAN


def _computation(n: int) -> Iterator[None]:
    """A `fibonacci` INTERNAL span around computing F(n), when exporting: a
    child of the request's SERVER span (RequestTracing.begin set it), or a
    root outside a request."""
    recorder = ACTIVE.recorder
    if recorder is None:
        yield
        return
    server = SERVER_SPAN.get()
    parent = None if server is None else server.span_context()
    span = recorder.start("fibonacci", SpanKind.INTERNAL, parent, {"fibo.n": n})
    try:
        yield
    except BaseException as error:
        span.fail(type(error).__qualname__)
        raise
    finally:
        span.end()


# Wrapped here, not decorated: mutmut does not mutate decorated functions (docs/mutation.md).
computation = contextlib.contextmanager(_computation)
