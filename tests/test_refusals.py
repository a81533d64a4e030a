"""fiboserver.worker.refusals and fiboserver.echo: the answers the server writes without the app,
and how much of the client's input they and their log record quote."""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import threading
import time
from http import HTTPStatus

import pytest
from gunicorn.http import errors as http_errors

from fiboserver.app.routes import parse_n
from fiboserver.echo import bounded, quoted
from fiboserver.worker import refusals
from fiboserver.worker.admission import Pacer
from fiboserver.worker.connections import Conn, Connections
from tests.support.logcapture import JsonCapture
from tests.support.logpipeline import FIELD_TYPES, json_type

# README "HTTP API": an answer or a record quotes at most 40 characters of client input.
ECHO_LIMIT = 40


@pytest.fixture(autouse=True)
def fresh_templates() -> None:
    """Each test builds its answers afresh: `make mutate` forks each mutant's run
    from a process whose earlier tests filled the template cache, and a mutant of
    the builder would otherwise never run."""
    refusals._template.cache_clear()


class RecordingSink:
    """Where the worker counts what it answered (the request metrics, in a server)."""

    def __init__(self) -> None:
        self.observed: list[tuple[str, str, int, float]] = []

    def observe(self, method: str, path: str, status: int, seconds: float) -> None:
        self.observed.append((method, path, status, seconds))


def _socketpair() -> tuple[socket.socket, socket.socket]:
    """(server, client). The client's reads time out: an answer never written fails
    the test instead of hanging it (a mutant's run has no wall-clock limit)."""
    server, client = socket.socketpair()
    client.settimeout(5)
    return server, client


def _split(data: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    status, *fields = head.decode("latin-1").split("\r\n")
    headers = dict(f.split(": ", 1) for f in fields)
    return status, headers, body


def test_response_is_json_with_request_id_and_closes() -> None:
    data = refusals.response(refusals.overloaded(3), "rid-1")
    status, headers, body = _split(data)
    assert status == "HTTP/1.1 503 Service Unavailable"
    assert json.loads(body) == {"error": "overloaded"}
    assert headers == {
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        "X-Request-ID": "rid-1",
        "Retry-After": "1",
        "Connection": "close",
    }


def test_response_to_head_has_no_body() -> None:
    refusal = refusals.Refusal(HTTPStatus.BAD_REQUEST, "x", "x")
    data = refusals.response(refusal, "rid", with_body=False)
    _, headers, body = _split(data)
    assert body == b"" and int(headers["Content-Length"]) > 0
    assert "Retry-After" not in headers


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (http_errors.LimitRequestLine(9000, 4094), HTTPStatus.REQUEST_URI_TOO_LONG),
        (http_errors.LimitRequestHeaders("x"), HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE),
        (http_errors.InvalidRequestLine("GARBAGE"), HTTPStatus.BAD_REQUEST),
        (http_errors.InvalidRequestMethod("g"), HTTPStatus.BAD_REQUEST),
        (http_errors.InvalidHTTPVersion("HTTP/9"), HTTPStatus.BAD_REQUEST),
        (http_errors.InvalidHeader("x"), HTTPStatus.BAD_REQUEST),
        (http_errors.UnsupportedTransferCoding("x"), HTTPStatus.NOT_IMPLEMENTED),
    ],
)
def test_parse_errors_map_to_their_status(exc: Exception, status: HTTPStatus) -> None:
    answer = refusals.parse_error(exc)
    assert answer is not None and answer.status is status
    # The record quotes what gunicorn's parser said, after the client's message.
    assert answer.errmsg.startswith(f"{answer.error}: ") and str(exc)[:30] in answer.errmsg


def test_a_parse_errors_record_quotes_the_parser() -> None:
    answer = refusals.parse_error(http_errors.LimitRequestLine(9000, 4094))
    assert answer is not None
    assert answer.errmsg == "request line too long: 'Request Line is too large (9000 > 4094)'"


def test_other_exceptions_are_server_faults() -> None:
    assert refusals.parse_error(RuntimeError("boom")) is None


def test_refuse_writes_the_answer_and_one_bounded_record(fibo_logs: JsonCapture) -> None:
    server, client = _socketpair()
    with server, client:
        head = b"GET /prod/fibo?n=" + b"1" * 9000 + b" HTTP/1.1\r\nX-Request-ID: rid-414\r\n"
        refusals.refuse(
            server,
            refusals.Refusal(HTTPStatus.REQUEST_URI_TOO_LONG, "request line too long", "too long"),
            refusals.Refused.of(head, "127.0.0.1:1234", time.monotonic()),
            None,
        )
        status, headers, body = _split(client.recv(4096))
    assert status.startswith("HTTP/1.1 414 ")
    assert headers["X-Request-ID"] == "rid-414"
    assert json.loads(body) == {"error": "request line too long"}
    (record,) = fibo_logs.find("request refused")
    assert record["level"] == "WARNING"
    assert record["status"] == 414 and record["request_id"] == "rid-414"
    assert record["path"] == "/prod/fibo" and record["method"] == "GET"
    assert isinstance(record["duration_ms"], float) and record["client"] == "127.0.0.1:1234"


