"""A span recorder for the request threads, recording only what the exporter
sends (fiboserver.tracing.otlp): a request's SERVER span as a plain record
(`ServerSpan`, made by `Recorder.start_server`), and the OpenTelemetry API's
Tracer and Span for any other span (the computation's).

The SDK's spans validate every attribute against the span limits under a lock,
copy themselves into a ReadableSpan when they end and carry events, links and
their own lock: most of what a span cost on the cached path (docs/tracing.md,
"Cost"). These keep a plain dict of attributes and hand the ended span to
`ended` (fiboserver.tracing.exporting encodes it there and queues the bytes).
Everything the SDK reads from the standard variables still comes from the
SDK's TracerProvider: the sampler (OTEL_TRACES_SAMPLER and _ARG), the resource
(OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES), the id generator, and the
processor's OTEL_BSP_*. The SDK's default sampler, parent-based always-on, is
decided here from the parent's flag (as the SDK's spans decide it,
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
    TraceState,
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


class SpanFields:
    """What the encoder reads of a span (otlp.SpanRecord), as plain attributes: a
    span's ids, parent, name, kind, times, attributes and status."""

    __slots__ = ("_ended", "_trace_state", "attributes", "end_time", "kind", "name",
                 "parent_is_remote", "parent_span_id", "sampled", "span_id", "start_time",
                 "status_code", "status_message", "trace_flags", "trace_id")  # fmt: skip

    def __init__(
        self,
        name: str,
        kind: SpanKind,
        ids: tuple[int, int, TraceFlags, TraceState | None],
        parent: SpanContext | None,
        attributes: dict[str, AttributeValue],
        ended: Callable[[SpanFields], None],
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
        self.status_message = ""
        self._ended = ended

    @property
    def trace_state(self) -> str:
        state = self._trace_state
        return state.to_header() if state else ""  # most spans have none

    def end(self, end_time: int | None = None) -> None:
        if self.end_time:
            return
        self.end_time = end_time or time.time_ns()
        self._ended(self)


class ServerSpan(SpanFields):
    """A request's SERVER span: the fields alone, without the API's Span and
    SpanContext, which a request that computes nothing never needs
    (fiboserver.tracing.requests). `span_context` gives a child its parent."""

    __slots__ = ()

    def span_context(self) -> SpanContext:
        """The parent of a child span."""
        return SpanContext(
            self.trace_id,
            self.span_id,
            is_remote=False,
            trace_flags=self.trace_flags,
            trace_state=self._trace_state,
        )

    def fail(self) -> None:
        """The span's status is ERROR (without a description)."""
        self.status_code = StatusCode.ERROR.value


class RecordedSpan(SpanFields, Span):
    """A span made through the API's Tracer (the computation's child span): its
    fields, and the API's Span for the code that holds it."""

    __slots__ = ("_context",)

    def __init__(
        self,
        name: str,
        kind: SpanKind,
        context: SpanContext,
        parent: SpanContext | None,
        attributes: dict[str, AttributeValue],
        ended: Callable[[SpanFields], None],
    ) -> None:
        ids = (context.trace_id, context.span_id, context.trace_flags, context.trace_state)
        super().__init__(name, kind, ids, parent, attributes, ended)
        self._context = context

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


class Recorder(Tracer):
    """The API's Tracer over RecordedSpan: `sampler` and `ids` from the SDK's
    TracerProvider, `ended` the batch processor's on_end."""

    def __init__(
        self, sampler: Sampler, ids: IdGenerator, ended: Callable[[SpanFields], None]
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
        recorded: dict[str, AttributeValue] = dict(attributes) if attributes else {}
        recording, ids = self._decide(name, parent, kind, recorded, context, links)
        span_context = SpanContext(ids[0], ids[1], False, ids[2], ids[3])
        if not recording:
            return NonRecordingSpan(span_context)
        return RecordedSpan(name, kind, span_context, parent, recorded, self._ended)

    def start_server(
        self, name: str, parent: SpanContext | None, attributes: dict[str, AttributeValue]
    ) -> ServerSpan:
        """A request's SERVER span, `parent` as in `start_child`; `attributes`
        become the span's own. One the sampler drops has its ids for the log
        records and is not exported (`sampled` is false)."""
        _, ids = self._decide(name, parent, SpanKind.SERVER, attributes)
        return ServerSpan(name, SpanKind.SERVER, ids, parent, attributes, self._ended)

    def _decide(
        self,
        name: str,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, AttributeValue],
        context: Context | None = None,
        links: Sequence[Link] | None = (),
    ) -> tuple[bool, tuple[int, int, TraceFlags, TraceState | None]]:
        """Whether a new span is recorded, and its ids, flags and trace state; a
        sampler's own attributes are added to `attributes`."""
        if parent is None:
            trace_id, random = self._ids.generate_trace_id(), self._random_roots
        else:
            trace_id, random = parent.trace_id, parent.trace_flags.random_trace_id
        if self._follows_parent:
            recording = sampled = parent is None or parent.trace_flags.sampled
            trace_state = None if parent is None else parent.trace_state
        else:
            if context is None and parent is not None:
                context = set_span_in_context(NonRecordingSpan(parent))
            decision = self._sampler.should_sample(context, trace_id, name, kind, attributes, links)
            recording = decision.decision is not Decision.DROP
            sampled = decision.decision is Decision.RECORD_AND_SAMPLE
            trace_state = decision.trace_state
            if decision.attributes:
                attributes.update(decision.attributes)
        ids = (trace_id, self._ids.generate_span_id(), _FLAGS[sampled, random], trace_state)
        return recording, ids

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
