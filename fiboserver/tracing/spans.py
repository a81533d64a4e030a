"""Spans inside a request: a child of the request's SERVER span.

`computation(n)` wraps a Fibonacci computation that missed the cache; only that
path calls it, so a cached request pays nothing here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from fiboserver.tracing.requests import ACTIVE


@contextlib.contextmanager
def computation(n: int) -> Iterator[None]:
    """A `fibonacci` INTERNAL span around computing F(n), when exporting."""
    tracer = ACTIVE.tracer
    if tracer is None:
        yield
        return
    # The request's SERVER span is the current span (RequestTracing.begin
    # attached it), so this one is its child.
    with tracer.start_as_current_span("fibonacci", attributes={"fibo.n": n}):
        yield