def test_a_refused_head_request_gets_no_body_and_a_timed_record(
    fibo_logs: JsonCapture,
) -> None:
    # Begun a hundred thousand seconds ago (as time.monotonic() counts): a factor
    # off by 0.1 % would put the duration 100 s off.
    started = time.monotonic() - 100_000
    server, client = _socketpair()
    with server, client:
        head = b"HEAD /prod/fibo?n=1?n=2 HTTP/1.1\r\nHost: x\r\n"
        refusals.refuse(
            server,
            refusals.Refusal(HTTPStatus.BAD_REQUEST, "malformed request", "malformed request"),
            refusals.Refused.of(head, "127.0.0.1:1", started),
            None,
        )
        server.close()
        status, headers, body = _split(client.recv(4096))
        assert client.recv(4096) == b""  # nothing after the head
    assert status.startswith("HTTP/1.1 400 ")
    assert body == b"" and int(headers["Content-Length"]) == len(b'{"error": "malformed request"}')
    (record,) = fibo_logs.find("request refused")
    assert (record["method"], record["path"]) == ("HEAD", "/prod/fibo")  # up to the first ?
    assert 100_000_000 <= record["duration_ms"] < 100_000_000 + 5_000
    assert record["duration_ms"] == round(record["duration_ms"], 3)  # to the microsecond


def test_refuse_never_blocks_on_a_client_that_does_not_read(fibo_logs: JsonCapture) -> None:
    """The loop writes refusals itself: a client whose receive buffer is full
    must not stop it. The answer is dropped; the record stays."""
    server, client = _socketpair()
    with server, client:
        server.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                server.send(b"x" * 65536)
        server.setblocking(True)  # as the worker's connections are, for its threads
        request = refusals.Refused.of(b"GET / HTTP/1.1\r\n", "127.0.0.1:1", time.monotonic())
        done = threading.Event()

        def write() -> None:
            refusals.refuse(server, refusals.overloaded(1), request, None)
            done.set()

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        finished = done.wait(5)
        server.shutdown(socket.SHUT_RDWR)  # frees a writer that did block
        writer.join(5)
    assert finished, "refuse() blocked on a full socket"


def test_refuse_bounds_the_path_it_logs(fibo_logs: JsonCapture) -> None:
    server, client = _socketpair()
    with server, client:
        head = b"X" * 100 + b" /" + b"p" * 5000 + b" HTTP/1.1\r\nX-Request-ID: not a valid id!\r\n"
        refusals.refuse(
            server,
            refusals.Refusal(HTTPStatus.BAD_REQUEST, "malformed request", "malformed request"),
            refusals.Refused.of(head, "127.0.0.1:1", time.monotonic()),
            None,
        )
        _, headers, _ = _split(client.recv(4096))
    (record,) = fibo_logs.find("request refused")
    assert record["path"] == "/" + "p" * (ECHO_LIMIT - 1) + "..."
    assert record["method"] == "X" * ECHO_LIMIT + "..."
    assert record["request_id"] == headers["X-Request-ID"] != "not a valid id!"


def test_echo_keeps_at_most_the_limit() -> None:
    assert bounded("a" * ECHO_LIMIT) == "a" * ECHO_LIMIT
    assert bounded("a" * (ECHO_LIMIT + 1)) == "a" * ECHO_LIMIT + "..."
    assert quoted("1x") == "'1x'"
    assert quoted("\x00" * 100) == repr("\x00" * ECHO_LIMIT + "...")


@pytest.mark.parametrize("raw", ["1" * 4000, "x" * 4000, "-" + "1" * 4000, "1" * 21])
def test_parse_n_quotes_at_most_40_characters(raw: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_n(raw, 100000)
    message = str(refused.value)
    echoed = message.split(", got ", 1)[1].strip("'").removesuffix("...")
    assert raw.startswith(echoed) and len(echoed) <= ECHO_LIMIT, message


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (http_errors.InvalidRequestLine("G" * 5000), 400),
        (RuntimeError("boom " * 1000), 500),
    ],
)
def test_refuse_error_answers_what_the_thread_raised(
    fibo_logs: JsonCapture, exc: Exception, status: int
) -> None:
    sink = RecordingSink()
    observed = sink.observed
    server, client = _socketpair()
    with server, client:
        # No connection known (nothing read of the request): the peer alone.
        refusals.refuse_error(server, exc, None, "127.0.0.1:9", sink)
        got, headers, body = _split(client.recv(4096))
    assert got.split()[1] == str(status) and json.loads(body)["error"]
    (record,) = fibo_logs.find("request refused")
    assert record["status"] == status and record["request_id"] == headers["X-Request-ID"]
    assert (record["client"], record["method"], record["path"]) == ("127.0.0.1:9", "", "")
    # The exception's text, quoted and bounded, after the answer's message.
    assert record["errmsg"].startswith(f"{json.loads(body)['error']}: ")
    assert str(exc)[:20] in record["errmsg"] and len(record["errmsg"]) < 100
    assert [(m, p, s) for m, p, s, _ in observed] == [("", "", status)]
    # The histogram gets the record's duration, in seconds.
    assert observed[0][3] * 1000 == pytest.approx(record["duration_ms"], rel=1e-9)


