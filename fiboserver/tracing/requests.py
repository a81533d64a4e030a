"""One request's trace: the incoming W3C context, the SERVER span, the log ids.

Runs in the request threads, called by the access middleware
(fiboserver.app.access) as a request arrives and when its response is closed.
Without an exporter (no endpoint, OTEL_SDK_DISABLED, or a process where no
worker started one) there is no span machinery at all: an incoming
`traceparent` is parsed (fiboserver.tracing.traceparent, the W3C propagator's
rules without its objects) and its ids go into the log records, which is the
whole cost, and only for requests that carry one.
With an exporter, each request gets one SERVER span named and attributed by the
stable HTTP semantic conventions (the required attributes), and its ids go
into the log records. That span is the recorder's plain record
(fiboserver.tracing.recorder.RecordedSpan), not an API Span made current in
OpenTelemetry's context: on the cached path the Span, its SpanContext and the
context switch were a fifth of what exporting cost (docs/tracing.md, "Cost").
The computation's span finds its parent in SERVER_SPAN instead; nothing else
in the process makes spans.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextvars import ContextVar
from typing import TYPE_CHECKING

from opentelemetry.trace import SpanContext, SpanKind, TraceFlags, get_current_span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from fiboserver.logs import trace_ids_var
from fiboserver.tracing import traceparent as w3c

if TYPE_CHECKING:
    from contextvars import Token

    from _typeshed.wsgi import WSGIEnvironment

    from fiboserver.tracing.recorder import RecordedSpan, Recorder

_PROPAGATOR = TraceContextTextMapPropagator()
# http.request.method takes these as they are; any other becomes _OTHER, with the
# original in http.request.method_original (semantic conventions: HTTP spans).
_KNOWN_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"}
)


class ActiveTracer:
    """This process's exporter: its span recorder and how to shut it down. Set by
    fiboserver.tracing.exporting in a worker that exports; None everywhere else
    (the master, tests, no endpoint), and again once shut down."""

    __slots__ = ("_shutdown", "recorder")

    def __init__(self) -> None:
        self.recorder: Recorder | None = None
        self._shutdown: Callable[[], None] | None = None

    def exporting(self, recorder: Recorder, shutdown: Callable[[], None]) -> None:
        self.recorder, self._shutdown = recorder, shutdown

    def shut_down(self) -> None:
        """Export what is queued and stop exporting; nothing if not exporting."""
        shutdown, self._shutdown, self.recorder = self._shutdown, None, None
        if shutdown is not None:
            shutdown()


ACTIVE = ActiveTracer()
# The SERVER span of the request this thread serves, when exporting: the parent
# of the spans made inside it (fiboserver.tracing.spans).
SERVER_SPAN: ContextVar[RecordedSpan | None] = ContextVar("fiboserver_server_span", default=None)


class RequestTrace:
    """A traced request, from its arrival to `end`: its SERVER span (when
    exporting) and the tokens that undo what `RequestTracing.begin` set."""

    __slots__ = ("_ids_token", "_span", "_span_token")

    def __init__(
        self,
        span: RecordedSpan | None,
        span_token: Token[RecordedSpan | None] | None,
        ids_token: Token[tuple[str, str] | None],
    ) -> None:
        self._span = span
        self._span_token = span_token
        self._ids_token = ids_token

    def end(self, status: int | None, error: BaseException | None = None) -> None:
        """The response was sent with `status` (None: the app raised `error`)."""
        try:
            span = self._span
            if span is not None:
                if status is not None:
                    span.attributes["http.response.status_code"] = status
                # Server spans: a 5xx or no answer is an error, a 4xx is the client's.
                if status is None or status >= 500:
                    span.fail(type(error).__qualname__ if error is not None else str(status))
                span.end()
        finally:
            if self._span_token is not None:
                SERVER_SPAN.reset(self._span_token)
            trace_ids_var.reset(self._ids_token)


class RequestTracing:
    """Begins a `RequestTrace` for each request that has (or, exporting, gets) a
    trace context. `routes`: the app's URL rules (plain paths), for http.route;
    `probe_paths`: the kubelet's probes, which get a span only when the caller
    sent a traceparent (a kubelet never does: spans every few seconds per pod
    that nobody asked for)."""

    def __init__(self, routes: Iterable[str], probe_paths: Iterable[str] = ()) -> None:
        self._routes = frozenset(routes)
        self._probe_paths = frozenset(probe_paths)

    def begin(self, environ: WSGIEnvironment, method: str, path: str) -> RequestTrace | None:
        traceparent: str | None = environ.get("HTTP_TRACEPARENT")
        recorder = ACTIVE.recorder
        if recorder is None or (traceparent is None and path in self._probe_paths):
            if traceparent is None:
                return None  # the cached path's usual case: one dict lookup
            parent = w3c.parse(traceparent)
            if parent is None:
                return None
            return RequestTrace(None, None, trace_ids_var.set((parent.trace_id, parent.span_id)))
        remote = remote_parent(environ, traceparent) if traceparent is not None else None
        route = path if path in self._routes else None
        span = recorder.start(
            f"{method} {route}" if route is not None else method,
            SpanKind.SERVER,
            remote,
            self._attributes(environ, method, path, route),
        )
        ids = format(span.trace_id, "032x"), format(span.span_id, "016x")
        return RequestTrace(span, SERVER_SPAN.set(span), trace_ids_var.set(ids))

    @staticmethod
    def _attributes(
        environ: WSGIEnvironment, method: str, path: str, route: str | None
    ) -> dict[str, AttributeValue]:
        """The stable HTTP server span attributes known before the app runs: the
        required and conditionally required ones. The recommended ones (client
        and server address, protocol version, user agent) are left out: every
        attribute is stored with the span and encoded when it is exported, in
        the worker's own CPU time (docs/tracing.md, "Cost"), and the request's
        log records have the client already."""
        attributes: dict[str, AttributeValue] = {
            "http.request.method": method if method in _KNOWN_METHODS else "_OTHER",
            "url.path": path,
            "url.scheme": environ.get("wsgi.url_scheme", "http"),
        }
        if method not in _KNOWN_METHODS:
            attributes["http.request.method_original"] = method
        if route is not None:
            attributes["http.route"] = route
        query = environ.get("QUERY_STRING")
        if query:
            attributes["url.query"] = query
        return attributes


def remote_parent(environ: WSGIEnvironment, traceparent: str) -> SpanContext | None:
    """The W3C trace context of the request's headers (None when malformed), as
    the W3C propagator would extract it."""
    tracestate = environ.get("HTTP_TRACESTATE")
    if tracestate is not None:
        # Rare: the propagator's own rules for the tracestate entries and limits.
        context = _PROPAGATOR.extract({"traceparent": traceparent, "tracestate": tracestate})
        extracted = get_current_span(context).get_span_context()
        return extracted if extracted.is_valid else None
    parent = w3c.parse(traceparent)
    if parent is None:
        return None
    return SpanContext(
        int(parent.trace_id, 16),
        int(parent.span_id, 16),
        is_remote=True,
        trace_flags=TraceFlags(int(parent.flags, 16)),
    )
