"""The exporter's own span recorder and OTLP encoder (fiboserver.tracing.recorder,
fiboserver.tracing.otlp), read back with opentelemetry-proto's generated classes:
every field a collector reads comes out as the protobuf schema says.

Jaeger reading what a real server sends is tests/test_tracing_jaeger.py's part.
"""

from __future__ import annotations

import os
from importlib import metadata
from typing import Any

import pytest
from opentelemetry.context import Context
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
)
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    TraceFlags,
    get_current_span,
    set_span_in_context,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from fiboserver.tracing import RequestTracing, computation, exporting, otlp
from fiboserver.tracing.recorder import RecordedSpan, Recorder
from fiboserver.tracing.requests import ACTIVE, SERVER_SPAN

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def remote_parent(flags: str = "01") -> Any:
    return TraceContextTextMapPropagator().extract(
        {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-{flags}", "tracestate": "a=1,b=2"}
    )


def value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, str(kind))


def decoded(data: bytes) -> ExportTraceServiceRequest:
    """The request in `data`, which must be exactly what protobuf itself writes
    for it: no unknown or misplaced bytes a lenient reader would skip."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(data)
    assert request.SerializeToString(deterministic=True) == data
    return request


def remote(flags: str = "01") -> SpanContext:
    return get_current_span(remote_parent(flags)).get_span_context()


def record(sampler: Any = None) -> tuple[Recorder, list[RecordedSpan]]:
    ended: list[RecordedSpan] = []
    return Recorder(sampler or ParentBased(ALWAYS_ON), RandomIdGenerator(), ended.append), ended


def spans_of(ended: list[RecordedSpan]) -> list[Any]:
    envelope = otlp.envelope({}, "fibo", "")
    return list(decoded(envelope.request(map(otlp.encode_span, ended))).resource_spans[0]
                .scope_spans[0].spans)  # fmt: skip


def test_a_requests_span_and_its_computations_decode_field_by_field() -> None:
    # The request path: the access middleware's begin and end, the route's computation.
    recorder, ended = record()
    ACTIVE.exporting(recorder, lambda: None)
    try:
        tracing = RequestTracing(["/dev/fibo"])
        trace = tracing.begin(
            {"HTTP_TRACEPARENT": f"00-{TRACE_ID}-{PARENT_ID}-01", "HTTP_TRACESTATE": "a=1,b=2",
             "wsgi.url_scheme": "https", "QUERY_STRING": "n=4321"},
            "GET", "/dev/fibo",
        )  # fmt: skip
        assert trace is not None
        with computation(4321):
            pass
        trace.end(500)
        assert SERVER_SPAN.get() is None  # the next request in this thread starts clean
        other = tracing.begin({}, "PURGE", "/dev/other")  # no parent, no query, no scheme
        assert other is not None
        other.end(None, KeyError("x"))
    finally:
        ACTIVE.shut_down()
    child, span, root = spans_of(ended)

    assert (span.trace_id.hex(), span.parent_span_id.hex()) == (TRACE_ID, PARENT_ID)
    assert len(span.span_id) == 8 and span.span_id.hex() != PARENT_ID
    assert (span.name, span.kind, span.trace_state) == ("GET /dev/fibo", 2, "a=1,b=2")
    assert {kv.key: value(kv.value) for kv in span.attributes} == {
        "http.request.method": "GET", "url.path": "/dev/fibo", "url.scheme": "https",
        "http.route": "/dev/fibo", "url.query": "n=4321", "http.response.status_code": 500,
        "error.type": "500",
    }  # fmt: skip
    assert (span.status.code, span.status.message) == (2, "")  # STATUS_CODE_ERROR
    assert span.flags == 0x300  # the parent is known to be remote
    assert 0 < span.start_time_unix_nano <= child.start_time_unix_nano
    assert child.end_time_unix_nano <= span.end_time_unix_nano

    assert (child.trace_id, child.parent_span_id) == (span.trace_id, span.span_id)
    assert (child.name, child.kind, child.trace_state) == ("fibonacci", 1, "a=1,b=2")
    assert {kv.key: value(kv.value) for kv in child.attributes} == {"fibo.n": 4321}
    assert child.flags == 0x100  # the parent is known to be local

    assert (root.name, root.parent_span_id, root.flags) == ("PURGE", b"", 0x100)
    assert {kv.key: value(kv.value) for kv in root.attributes} == {
        "http.request.method": "_OTHER", "http.request.method_original": "PURGE",
        "url.path": "/dev/other", "url.scheme": "http", "error.type": "KeyError",
    }  # fmt: skip
    assert root.status.code == 2


def test_a_computation_that_fails_has_its_error_type_and_raises_it() -> None:
    recorder, ended = record()
    ACTIVE.exporting(recorder, lambda: None)
    try:
        with pytest.raises(MemoryError), computation(10**9):
            raise MemoryError
    finally:
        ACTIVE.shut_down()
    (span,) = spans_of(ended)
    assert (span.name, span.status.code) == ("fibonacci", 2)  # STATUS_CODE_ERROR
    assert {kv.key: value(kv.value) for kv in span.attributes} == {
        "fibo.n": 10**9, "error.type": "MemoryError",
    }  # fmt: skip


def test_a_span_and_its_child_decode_field_by_field() -> None:
    recorder, ended = record()
    server = recorder.start(
        "GET /dev/fibo", SpanKind.SERVER, remote(),
        {"http.request.method": "GET", "url.path": "/dev/fibo", "flag": True, "ratio": 0.5,
         "big": 2**40, "negative": -3, "tags": ["x", "y"]},
    )  # fmt: skip
    recorder.start("fibonacci", SpanKind.INTERNAL, server.span_context(), {"fibo.n": 4321}).end()
    server.attributes["http.response.status_code"] = 500
    server.fail("500")
    server.end()
    server.end()  # a second end is ignored
    assert [s.name for s in ended] == ["fibonacci", "GET /dev/fibo"]

    schema = "https://opentelemetry.io/schemas/1.26.0"
    envelope = otlp.envelope({"service.name": "svc", "process.pid": 42, "ok": True}, "fibo", schema)
    (resource_spans,) = decoded(envelope.request(map(otlp.encode_span, ended))).resource_spans
    assert {kv.key: value(kv.value) for kv in resource_spans.resource.attributes} == {
        "service.name": "svc", "process.pid": 42, "ok": True,
    }  # fmt: skip
    assert resource_spans.schema_url == schema
    (scope_spans,) = resource_spans.scope_spans
    assert scope_spans.scope.name == "fibo"
    child, span = scope_spans.spans

    assert span.trace_id.hex() == TRACE_ID
    assert span.parent_span_id.hex() == PARENT_ID
    assert len(span.span_id) == 8 and span.span_id.hex() != PARENT_ID
    assert span.trace_state == "a=1,b=2"
    assert span.name == "GET /dev/fibo"
    assert span.kind == 2  # SPAN_KIND_SERVER
    assert 0 < span.start_time_unix_nano <= span.end_time_unix_nano
    assert {kv.key: value(kv.value) for kv in span.attributes} == {
        "http.request.method": "GET", "url.path": "/dev/fibo", "flag": True, "ratio": 0.5,
        "big": 2**40, "negative": -3, "tags": ["x", "y"], "http.response.status_code": 500,
        "error.type": "500",
    }  # fmt: skip
    assert (span.status.code, span.status.message) == (2, "")  # STATUS_CODE_ERROR
    assert span.flags == 0x300  # the parent is known to be remote

    assert child.trace_id == span.trace_id
    assert child.parent_span_id == span.span_id
    assert child.kind == 1  # SPAN_KIND_INTERNAL
    assert child.trace_state == "a=1,b=2"
    assert {kv.key: value(kv.value) for kv in child.attributes} == {"fibo.n": 4321}
    assert child.flags == 0x100  # the parent is known to be local
    assert not child.HasField("status")
    assert span.start_time_unix_nano <= child.start_time_unix_nano
    assert child.end_time_unix_nano <= span.end_time_unix_nano


@pytest.fixture(autouse=True)
def encodings_made_afresh() -> None:
    """The encoder keeps attribute encodings it has made: each test makes its
    own (mutmut forks each mutant's run from a process earlier tests filled)."""
    otlp._ENCODED.clear()


def test_integers_at_the_varint_edges_and_other_values_round_trip() -> None:
    recorder, ended = record()
    values: list[Any] = [0, 1, 127, 128, 16383, 16384, -1, -128, 2**63 - 1, -(2**63), 0.0, -2.5, "",
              "é", [], [1, "a", True, 0.5]]  # fmt: skip
    recorder.start(
        "values", SpanKind.INTERNAL, None, {f"v{i}": v for i, v in enumerate(values)}
    ).end()
    (span,) = spans_of(ended)
    assert [value(kv.value) for kv in span.attributes] == values
    assert otlp.any_value(None) == b""  # no type of the SDK's: an empty AnyValue


def test_a_root_span_and_values_equal_across_types() -> None:
    recorder, ended = record()
    # True == 1 == 1.0 as Python values; each must keep its own protobuf type.
    for v in (True, 1, 1.0, 1, True):
        recorder.start("root", SpanKind.INTERNAL, None, {"k": v}).end()
    request = decoded(otlp.envelope({}, "fibo", "").request(map(otlp.encode_span, ended)))
    spans = request.resource_spans[0].scope_spans[0].spans
    assert [s.attributes[0].value.WhichOneof("value") for s in spans] == [
        "bool_value", "int_value", "double_value", "int_value", "bool_value",
    ]  # fmt: skip
    assert all(s.parent_span_id == b"" and s.flags == 0x100 for s in spans)
    assert len({s.trace_id for s in spans}) == 5


def test_a_span_whose_attributes_were_seen_before_has_them_all() -> None:
    recorder, ended = record()
    attributes: dict[str, Any] = {
        "http.request.method": "GET", "url.path": "/prod/fibo", "n": 10, "cached": [1],
    }  # fmt: skip
    for _ in range(2):  # the second span's encodings are the kept ones
        recorder.start("again", SpanKind.SERVER, None, attributes).end()
    first, second = spans_of(ended)
    assert {kv.key: value(kv.value) for kv in first.attributes} == attributes
    assert {kv.key: value(kv.value) for kv in second.attributes} == attributes


def test_a_span_not_sampled_has_its_ids_and_is_not_exported() -> None:
    # The caller's "not sampled" is followed; the ids are there for the log records.
    recorder, ended = record()
    span = recorder.start("GET", SpanKind.SERVER, remote("00"), {})
    assert format(span.trace_id, "032x") == TRACE_ID and span.span_id
    span.end()
    dropping, dropped = record(ParentBased(ALWAYS_OFF))
    dropping.start("root", SpanKind.INTERNAL, None, {}).end()
    assert [s.sampled for s in ended + dropped] == [False, False]


def local_parent(flags: int) -> Context:
    local = SpanContext(int(TRACE_ID, 16), int(PARENT_ID, 16), False, TraceFlags(flags))
    return set_span_in_context(NonRecordingSpan(local))


PARENTS = {
    "none": lambda: None,
    "remote sampled, with tracestate": lambda: remote_parent("01"),
    "remote not sampled": lambda: remote_parent("00"),
    "local sampled": lambda: local_parent(1),
    "local not sampled": lambda: local_parent(0),
}


SAMPLERS = {
    "default": None,
    "always on": ALWAYS_ON,
    "always off": ALWAYS_OFF,
    "parent-based always off": ParentBased(ALWAYS_OFF),
}


@pytest.mark.parametrize("sampler", SAMPLERS.values(), ids=SAMPLERS.keys())
@pytest.mark.parametrize("parent", PARENTS.values(), ids=PARENTS.keys())
def test_the_sampler_decides_as_for_the_sdks_own_spans(parent: Any, sampler: Any) -> None:
    # The default sampler is decided without calling it, any other is called.
    provider = TracerProvider() if sampler is None else TracerProvider(sampler=sampler)
    theirs = provider.get_tracer("reference").start_span("x", parent())
    expected = theirs.get_span_context()
    recorder = Recorder(provider.sampler, RandomIdGenerator(), lambda _: None)
    given = get_current_span(parent()).get_span_context()
    ours = recorder.start("x", SpanKind.INTERNAL, given if given.is_valid else None, {})
    assert ours.sampled == theirs.is_recording()
    assert ours.trace_flags == expected.trace_flags
    assert ours.span_context().trace_state == expected.trace_state
    assert (ours.trace_id == int(TRACE_ID, 16)) == (expected.trace_id == int(TRACE_ID, 16))


class _Asked(Sampler):
    """A sampler of someone's own (OTEL_TRACES_SAMPLER can name one): what it
    was asked, and a decision that adds an attribute."""

    def __init__(self) -> None:
        self.asked: list[tuple[Any, int, str, Any, dict[str, Any]]] = []

    def should_sample(  # type: ignore[override]
        self, parent_context: Any, trace_id: int, name: str, kind: Any = None,
        attributes: Any = None, links: Any = None,
    ) -> SamplingResult:  # fmt: skip
        self.asked.append((parent_context, trace_id, name, kind, dict(attributes or {})))
        return SamplingResult(Decision.RECORD_AND_SAMPLE, {"sampled.by": "own"})

    def get_description(self) -> str:
        return "own"


def test_any_other_sampler_is_asked_what_the_sdk_asks_it() -> None:
    sampler = _Asked()
    recorder, _ = record(sampler)
    parent = remote()
    span = recorder.start("GET /dev/fibo", SpanKind.SERVER, parent, {"url.path": "/dev/fibo"})
    root = recorder.start("root", SpanKind.INTERNAL, None, {})
    (context, trace_id, name, kind, attributes), asked_root = sampler.asked
    assert get_current_span(context).get_span_context() == parent
    assert (trace_id, name, kind) == (parent.trace_id, "GET /dev/fibo", SpanKind.SERVER)
    assert attributes == {"url.path": "/dev/fibo"}
    assert span.attributes == {"url.path": "/dev/fibo", "sampled.by": "own"} and span.sampled
    assert asked_root[0] is None and asked_root[1] == root.trace_id


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({}, "fiboserver"),
        ({"OTEL_SERVICE_NAME": "fibo-edge"}, "fibo-edge"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs,team=sre"}, "from-attrs"),
    ],
)
def test_the_resource_names_the_service_its_version_and_process(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], name: str
) -> None:
    for var in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"):
        monkeypatch.delenv(var, raising=False)
    for var, setting in env.items():
        monkeypatch.setenv(var, setting)
    attributes = exporting._resource().attributes
    assert attributes["service.name"] == name
    assert attributes["service.version"] == metadata.version("fiboserver")
    assert attributes["process.pid"] == os.getpid()
    assert ("team" in attributes) == ("team=sre" in env.get("OTEL_RESOURCE_ATTRIBUTES", ""))