def test_an_overloads_refusals_are_answered_each_and_logged_together(
    fibo_logs: JsonCapture,
) -> None:
    """A batch of overload 503s: every client gets its own answer and id, the log
    one `requests refused` record with their count (its keys typed as the index
    template says); a refusal of another kind in the batch keeps its own record."""
    sink = RecordingSink()
    with selectors.DefaultSelector() as poller:
        conns = Connections(poller)
        pending = refusals.PendingRefusals(conns, Pacer(time.monotonic()), sink)
        clients = []
        began = time.monotonic()  # before any of them arrived
        for i in range(6):
            server, client = _socketpair()
            clients.append(client)
            conn = Conn(None, server, ("127.0.0.1", i), ("127.0.0.1", 8080), 0.0)
            conns.accepted(conn)
            conn.head = f"GET /prod/fibo?n={i} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            if i == 5:
                timeout = HTTPStatus.REQUEST_TIMEOUT
                pending.add(conn, refusals.Refusal(timeout, "request head timeout", "head"))
            else:
                pending.add(conn, refusals.overloaded(i))
        pending.write(time.monotonic(), keepalive=5.0)
        waited_at_most_ms = (time.monotonic() - began) * 1000
        answers = [_split(c.recv(4096)) for c in clients]
        for c in clients:
            c.close()
        conns.close_all()
    ids = {headers["X-Request-ID"] for _, headers, _ in answers}
    assert len(ids) == 6
    for status, headers, body in answers[:5]:
        assert status.startswith("HTTP/1.1 503 ") and headers["Retry-After"] == "1"
        assert "Connection" not in headers  # kept alive: a retry needs no new connection
        assert json.loads(body) == {"error": "overloaded"}
    # Not an overload: closed, whatever the request allowed.
    assert answers[5][0].startswith("HTTP/1.1 408 ") and answers[5][1]["Connection"] == "close"
    (summary,) = fibo_logs.find("requests refused")
    assert summary["level"] == "WARNING" and summary["status"] == 503 and summary["count"] == 5
    assert summary["errmsg"] == "overloaded: 4 requests waiting"
    assert 0 <= summary["duration_ms"] <= waited_at_most_ms  # the longest wait, no more
    for key, value in summary.items():
        if key not in ("ts", "level", "logger", "msg"):
            assert json_type(value) == FIELD_TYPES[key], key
    (single,) = fibo_logs.find("request refused")
    assert single["status"] == 408 and single["request_id"] == answers[5][1]["X-Request-ID"]
    # Each answer counted, logged together or not.
    statuses = [(m, p, status) for m, p, status, _ in sink.observed]
    assert statuses == [("GET", "/prod/fibo", 503)] * 5 + [("GET", "/prod/fibo", 408)]


def test_a_stopping_worker_closes_every_refused_connection_and_skips_the_gone() -> None:
    """keepalive None (the drain): even a 503 closes its connection. A client that
    left while waiting is skipped; those after it in the batch are still answered."""
    with selectors.DefaultSelector() as poller:
        conns = Connections(poller)
        pending = refusals.PendingRefusals(conns, Pacer(time.monotonic()), None)
        pairs = [_socketpair() for _ in range(3)]
        for i, (server, _) in enumerate(pairs):
            conn = Conn(None, server, ("127.0.0.1", i), ("127.0.0.1", 8080), 0.0)
            conns.accepted(conn)
            conn.head = b"GET /prod/fibo?n=1 HTTP/1.1\r\nHost: x\r\n\r\n"
            pending.add(conn, refusals.overloaded(i))
            if i == 1:
                conns.close(conn)  # its client left
        pending.write(time.monotonic(), keepalive=None)
        answered = []
        for i in (0, 2):
            client = pairs[i][1]
            answered.append(_split(client.recv(4096)))
            assert client.recv(1) == b"", "a stopping worker keeps no connection"
        for _, client in pairs:
            client.close()
        conns.close_all()
    for status, headers, _ in answered:
        assert status.startswith("HTTP/1.1 503 ") and headers["Connection"] == "close"


def test_pending_refusals_wait_for_the_pacer_only_when_there_are_some() -> None:
    """What the loop's poll timeout takes from the refusals: forever while none is
    pending, the pacer's wait while some are."""
    with selectors.DefaultSelector() as poller:
        conns = Connections(poller)
        pacer = Pacer(0.0, share=0.05, burst=0.01)
        pending = refusals.PendingRefusals(conns, pacer, None)
        pacer.spend(0.015)  # 5 ms over: 0.1 s at 5 % of each second
        assert pending.wait(0.0) == float("inf")
        server, client = _socketpair()
        with server, client:
            conn = Conn(None, server, ("127.0.0.1", 1), ("127.0.0.1", 8080), 0.0)
            conns.accepted(conn)
            pending.add(conn, refusals.overloaded(1))
            assert pending.wait(0.0) == pytest.approx(0.1, abs=1e-3)
            conns.close_all()
