"""Spans inside a request: a child of the request's SERVER span.

`computation(n)` wraps a Fibonacci computation that missed the cache; only that
path calls it, so a cached request pays nothing here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from opentelemetry.trace import NonRecordingSpan, set_span_in_context

from fiboserver.tracing.requests import ACTIVE, SERVER_SPAN


@contextlib.contextmanager
def computation(n: int) -> Iterator[None]:
    """A `fibonacci` INTERNAL span around computing F(n), when exporting."""
    tracer = ACTIVE.tracer
    if tracer is None:
        yield
        return
    # A child of the request's SERVER span (RequestTracing.begin set it).
    server = SERVER_SPAN.get()
    parent = (
        None if server is None else set_span_in_context(NonRecordingSpan(server.span_context()))
    )
    with tracer.start_as_current_span("fibonacci", context=parent, attributes={"fibo.n": n}):
        yield
