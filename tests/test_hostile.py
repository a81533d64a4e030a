"""Hostile clients (README "The API" and "Graceful start and stop"; docs/worker.md):
idle and slow connections hold no thread, what the HTTP layer refuses is
answered in the API's shape with a log record, and a worker out of file
descriptors waits for one rather than spinning.

Real gunicorn, real sockets, 127.0.0.1 only. The attack (tests/support/attackers.py)
is judged by behaviour only, with bounds far from a busy machine's noise; how fast
(readyz p99, the share of throughput kept) is `make bench`'s section "hostile"
(bench/overload.py, docs/performance.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.attackers import IDLE, SLOWLORIS, run_attacks
from tests.support.clients import exchange, next_json_answer, parse_response
from tests.support.hosttools import require_tool
from tests.support.procinfo import HOST, cpu_seconds, wait_until
from tests.support.serverproc import ServerProcess
from tests.support.testlog import say

# README "HTTP API": at most 40 characters of client input are quoted.
ECHO_LIMIT = 40
# docs/worker.md: a connection's whole head must arrive within 10 s.
HEAD_TIMEOUT = 10.0
# The kubelet gives a probe 1 s (k8s/base/deployment.yaml, timeoutSeconds: 1):
# slower is a failed probe, whatever the machine.
PROBE_TIMEOUT = 1.0
PROBES = 20


@pytest.fixture(scope="module")
def prod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One PROD server as a pod runs it: one worker, four threads."""
    tmp = tmp_path_factory.mktemp("hostile")
    with ServerProcess({"env": "PROD", "maxseq": 100000}, tmp, env={"WEB_CONCURRENCY": "1"}) as srv:
        srv.wait_for("worker booted", timeout=30)
        yield srv


def _pad_fields(count: int, size: int) -> bytes:
    return b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * size) for i in range(count))


HTTP_LAYER_ERRORS = {
    "malformed request line": (b"GARBAGE\r\nX-Request-ID: bad-line\r\n\r\n", 400, "bad-line"),
    "invalid header name": (
        b"GET /prod/readyz HTTP/1.1\r\nHost: t\r\nX-Request-ID: bad-field\r\nBad Name: x\r\n\r\n",
        400,
        "bad-field",
    ),
    # Refused as soon as the line is longer than gunicorn's limit (4094): the
    # X-Request-ID after it is never read, so the answer carries a new id.
    "9,000-character URI": (
        b"GET /prod/fibo?n=" + b"1" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n",
        414,
        None,
    ),
    "100 KB of header fields": (
        b"GET /prod/readyz HTTP/1.1\r\nHost: t\r\nX-Request-ID: big-head\r\n"
        + _pad_fields(100, 1000)
        + b"\r\n",
        431,
        "big-head",
    ),
    "one 100 KB header field": (
        b"GET /prod/readyz HTTP/1.1\r\nX-Request-ID: big-field\r\nX-Pad: "
        + b"a" * 100_000
        + b"\r\n\r\n",
        431,
        "big-field",
    ),
}


@pytest.mark.parametrize("case", HTTP_LAYER_ERRORS)
def test_http_layer_errors_are_json_with_request_id_and_a_record(
    prod: ServerProcess, case: str
) -> None:
    data, status, incoming_id = HTTP_LAYER_ERRORS[case]
    mark = len(prod.records)
    raw, _ = exchange(prod.port, data)
    got, headers, body = parse_response(raw)
    assert got == status, raw[:300]
    assert headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert isinstance(error, str) and error and len(error) < 60
    request_id = headers["x-request-id"]
    assert request_id == incoming_id if incoming_id else len(request_id) == 36
    record = prod.wait_for(
        "request refused", start=mark, where=lambda r: r.get("request_id") == request_id
    )
    assert record["level"] == "WARNING" and record["status"] == status
    # What the client sent is quoted at most ECHO_LIMIT characters long.
    assert len(record["path"]) <= ECHO_LIMIT + 3 and len(record["errmsg"]) < 120
    assert prod.bad_lines == []


@pytest.mark.parametrize("digits", ["1" * 4000, "9" + "x" * 3999])
def test_a_4000_character_n_is_quoted_at_most_40_characters(
    prod: ServerProcess, digits: str
) -> None:
    path = f"/prod/fibo?n={digits}"
    assert len(f"GET {path} HTTP/1.1") < 4094  # inside the request line: the app sees it
    mark = len(prod.records)
    status, _headers, body = prod.get(path, headers={"X-Request-ID": "long-n"})
    assert status == 400
    message = json.loads(body)["error"]
    echoed = message.split(", got ", 1)[1].strip("'").removesuffix("...")
    assert digits.startswith(echoed) and len(echoed) <= ECHO_LIMIT, message
    record = prod.wait_for(
        "fibo calculate failed", start=mark, where=lambda r: r.get("request_id") == "long-n"
    )
    assert record["errmsg"] == message
    end = prod.wait_for("end", start=mark, where=lambda r: r.get("request_id") == "long-n")
    assert end["status"] == 400


# Heads gunicorn's parser judges at once; the loop hands them over at once too.
AT_ONCE = {
    "a bare LF": (b"GET /prod/readyz HTTP/1.1\nHost: t\n", 400),
    "an empty line, then a line over the limit": (b"\r\nGET /prod/fibo?n=" + b"1" * 5000, 414),
    "an empty line, then a request": (b"\r\nGET /prod/fibo?n=10 HTTP/1.1\r\nHost: t\r\n\r\n", 200),
}


