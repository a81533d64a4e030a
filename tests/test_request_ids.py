"""Request ids under concurrency: 32 clients at once against one real gthread worker.

README "Logs": every record written while a request is served carries its
`request_id`, the one its response's `X-Request-ID` shows. The worker serves
several requests at once on its threads, so a request id kept anywhere but in
the request's own context (a global, a thread-local left set by the previous
request, a log record built late) would show up on another request's records.
Each client sends its own ids; the DEV config logs the cache records too.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from tests.support.serverlog import Record
from tests.support.serverproc import ServerProcess

CLIENTS = 32
# Records that belong to a request (README "Logs"), and what each kind of request writes.
REQUEST_MSGS = {"start", "cache hit", "cache miss", "cache fibo", "fibo calculate failed", "end"}
MISS = ["start", "cache miss", "cache fibo", "end"]
HIT = ["start", "cache hit", "end"]
BAD = ["start", "fibo calculate failed", "end"]
SHARED_N = 77  # asked by every client: one of them computes it, or a few at once


@dataclass
class Sent:
    request_id: str | None  # None: no header, the server makes one up
    query: str
    n: int | None  # None: a bad n
    status: int = 0
    echoed: str = ""


def plan(client: int) -> list[Sent]:
    """What one client asks: its own uncached n, the shared n, a bad n, and one
    request without an id of its own."""
    own = 1000 + client  # no other client asks it: a miss, then a hit
    return [
        Sent(f"client-{client:02d}.req-0", f"n={own}", own),
        Sent(f"client-{client:02d}.req-1", f"n={SHARED_N}", SHARED_N),
        Sent(f"client-{client:02d}.req-2", "n=30x", None),
        Sent(f"client-{client:02d}.req-3", f"n={own}", own),
        Sent(None, f"n={own + 100}", own + 100),
    ]


def served(srv: ServerProcess, plans: list[list[Sent]]) -> list[Record]:
    """Each plan sent by its own client on one keep-alive connection, all at once;
    the server's records once every request has logged its `end`."""
    barrier = threading.Barrier(len(plans))
    failures: list[BaseException] = []

    def client(sent: list[Sent]) -> None:
        try:
            conn = srv.connection(timeout=60)
            barrier.wait(timeout=30)
            for s in sent:
                headers = {} if s.request_id is None else {"X-Request-ID": s.request_id}
                conn.request("GET", f"/dev/fibo?{s.query}", headers=headers)
                resp = conn.getresponse()
                resp.read()
                s.status, s.echoed = resp.status, resp.headers["X-Request-ID"]
            conn.close()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=client, args=(p,)) for p in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failures, failures[:3]
    # `end` is written once a response is sent, maybe after the client read it.
    deadline = time.monotonic() + 15
    while len(srv.find("end")) < sum(map(len, plans)):
        assert time.monotonic() < deadline, "not every request logged its `end`"
        time.sleep(0.05)
    return srv.find()


def assert_own_records(s: Sent, mine: list[Record]) -> bool:
    """What one request logged; whether it missed the cache, for the shared n."""
    msgs = [r["msg"] for r in mine]
    if s.n is None:
        assert msgs == BAD, (s, msgs)
        assert "30x" in mine[1]["errmsg"], mine[1]
    elif s.n == SHARED_N:
        assert msgs in (HIT, MISS), (s, msgs)
    elif s.request_id is not None and s.request_id.endswith("req-3"):
        assert msgs == HIT, (s, msgs)  # its own n, stored by its req-0
    else:
        assert msgs == MISS, (s, msgs)
    # The cache records are about this request's n, not a neighbour's.
    assert all(r["key"] == s.n for r in mine if r["msg"].startswith("cache")), mine
    start, end = mine[0], mine[-1]
    assert start["path"] == end["path"] == "/dev/fibo", mine
    assert end["status"] == s.status and start["client"] == end["client"], mine
    return msgs == MISS


def in_flight_together(records: list[Record]) -> bool:
    """Whether a request started while another one was still open."""
    open_now = 0
    for r in records:
        if r.get("msg") == "start":
            open_now += 1
            if open_now > 1:
                return True
        elif r.get("msg") == "end":
            open_now -= 1
    return False


def test_every_record_carries_the_id_of_its_own_request(tmp_path: Path) -> None:
    with ServerProcess(
        {"env": "DEV", "maxseq": 100000}, tmp_path, env={"WEB_CONCURRENCY": "1"}
    ) as srv:
        srv.wait_for("worker booted", timeout=30)
        plans = [plan(c) for c in range(CLIENTS)]
        records = served(srv, plans)
    sent = [s for p in plans for s in p]
    ids = {s.echoed for s in sent}

    # Every response carries the id it was sent, or a fresh UUID4 when none was.
    for s in sent:
        assert s.status == (200 if s.n is not None else 400), s
        if s.request_id is not None:
            assert s.echoed == s.request_id, s
    assert len(ids) == len(sent), "two requests got the same id"

    by_id: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        if r.get("msg") in REQUEST_MSGS:
            assert r.get("request_id") in ids, f"a record of no request sent: {r}"
            by_id[r["request_id"]].append(r)
    assert set(by_id) == ids
    shared_misses = 0
    for s in sent:
        missed = assert_own_records(s, by_id[s.echoed])
        shared_misses += s.n == SHARED_N and missed
    assert 1 <= shared_misses < CLIENTS, "the shared n was never served from the cache"
    # The worker really served requests side by side.
    assert in_flight_together(records), "no two requests were ever in flight together"
