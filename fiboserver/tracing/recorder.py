"""A span recorder for the request threads: the OpenTelemetry API's Tracer and
Span, recording only what the exporter sends (fiboserver.tracing.otlp).

The SDK's spans validate every attribute against the span limits under a lock,
copy themselves into a ReadableSpan when they end and carry events, links and
their own lock: most of what a span cost on the cached path (docs/tracing.md,
"Cost"). This recorder keeps a plain dict of attributes and hands the ended
span to `ended` (fiboserver.tracing.exporting encodes it there and queues the
bytes). Everything the SDK reads from the standard variables still comes from
the SDK's TracerProvider: the sampler (OTEL_TRACES_SAMPLER and _ARG), the
resource (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES), the id generator, and
the processor's OTEL_BSP_*. The SDK's default sampler, parent-based always-on,
is decided here from the parent's flag (as the SDK's spans decide it,
tests/test_tracing_otlp.py), without building the Context it would be given;
any other is called.

What it does not keep, since nothing in fiboserver makes any: events (an
exception is the span's ERROR status and description) and links.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, ParentBased, Sampler
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
    get_current_span,
    set_span_in_context,
    use_span,
)
from opentelemetry.util.types import Attributes, AttributeValue

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


class RecordedSpan(Span):
    """A sampled span: what the exporter encodes (otlp.SpanRecord), and the API's
    Span for the code that holds it."""

    __slots__ = ("_context", "_ended", "_parent", "attributes", "end_time", "kind", "name",
                 "start_time", "status_code", "status_message")  # fmt: skip

    def __init__(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, AttributeValue],
        ended: Callable[[RecordedSpan], None],
    ) -> None:
        self.name = name
        self._context = context
        self._parent = parent
        self.kind = kind
        self.attributes = attributes
        self.start_time = time.time_ns()
        self.end_time = 0
        self.status_code = StatusCode.UNSET.value
        self.status_message = ""
        self._ended = ended

    # --- what the encoder reads ------------------------------------------------------
    @property
    def context(self) -> SpanContext:
        return self._context

    @property
    def trace_id(self) -> int:
        return self._context.trace_id

    @property
    def span_id(self) -> int:
        return self._context.span_id

    @property
    def trace_state(self) -> str:
        state = self._context.trace_state
        return state.to_header() if state else ""  # most spans have none

    @property
    def parent_span_id(self) -> int | None:
        return None if self._parent is None else self._parent.span_id

    @property
    def parent_is_remote(self) -> bool:
        return self._parent is not None and self._parent.is_remote

    # --- the API's Span -------------------------------------------------------------
    def get_span_context(self) -> SpanContext:
        return self._context

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        self.attributes.update(attributes)

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self.attributes[key] = value

    def add_event(
        self, name: str, attributes: Attributes = None, timestamp: int | None = None
    ) -> None:
        """Not kept (module docstring)."""

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        """Not kept (module docstring)."""

    def update_name(self, name: str) -> None:
        self.name = name

    def is_recording(self) -> bool:
        return self.end_time == 0

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        code = status.status_code if isinstance(status, Status) else status
        if isinstance(status, Status):
            description = status.description
        self.status_code = code.value
        # A description only goes with ERROR (the API's rule).
        self.status_message = (description or "") if code is StatusCode.ERROR else ""

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        """Not kept as an event (module docstring); use_span sets the status."""

    def end(self, end_time: int | None = None) -> None:
        if self.end_time:
            return
        self.end_time = end_time or time.time_ns()
        self._ended(self)


class Recorder(Tracer):
    """The API's Tracer over RecordedSpan: `sampler` and `ids` from the SDK's
    TracerProvider, `ended` the batch processor's on_end."""

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

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> Span:
        parent = get_current_span(context).get_span_context()
        span = self.start_child(name, parent if parent.is_valid else None, kind, attributes,
                                context, links)  # fmt: skip
        if start_time is not None and isinstance(span, RecordedSpan):
            span.start_time = start_time
        return span

    def start_child(
        self,
        name: str,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: Attributes = None,
        context: Context | None = None,
        links: Sequence[Link] | None = (),
    ) -> Span:
        """A span whose parent is `parent` (None: a root), valid when given;
        `context` only for a sampler that reads more of it than the parent."""
        if parent is None:
            trace_id, random = self._ids.generate_trace_id(), self._random_roots
        else:
            trace_id, random = parent.trace_id, parent.trace_flags.random_trace_id
        decided: Attributes = None
        if self._follows_parent:
            recording = sampled = parent is None or parent.trace_flags.sampled
            trace_state = None if parent is None else parent.trace_state
        else:
            if context is None and parent is not None:
                context = set_span_in_context(NonRecordingSpan(parent))
            decision = self._sampler.should_sample(context, trace_id, name, kind, attributes, links)
            recording = decision.decision is not Decision.DROP
            sampled = decision.decision is Decision.RECORD_AND_SAMPLE
            trace_state, decided = decision.trace_state, decision.attributes
        span_context = SpanContext(
            trace_id,
            self._ids.generate_span_id(),
            is_remote=False,
            trace_flags=_FLAGS[sampled, random],
            trace_state=trace_state,
        )
        if not recording:
            return NonRecordingSpan(span_context)
        recorded: dict[str, AttributeValue] = dict(attributes) if attributes else {}
        if decided:
            recorded.update(decided)
        return RecordedSpan(name, span_context, parent, kind, recorded, self._ended)

    @contextlib.contextmanager
    def start_as_current_span(  # type: ignore[override]
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[Span]:
        span = self.start_span(name, context, kind, attributes, links, start_time)
        with use_span(span, end_on_exit=end_on_exit, record_exception=False,
                      set_status_on_exception=set_status_on_exception) as current:  # fmt: skip
            yield current
