"""A span recorder for the request threads, recording only what the exporter
sends (fiboserver.tracing.otlp): each span a plain record (`RecordedSpan`: ids,
parent, name, kind, times, a dict of attributes, status), neither the SDK's
span nor the OpenTelemetry API's Span and SpanContext.

The SDK's spans validate every attribute against the span limits under a lock,
copy themselves into a ReadableSpan when they end and carry events, links and
their own lock; the API's objects and its context switch were most of what
remained of a span's cost on the cached path (docs/tracing.md, "Cost"). A
record hands itself to `ended` when it ends (fiboserver.tracing.exporting
encodes it there and queues the bytes). Everything the SDK reads from the
standard variables still comes from the SDK's TracerProvider: the sampler
(OTEL_TRACES_SAMPLER and _ARG), the resource (OTEL_SERVICE_NAME,
OTEL_RESOURCE_ATTRIBUTES), the id generator, and the processor's OTEL_BSP_*.
The SDK's default sampler, parent-based always-on, is decided here from the
parent's flag (as the SDK's spans decide it, tests/test_tracing_otlp.py),
without building the Context it would be given; any other is called.

What a record does not have, since nothing in fiboserver makes any: events,
links, and a status description (an error is the ERROR status and the
`error.type` attribute).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, ParentBased, Sampler
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)
from opentelemetry.util.types import AttributeValue

_PARENT_BASED_ALWAYS_ON = ParentBased(ALWAYS_ON).get_description()  # type: ignore[no-untyped-call]
# A new span's flags by (sampled, random trace id): W3C Trace Context level 2's
# random flag is the parent's, or for a root the id generator's, as the SDK's.
_FLAGS = {
    (sampled, random): TraceFlags(
        (TraceFlags.SAMPLED if sampled else 0) | (TraceFlags.RANDOM_TRACE_ID if random else 0)
    )
    for sampled in (False, True)
    for random in (False, True)
}


class RecordedSpan:
    """One span (otlp.SpanRecord): what the exporter encodes, as plain
    attributes. `sampled`: whether it is exported; `span_context` gives a child
    its parent."""

    __slots__ = ("_ended", "_trace_state", "attributes", "end_time", "kind", "name",
                 "parent_is_remote", "parent_span_id", "sampled", "span_id", "start_time",
                 "status_code", "trace_flags", "trace_id")  # fmt: skip

    def __init__(
        self,
        name: str,
        kind: SpanKind,
        ids: tuple[int, int, TraceFlags, TraceState | None],
        parent: SpanContext | None,
        attributes: dict[str, AttributeValue],
        ended: Callable[[RecordedSpan], None],
    ) -> None:
        self.name = name
        self.kind = kind
        self.trace_id, self.span_id, self.trace_flags, self._trace_state = ids
        self.sampled = self.trace_flags.sampled
        self.parent_span_id = None if parent is None else parent.span_id
        self.parent_is_remote = parent is not None and parent.is_remote
        self.attributes = attributes
        self.start_time = time.time_ns()
        self.end_time = 0
        self.status_code = StatusCode.UNSET.value
        self._ended = ended

    @property
    def trace_state(self) -> str:
        state = self._trace_state
        return state.to_header() if state else ""  # most spans have none

    def span_context(self) -> SpanContext:
        """The parent of a child span."""
        return SpanContext(
            self.trace_id,
            self.span_id,
            is_remote=False,
            trace_flags=self.trace_flags,
            trace_state=self._trace_state,
        )

    def fail(self, error_type: str) -> None:
        """The span's status is ERROR, `error_type` its kind (semantic conventions)."""
        self.attributes["error.type"] = error_type
        self.status_code = StatusCode.ERROR.value

    def end(self) -> None:
        """Ended now and handed to `ended`; a second end is ignored."""
        if self.end_time:
            return
        self.end_time = time.time_ns()
        self._ended(self)


class Recorder:
    """Starts spans: `sampler` and `ids` from the SDK's TracerProvider, `ended`
    fiboserver.tracing.exporting's (every span, sampled or not, ends there)."""

    def __init__(
        self, sampler: Sampler, ids: IdGenerator, ended: Callable[[RecordedSpan], None]
    ) -> None:
        self._sampler = sampler
        self._ids = ids
        self._ended = ended
        # The SDK's default sampler decides by the parent's sampled flag alone (and
        # samples a root): decided here without the Context it would be handed.
        self._follows_parent = sampler.get_description() == _PARENT_BASED_ALWAYS_ON
        self._random_roots = ids.is_trace_id_random()

    def start(
        self,
        name: str,
        kind: SpanKind,
        parent: SpanContext | None,
        attributes: dict[str, AttributeValue],
    ) -> RecordedSpan:
        """A span whose parent is `parent` (None: a root; valid when given);
        `attributes` become the span's own, with any the sampler adds. One the
        sampler drops still has its ids, for the log records."""
        if parent is None:
            trace_id, random = self._ids.generate_trace_id(), self._random_roots
        else:
            trace_id, random = parent.trace_id, parent.trace_flags.random_trace_id
        if self._follows_parent:
            sampled = parent is None or parent.trace_flags.sampled
            trace_state = None if parent is None else parent.trace_state
        else:
            context = None if parent is None else set_span_in_context(NonRecordingSpan(parent))
            decision = self._sampler.should_sample(context, trace_id, name, kind, attributes, ())
            sampled = decision.decision is Decision.RECORD_AND_SAMPLE
            trace_state = decision.trace_state
            if decision.attributes:
                attributes.update(decision.attributes)
        ids = (trace_id, self._ids.generate_span_id(), _FLAGS[sampled, random], trace_state)
        return RecordedSpan(name, kind, ids, parent, attributes, self._ended)
