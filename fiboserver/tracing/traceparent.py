"""The W3C `traceparent` header, read as OpenTelemetry's W3C propagator reads it.

Runs in the request threads, for every request that carries the header. Without
an exporter, the ids are all a request needs from it (they go into its log
records), and the propagator's way to them (a Context, a SpanContext of
integers, a span, formatted back to hex) costs several times what this match
does (docs/tracing.md, "Cost"). The rules are the propagator's, in the
opentelemetry-api pinned in requirements.lock: tests/test_traceparent.py holds
this parser to the propagator's answers, header by header.
"""

from __future__ import annotations

import re
from typing import NamedTuple

# The propagator's pattern and limit. `$` as the propagator uses it (re.match),
# so a header it accepts with a trailing newline is accepted here too.
_FORMAT = re.compile(
    r"^[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:(-.*)|[ \t]*)$"
)
MAXIMUM_LENGTH = 512
# All-zero ids are invalid; version ff is forbidden; version 00 has exactly four
# fields (a later version may add fields after a dash).
_INVALID_TRACE_ID = "0" * 32
_INVALID_SPAN_ID = "0" * 16
_FORBIDDEN_VERSION = "ff"
_VERSION_00 = "00"


class TraceParent(NamedTuple):
    """A valid header's fields, as lower-case hex text."""

    trace_id: str
    span_id: str
    flags: str


def parse(header: str) -> TraceParent | None:
    """The header's fields, or None when the propagator would find no parent."""
    if len(header) > MAXIMUM_LENGTH:
        return None
    match = _FORMAT.match(header)
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if trace_id == _INVALID_TRACE_ID or span_id == _INVALID_SPAN_ID:
        return None
    if version == _FORBIDDEN_VERSION or (version == _VERSION_00 and rest):
        return None
    return TraceParent(trace_id, span_id, flags)
