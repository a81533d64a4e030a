"""OTLP/protobuf encoding of the recorded spans: pure functions, no I/O.

`encode_span` runs in the request thread as a span ends, `Envelope.request` in
the batch processor's thread around the spans of a batch. They write the
protobuf wire format of an `ExportTraceServiceRequest` (opentelemetry-proto,
collector/trace/v1) directly instead of building the generated message objects
first, which is what the SDK's encoder does: one object per span, attribute,
value and status, the larger part of what exporting a span costs
(docs/tracing.md, "Cost"). The resource and the scope are encoded once per
exporter. Field numbers are the ones in
opentelemetry/proto/trace/v1/trace.proto and common/v1/common.proto;
tests/test_tracing_otlp.py decodes the output with the generated classes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from opentelemetry.trace import SpanKind

# Span.kind in OTLP (trace.proto's SpanKind; the API's enum is numbered differently).
_KIND = {
    SpanKind.INTERNAL: 1,
    SpanKind.SERVER: 2,
    SpanKind.CLIENT: 3,
    SpanKind.PRODUCER: 4,
    SpanKind.CONSUMER: 5,
}
# Span.flags: bit 8 says whether bit 9 (the parent is remote) is known.
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200
_LEN, _VARINT, _FIXED64, _FIXED32 = 2, 0, 1, 5
_FIXED64_PACK = struct.Struct("<Q").pack
_DOUBLE_PACK = struct.Struct("<d").pack
_FIXED32_PACK = struct.Struct("<I").pack


class SpanRecord(Protocol):
    """What an exported span is made of (fiboserver.tracing.recorder.RecordedSpan)."""

    @property
    def trace_id(self) -> int: ...
    @property
    def span_id(self) -> int: ...
    @property
    def trace_state(self) -> str: ...
    @property
    def parent_span_id(self) -> int | None: ...
    @property
    def parent_is_remote(self) -> bool: ...
    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> SpanKind: ...
    @property
    def start_time(self) -> int: ...  # ns since the epoch
    @property
    def end_time(self) -> int: ...
    @property
    def attributes(self) -> Mapping[str, object]: ...
    @property
    def status_code(self) -> int: ...  # 0 unset, 1 ok, 2 error: the API's and OTLP's


def _varint(n: int) -> bytes:
    if 0 <= n < 0x80:
        return _SMALL[n]
    if n < 0:
        n += 1 << 64  # int64 as protobuf writes it: ten bytes of two's complement
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = [bytes((n,)) for n in range(0x80)]


def _tag(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _len_field(field: int, payload: bytes) -> bytes:
    return _tag(field, _LEN) + _varint(len(payload)) + payload


def _str_field(field: int, text: str) -> bytes:
    return _len_field(field, text.encode()) if text else b""


def any_value(value: object) -> bytes:
    """common.proto's AnyValue of an attribute's value: str, bool, int, float or
    a sequence of them, the types the SDK allows a span's or a resource's
    attributes; anything else is an empty AnyValue."""
    if isinstance(value, str):
        return _len_field(1, value.encode())
    if isinstance(value, bool):  # before int: a bool is an int too
        return _tag(2, _VARINT) + _varint(int(value))
    if isinstance(value, int):
        return _tag(3, _VARINT) + _varint(value)
    if isinstance(value, float):
        return _tag(4, _FIXED64) + _DOUBLE_PACK(value)
    if isinstance(value, Sequence):  # ArrayValue: repeated AnyValue in its field 1
        return _len_field(5, b"".join(_len_field(1, any_value(v)) for v in value))
    return b""


def key_value(field: int, key: str, value: object) -> bytes:
    """One KeyValue in `field`."""
    return _len_field(field, _len_field(1, key.encode()) + _len_field(2, any_value(value)))


def key_values(field: int, attributes: Mapping[str, object]) -> bytes:
    """`attributes` as repeated KeyValue in `field`."""
    return b"".join(key_value(field, k, v) for k, v in attributes.items())


# Span attributes repeat from span to span (method, route, scheme, status, a
# frequent query): their encodings are kept, up to a bound, by key and then by
# value with the value's type (True == 1 and 1 == 1.0 as keys, but each is
# encoded differently). The keys are fiboserver's own few. The request threads
# share the dicts without a lock: each get, set and clear is one atomic dict
# operation, and two threads racing cost at most an entry encoded twice or a
# few past the bound until the next clear.
_SPAN_ATTRIBUTE_FIELD = 9
_ENCODED: dict[str, dict[object, tuple[type, bytes]]] = {}
_ENCODED_MAX = 4096  # values kept for one key


def _span_attributes(attributes: Mapping[str, object]) -> bytes:
    parts = []
    for key, value in attributes.items():
        by_value = _ENCODED.get(key)
        if by_value is None:
            by_value = _ENCODED[key] = {}
        try:
            kept = by_value.get(value)
        except TypeError:  # a list value: not hashable, not kept
            parts.append(key_value(_SPAN_ATTRIBUTE_FIELD, key, value))
            continue
        if kept is not None and kept[0] is type(value):
            parts.append(kept[1])
            continue
        encoded = key_value(_SPAN_ATTRIBUTE_FIELD, key, value)
        if len(by_value) >= _ENCODED_MAX:
            by_value.clear()
        by_value[value] = (type(value), encoded)
        parts.append(encoded)
    return b"".join(parts)


# The fixed-size fields' tags and lengths, as protobuf writes them (field << 3 | wire type).
_TRACE_ID = bytes((1 << 3 | _LEN, 16))
_SPAN_ID = bytes((2 << 3 | _LEN, 8))
_PARENT_SPAN_ID = bytes((4 << 3 | _LEN, 8))
_KIND_TAG = bytes((6 << 3 | _VARINT,))
_START_TAG = bytes((7 << 3 | _FIXED64,))
_END_TAG = bytes((8 << 3 | _FIXED64,))
_FLAGS_TAG = _varint(16 << 3 | _FIXED32)
_FLAGS = {
    remote: _FLAGS_TAG + _FIXED32_PACK(_HAS_IS_REMOTE | (_IS_REMOTE if remote else 0))
    for remote in (False, True)
}
_KIND_FIELD = {kind: _KIND_TAG + _varint(number) for kind, number in _KIND.items()}


def encode_span(span: SpanRecord) -> bytes:
    """One trace.proto Span message (without its own tag and length)."""
    parent = span.parent_span_id
    parts = [
        _TRACE_ID, span.trace_id.to_bytes(16, "big"),
        _SPAN_ID, span.span_id.to_bytes(8, "big"),
        _str_field(3, span.trace_state),
        b"" if parent is None else _PARENT_SPAN_ID + parent.to_bytes(8, "big"),
        _str_field(5, span.name),
        _KIND_FIELD[span.kind],
        _START_TAG, _FIXED64_PACK(span.start_time),
        _END_TAG, _FIXED64_PACK(span.end_time),
        _span_attributes(span.attributes),
    ]  # fmt: skip
    if span.status_code:  # Status (15): its code (3) alone
        parts.append(_len_field(15, _tag(3, _VARINT) + _varint(span.status_code)))
    parts.append(_FLAGS[span.parent_is_remote])
    return b"".join(parts)


@dataclass(frozen=True)
class Envelope:
    """The parts of a request that are the same for every batch of a process."""

    resource: bytes  # Resource message
    scope: bytes  # InstrumentationScope message
    resource_schema_url: str

    def request(self, spans: Iterable[bytes]) -> bytes:
        """An ExportTraceServiceRequest with `spans` (each made by `encode_span`),
        all of this resource and scope."""
        scope_spans = _len_field(1, self.scope) + b"".join(_len_field(2, s) for s in spans)
        resource_spans = (
            _len_field(1, self.resource)
            + _len_field(2, scope_spans)
            + _str_field(3, self.resource_schema_url)
        )
        return _len_field(1, resource_spans)


def envelope(
    resource_attributes: Mapping[str, object],
    scope_name: str,
    resource_schema_url: str,
) -> Envelope:
    return Envelope(
        key_values(1, resource_attributes), _str_field(1, scope_name), resource_schema_url
    )