@pytest.mark.parametrize("case", AT_ONCE)
def test_a_head_the_parser_can_judge_is_not_left_to_the_head_timeout(
    prod: ServerProcess, case: str
) -> None:
    data, status = AT_ONCE[case]
    with socket.create_connection((HOST, prod.port), timeout=HEAD_TIMEOUT / 2) as sock:
        sock.sendall(data)  # and no more: the connection stays open
        assert next_json_answer(sock)[0] == status


def test_a_pipelined_head_that_arrives_in_two_parts_is_served(prod: ServerProcess) -> None:
    """The next request's head, sent partly with the first request and finished
    later, has the whole head timeout from when the first answer was sent."""
    first = b"GET /prod/fibo?n=10 HTTP/1.1\r\nHost: t\r\n\r\n"
    with socket.create_connection((HOST, prod.port), timeout=10) as sock:
        sock.sendall(first + b"GET /prod/fibo?n=11 HTTP/1.1\r\nHost: t\r\n")
        assert next_json_answer(sock) == (200, {"result": 55})
        time.sleep(0.5)  # well within the head timeout
        sock.sendall(b"\r\n")
        assert next_json_answer(sock) == (200, {"result": 89})


def test_idle_and_slowloris_connections_hold_no_thread(tmp_path: Path) -> None:
    require_tool("wrk")
    run = run_attacks(tmp_path / "server.log", 1, PROBES, HEAD_TIMEOUT, baseline=False)
    refused = [r for r in run.records if r["msg"] == "request refused" and r["status"] == 408]
    say(
        "hostile",
        f"slowest readyz {max(s for _, s in run.probes) * 1000:.0f} ms with {IDLE} idle + "
        f"{SLOWLORIS} slowloris; wrk {[r['requests'] for r in run.attacked]} answers; "
        f"closed after {min(run.closes):.2f}..{max(run.closes):.2f} s",
    )
    # The kubelet's readiness probe is answered in time, every one.
    assert len(run.probes) == PROBES
    assert all(status == 200 and s < PROBE_TIMEOUT for status, s in run.probes), run.probes
    # Requests are served while the attackers hold their sockets: every one a 200,
    # none reset or timed out.
    for r in run.attacked:
        assert r["requests"] > 0 and r["err_status"] == 0, r
        assert sum(r[k] for k in ("err_connect", "err_read", "err_write", "err_timeout")) == 0
    # Closed after the documented head timeout, not before it and not much after.
    for seconds in run.closes:
        assert HEAD_TIMEOUT - 0.5 <= seconds <= HEAD_TIMEOUT + 3, run.closes
    # An idle client is closed silently; a slowloris one that sent part of a head
    # is told why, in JSON.
    assert run.answers[:IDLE] == [b""] * IDLE
    for raw in run.answers[IDLE:]:
        status, headers, body = parse_response(raw)
        assert status == 408 and json.loads(body) == {"error": "request head timeout"}
        assert headers["x-request-id"]
    assert len(refused) == SLOWLORIS
    assert {r["errmsg"] for r in refused} == {"head timeout"}, refused[:2]


# Connections that fill the worker's descriptors, each with part of a head: none
# is idle, so none may be closed to make room.
HELD = 3
# A worker that waits uses next to no CPU; one that spins on the readable
# listener uses all it is given. Counted in CPU time, which a busy machine does
# not inflate.
WAITING_CPU = 0.25


def test_a_worker_out_of_descriptors_waits_for_one_instead_of_spinning(tmp_path: Path) -> None:
    head = b"GET /prod/fibo?n=10 HTTP/1.1\r\nHost: t\r\n"
    with ServerProcess(
        {"env": "PROD", "maxseq": 100}, tmp_path, env={"WEB_CONCURRENCY": "1"}
    ) as srv:
        srv.wait_for("worker booted", timeout=30)
        (worker,) = srv.worker_pids()

        def open_fds() -> int:
            return len(os.listdir(f"/proc/{worker}/fd"))

        idle_fds = open_fds()
        assert srv.get("/prod/fibo?n=10")[0] == 200  # the worker's metric files are open
        wait_until(lambda: open_fds() == idle_fds, 5, "that connection closed")
        hard = resource.prlimit(worker, resource.RLIMIT_NOFILE)[1]
        resource.prlimit(worker, resource.RLIMIT_NOFILE, (idle_fds + HELD, hard))
        with contextlib.ExitStack() as stack:
            held = [
                stack.enter_context(socket.create_connection((HOST, srv.port), timeout=5))
                for _ in range(HELD)
            ]
            for sock in held:
                sock.sendall(head)
            wait_until(lambda: open_fds() == idle_fds + HELD, 5, "the held connections accepted")
            late = stack.enter_context(socket.create_connection((HOST, srv.port), timeout=5))
            late.sendall(head + b"\r\n")  # queued: the worker has no descriptor for it
            before = cpu_seconds(worker)
            time.sleep(1.0)
            used = cpu_seconds(worker) - before
            assert used < WAITING_CPU, f"{used:.2f} s of CPU in 1 s out of descriptors"
            # One held request completes; kept alive, it is idle and gives up its
            # descriptor to the queued connection, which is served.
            held[0].sendall(b"\r\n")
            assert next_json_answer(held[0]) == (200, {"result": 55})
            assert next_json_answer(late) == (200, {"result": 55})
