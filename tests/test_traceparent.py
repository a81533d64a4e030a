"""fiboserver.tracing reads an incoming `traceparent` as OpenTelemetry's W3C propagator does.

The service reads the header itself (traceparent.parse for the log ids, and
requests.parent_context for an exported span's parent): a cheaper way to the
same answers, and the propagator is the reference. Each header here is given to
both; a difference names the header. An upgrade of
opentelemetry-api that changes the propagator's rules fails here.
"""

from __future__ import annotations

import random

import pytest
from opentelemetry.trace import SpanContext, format_span_id, format_trace_id, get_current_span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from fiboserver.tracing import traceparent
from fiboserver.tracing.requests import remote_parent

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{SPAN}-01"

HEADERS = {
    "sampled": VALID,
    "not sampled": f"00-{TRACE}-{SPAN}-00",
    "other flags": f"00-{TRACE}-{SPAN}-ff",
    "upper-case hex": VALID.upper(),
    "upper-case trace id": f"00-{TRACE.upper()}-{SPAN}-01",
    "leading spaces and tabs": " \t " + VALID,
    "trailing spaces and tabs": VALID + " \t",
    "trailing newline": VALID + "\n",
    "trailing two newlines": VALID + "\n\n",
    "leading newline": "\n" + VALID,
    "unicode space": "\u2003" + VALID,
    "version 00 with a fifth field": VALID + "-extra",
    "version 00 with a dash": VALID + "-",
    "version 01 with a fifth field": f"01-{TRACE}-{SPAN}-01-extra",
    "version 01 with no fifth field": f"01-{TRACE}-{SPAN}-01",
    "version 01 with a space then more": f"01-{TRACE}-{SPAN}-01 x",
    "version ff": f"ff-{TRACE}-{SPAN}-01",
    "all-zero trace id": f"00-{'0' * 32}-{SPAN}-01",
    "all-zero span id": f"00-{TRACE}-{'0' * 16}-01",
    "short trace id": f"00-{TRACE[:-1]}-{SPAN}-01",
    "long span id": f"00-{TRACE}-{SPAN}0-01",
    "one-digit flags": f"00-{TRACE}-{SPAN}-1",
    "non-hex": f"00-{TRACE[:-1]}g-{SPAN}-01",
    "underscores": VALID.replace("-", "_"),
    "empty": "",
    "a dash": "-",
    "512 characters": f"01-{TRACE}-{SPAN}-01-" + "x" * (512 - 56),
    "513 characters": f"01-{TRACE}-{SPAN}-01-" + "x" * (513 - 56),
}


def reference_parent(header: str, tracestate: str | None = None) -> SpanContext:
    carrier = {"traceparent": header}
    if tracestate is not None:
        carrier["tracestate"] = tracestate
    context = TraceContextTextMapPropagator().extract(carrier)
    return get_current_span(context).get_span_context()


def reference(header: str) -> tuple[str, str, str] | None:
    """What the propagator makes of `header`: the parent's ids and flags, or None."""
    parent = reference_parent(header)
    if not parent.is_valid:
        return None
    return (
        format_trace_id(parent.trace_id),
        format_span_id(parent.span_id),
        f"{parent.trace_flags:02x}",
    )


def ours(header: str) -> tuple[str, str, str] | None:
    parsed = traceparent.parse(header)
    return None if parsed is None else (parsed.trace_id, parsed.span_id, parsed.flags)


@pytest.mark.parametrize("header", HEADERS.values(), ids=HEADERS.keys())
def test_each_header_is_read_as_the_propagator_reads_it(header: str) -> None:
    assert ours(header) == reference(header)


@pytest.mark.parametrize("header", HEADERS.values(), ids=HEADERS.keys())
@pytest.mark.parametrize("tracestate", [None, "vendor=a,other=b", "bad entry", "x=" + "y" * 600])
def test_an_exported_spans_parent_is_the_propagators(header: str, tracestate: str | None) -> None:
    environ = {} if tracestate is None else {"HTTP_TRACESTATE": tracestate}
    parent = remote_parent(environ, header)
    reference = reference_parent(header, tracestate)
    # SpanContext compares its ids, flags, remoteness and trace state.
    assert parent == (reference if reference.is_valid else None)


def test_the_cases_include_both_answers() -> None:
    # A list where the propagator refuses everything (or nothing) would let a
    # parser that always says the same pass.
    answers = [reference(h) for h in HEADERS.values()]
    assert answers.count(None) >= 10
    assert (TRACE, SPAN, "01") in answers


def test_random_edits_of_a_valid_header_are_read_as_the_propagator_reads_them() -> None:
    rng = random.Random(20261207)
    alphabet = "0123456789abcdefABCDEFg- \t\n\u00a0x"
    accepted = 0
    for _ in range(3000):
        chars = list(rng.choice([VALID, f"01-{TRACE}-{SPAN}-01-a", f"cc-{TRACE}-{SPAN}-00"]))
        for _edit in range(rng.randint(1, 3)):
            where = rng.randrange(len(chars) + 1)
            action = rng.choice(("insert", "replace", "delete"))
            if action == "insert":
                chars.insert(where, rng.choice(alphabet))
            elif chars and where < len(chars):
                if action == "replace":
                    chars[where] = rng.choice(alphabet)
                else:
                    del chars[where]
        header = "".join(chars)
        expected = reference(header)
        assert ours(header) == expected, header
        accepted += expected is not None
    assert 300 < accepted < 2700  # both answers are exercised
