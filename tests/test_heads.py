"""fiboserver.worker.heads: where a request head ends and what the event loop reads from it."""

from __future__ import annotations

from http import HTTPStatus

import pytest

from fiboserver.worker.heads import (
    MAX_HEAD_BYTES,
    HeadError,
    head_length,
    incoming_request_id,
    probe_prefixes,
    request_line,
    reusable,
)

LINE_LIMIT = 4094  # gunicorn's limit_request_line default


def test_a_complete_head_and_what_follows_it() -> None:
    head = b"GET /prod/fibo?n=1 HTTP/1.1\r\nHost: x\r\n\r\n"
    assert head_length(head, LINE_LIMIT) == len(head)
    assert head_length(head + b"GET /next", LINE_LIMIT) == len(head)
    assert head_length(head + head, LINE_LIMIT) == len(head)  # pipelined: the first one


@pytest.mark.parametrize(
    "partial", [b"", b"G", b"GET /prod/readyz HTTP/1.1\r\n", b"GET / HTTP/1.1\r\nHost: x\r\n"]
)
def test_an_incomplete_head_waits_for_more(partial: bytes) -> None:
    assert head_length(partial, LINE_LIMIT) == 0


@pytest.mark.parametrize(
    "data",
    [b"GET / HTTP/1.0\n\n", b"GET / HTTP/1.1\nHost: x", b"GET / HTTP/1.1\r\nHost: x\n", b"\n"],
)
def test_bare_lf_heads_go_to_the_parser_at_once_which_refuses_them(data: bytes) -> None:
    assert head_length(data, LINE_LIMIT) == len(data)


def test_a_cr_waits_for_its_lf() -> None:
    assert head_length(b"GET / HTTP/1.1\r", LINE_LIMIT) == 0
    assert head_length(b"GET / HTTP/1.1\r\nHost: x\r\n\r", LINE_LIMIT) == 0


def test_an_empty_head_goes_to_the_parser_which_refuses_it() -> None:
    assert head_length(b"\r\n\r\n", LINE_LIMIT) == 4


def refused_line(data: bytes) -> HeadError:
    with pytest.raises(HeadError) as refused:
        head_length(data, LINE_LIMIT)
    return refused.value


def test_a_request_line_over_the_limit_is_refused_before_it_ends() -> None:
    refused = refused_line(b"GET /" + b"a" * LINE_LIMIT)
    assert (refused.status, refused.error) == (
        HTTPStatus.REQUEST_URI_TOO_LONG,
        "request line too long",
    )
    # ...and when it has ended, too.
    refused_line(b"GET /" + b"a" * LINE_LIMIT + b" HTTP/1.1\r\nHost: x\r\n")
    # Exactly at the limit it is still waited for.
    assert head_length(b"G" * LINE_LIMIT + b"\r\n", LINE_LIMIT) == 0
    refused_line(b"G" * (LINE_LIMIT + 1) + b"\r\n")


def test_a_line_without_its_crlf_yet_is_measured_as_gunicorn_does() -> None:
    # gunicorn's parser counts two bytes of what has arrived as the CRLF to come.
    assert head_length(b"G" * (LINE_LIMIT + 2), LINE_LIMIT) == 0
    refused_line(b"G" * (LINE_LIMIT + 3))


def test_one_empty_line_before_the_request_line_is_not_part_of_it() -> None:
    # RFC 9112 2.2: a server ignores it; gunicorn's parser measures the line after it.
    assert head_length(b"\r\n" + b"G" * LINE_LIMIT + b"\r\n", LINE_LIMIT) == 0
    refused_line(b"\r\n" + b"G" * (LINE_LIMIT + 1) + b"\r\n")
    assert head_length(b"\r\n" + b"G" * (LINE_LIMIT + 2), LINE_LIMIT) == 0
    refused_line(b"\r\n" + b"G" * (LINE_LIMIT + 3))
    head = b"\r\nGET /prod/readyz HTTP/1.1\r\nHost: x\r\n\r\n"
    assert head_length(head, LINE_LIMIT) == len(head)


def test_a_head_over_the_limit_is_refused_with_431() -> None:
    data = b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"a" * MAX_HEAD_BYTES
    with pytest.raises(HeadError) as refused:
        head_length(data, LINE_LIMIT)
    assert refused.value.status is HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
    assert refused.value.error == "request header too large"
    assert head_length(data[:MAX_HEAD_BYTES], LINE_LIMIT) == 0


def test_probe_prefixes_match_exactly_the_probe_paths() -> None:
    prefixes = probe_prefixes(frozenset({"/prod/healthz", "/prod/readyz"}))
    for head in (
        b"GET /prod/readyz HTTP/1.1\r\n\r\n",
        b"GET /prod/healthz HTTP/1.1\r\n\r\n",
        b"HEAD /prod/readyz HTTP/1.1\r\n\r\n",
        b"GET /prod/readyz?verbose=1 HTTP/1.1\r\n\r\n",
    ):
        assert head.startswith(prefixes), head
    for head in (
        b"GET /prod/readyzz HTTP/1.1\r\n\r\n",
        b"GET /prod/fibo?n=1 HTTP/1.1\r\n\r\n",
        b"POST /prod/readyz HTTP/1.1\r\n\r\n",
        b"GET /dev/readyz HTTP/1.1\r\n\r\n",
        b"get /prod/readyz HTTP/1.1\r\n\r\n",
    ):
        assert not head.startswith(prefixes), head
    assert probe_prefixes(frozenset()) == ()


def test_request_line_parts() -> None:
    assert request_line(b"GET /prod/fibo?n=1 HTTP/1.1\r\nHost: x\r\n\r\n") == (
        "GET",
        "/prod/fibo?n=1",
    )
    assert request_line(b"GARBAGE\r\n\r\n") == ("GARBAGE", "")
    assert request_line(b"\r\nGET /x HTTP/1.1\r\n\r\n") == ("GET", "/x")
    assert request_line(b"") == ("", "")
    assert request_line(b"GET") == ("GET", "")
    assert request_line(b"\r\n\r\nDELETE /a/b?c HTTP/1.1") == ("DELETE", "/a/b?c")
    # Lines ended by a bare LF (the parser refuses those heads): the first line still.
    assert request_line(b"GET /x HTTP/1.1\nHost: a b\nX: c d\r\n\r\n") == ("GET", "/x")
    assert request_line(b"GET\nHost: a b\r\n\r\n") == ("GET", "")
    # A line that begins with a space has no method; the record shows what came.
    assert request_line(b" GET /x HTTP/1.1\r\n\r\n") == ("", "GET")


def test_incoming_request_id_in_any_case() -> None:
    head = b"GET / HTTP/1.1\r\nHost: x\r\nx-REQUEST-id:  abc-1 \r\n\r\n"
    assert incoming_request_id(head) == "abc-1"
    assert incoming_request_id(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") is None
    # Only a header field, never the request line, nor a value that names one.
    assert incoming_request_id(b"GET /x-request-id: HTTP/1.1\r\n\r\n") is None
    assert incoming_request_id(b"\r\nX-Request-ID: line\r\nHost: x\r\n\r\n") is None
    assert incoming_request_id(b"GET / HTTP/1.1\r\nX-Note: X-Request-ID: a\r\n\r\n") is None
    assert incoming_request_id(b"GET / HTTP/1.1\r\nX-Request-IDs: a\r\n\r\n") is None
    # The first field of two; the value as sent, colons and all, without the
    # spaces and tabs around it; a head cut short still has it.
    two = b"GET / HTTP/1.1\r\nX-Request-ID:\tXa:1X \r\nX-Request-ID: b\r\n\r\n"
    assert incoming_request_id(two) == "Xa:1X"
    assert incoming_request_id(b"GET / HTTP/1.1\r\nx-request-id: cut") == "cut"
    # Around the value only spaces and tabs are optional whitespace (RFC 9110
    # 5.6.3): a vertical tab stays, for the id's own check to judge. Only empty
    # lines come before the request line: a line of blanks is the request line.
    assert incoming_request_id(b"GET / HTTP/1.1\r\nX-Request-ID: a\x0b\r\n\r\n") == "a\x0b"
    assert incoming_request_id(b" \r\nX-Request-ID: a\r\n\r\n") == "a"


@pytest.mark.parametrize(
    ("head", "reuse"),
    [
        (b"GET /prod/fibo?n=1 HTTP/1.1\r\nHost: x\r\n\r\n", True),
        (b"HEAD /prod/readyz HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\n\r\n", True),
        # HTTP/1.0 closes unless asked; a body would have to be read past first.
        (b"GET / HTTP/1.0\r\nHost: x\r\n\r\n", False),
        (b"POST /prod/fibo HTTP/1.1\r\nHost: x\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nTRANSFER-ENCODING: chunked\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nconnection:Keep-Alive, CLOSE\r\n\r\n", False),
        # Every Connection field counts, not only the first.
        (b"GET / HTTP/1.1\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n", False),
        # "close" in another field, or in the request line, is not the client's word.
        (b"GET / HTTP/1.1\r\nConnection: keep-alive\r\nX-Note: close\r\n\r\n", True),
        (b"GET /close HTTP/1.1\r\nHost: x\r\n\r\n", True),
        # Not a field: a header value that mentions one.
        (b"GET / HTTP/1.1\r\nX-Note: content-length: 3\r\n\r\n", True),
        # No whole request line yet.
        (b"GET / HTTP/1.1", False),
        (b"", False),
    ],
)
def test_reusable_after_an_answer_of_the_loops(head: bytes, reuse: bool) -> None:
    assert reusable(head) is reuse


def test_the_app_tells_the_servers_its_probe_paths_and_metrics() -> None:
    from fiboserver.app import create_app
    from fiboserver.config import Config
    from fiboserver.serving import Serving, serving_of

    serving = serving_of(create_app(Config(env="PROD", maxseq=10, metrics_port=0)))
    assert serving.probe_paths == {"/prod/healthz", "/prod/readyz"}
    assert serving.requests is None and serving.metrics_port == 0
    # Any other WSGI app (the benchmark's ceiling): no probe lane, no metrics.
    assert serving_of(object()) == Serving()
