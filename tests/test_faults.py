"""Fault injection (README "Fault injection") in one process: the draw, the `fibo`
view with faults in front of it, the `end` record's `fault`, and the metric the
availability alert reads. The real server: test_faults_served.py."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from fiboserver.app import create_app, faults
from fiboserver.app.faults import Fault, FaultPlan, Outcome, draw
from fiboserver.config import parse_config
from tests.support.logcapture import JsonCapture
from tests.support.metrictools import DURATION, Recorded, app_with


def draws(*values: float) -> Callable[[], float]:
    """A uniform source that returns `values` in order, and fails past them."""
    it: Iterator[float] = iter(values)
    return lambda: next(it)


def never() -> float:
    raise AssertionError("no random value may be drawn")


# buffered=True below: the test client then closes the response, which writes `end`.


def make_app(**config: Any) -> Flask:
    return create_app(parse_config({"env": "DEV", "maxseq": 1000, **config}, "t.yaml"))


# -- the draw ------------------------------------------------------------------------


def test_off_draws_nothing() -> None:
    assert draw(FaultPlan(), never) == Outcome(0.0, None)
    assert not FaultPlan().active


def test_delay_only_scales_one_draw() -> None:
    assert draw(FaultPlan(max_delay=2.0), draws(0.25)) == Outcome(0.5, Fault.DELAY)
    assert draw(FaultPlan(max_delay=2.0), draws(0.0)) == Outcome(0.0, Fault.DELAY)


@pytest.mark.parametrize(
    ("value", "fault"),
    [(0.0, Fault.ERROR), (0.1999, Fault.ERROR), (0.2, None), (0.9, None)],
)
def test_error_only_fails_below_the_ratio(value: float, fault: Fault | None) -> None:
    assert draw(FaultPlan(error_ratio=0.2), draws(value)) == Outcome(0.0, fault)


def test_a_ratio_of_one_fails_even_the_largest_draw() -> None:
    largest = 1.0 - 2**-53  # random.random() never returns 1.0
    assert draw(FaultPlan(error_ratio=1.0), draws(largest)).fault is Fault.ERROR


def test_both_delay_first_then_the_error_decides_the_fault() -> None:
    plan = FaultPlan(max_delay=1.0, error_ratio=0.5)
    assert draw(plan, draws(0.5, 0.1)) == Outcome(0.5, Fault.ERROR)
    assert draw(plan, draws(0.5, 0.6)) == Outcome(0.5, Fault.DELAY)


def test_seeded_draws_have_the_configured_shares() -> None:
    plan = FaultPlan(max_delay=2.0, error_ratio=0.2)
    source = random.Random(7).random
    outcomes = [draw(plan, source) for _ in range(20000)]
    errors = sum(o.fault is Fault.ERROR for o in outcomes) / len(outcomes)
    delays = [o.delay for o in outcomes]
    assert 0.19 < errors < 0.21
    assert 0 <= min(delays) < 0.01 and 1.99 < max(delays) < 2.0
    assert 0.98 < sum(delays) / len(delays) < 1.02
    # Uniform: each fifth of 0..2 s holds a fifth of the delays.
    fifths = [sum(1 for d in delays if k * 0.4 <= d < (k + 1) * 0.4) for k in range(5)]
    assert all(3800 < f < 4200 for f in fifths), fifths


def test_forked_workers_draw_different_sequences() -> None:
    """The production source is re-seeded in each worker gunicorn forks from the
    master; a Random the master built would give every worker the same faults."""
    plan = FaultPlan(max_delay=1.0, error_ratio=0.5)
    draw(plan, faults.SHARED_UNIFORM)  # the master has drawn before the fork
    seen = []
    for _ in range(2):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            values = [draw(plan, faults.SHARED_UNIFORM).delay for _ in range(5)]
            os.write(write_end, json.dumps(values).encode())
            os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end) as pipe:
            seen.append(json.loads(pipe.read()))
        assert os.waitpid(pid, 0)[1] == 0
    assert seen[0] != seen[1]


# -- the app -------------------------------------------------------------------------


def test_off_leaves_the_view_unwrapped(fibo_logs: JsonCapture) -> None:
    """Nothing of fault injection runs per request when both keys are 0."""
    from fiboserver.app.routes import fibo

    app = make_app(fault_delay_ms=0, fault_error_ratio=0)
    assert app.view_functions["fibo.fibo"] is fibo
    faults.install(app, FaultPlan(), never)
    assert app.view_functions["fibo.fibo"] is fibo
    resp = app.test_client().get("/dev/fibo?n=10", buffered=True)
    assert (resp.status_code, resp.get_json()) == (200, {"result": 55})
    (end,) = fibo_logs.find("end")
    assert "fault" not in end


def test_a_ratio_of_one_answers_every_fibo_with_the_injected_error(
    fibo_logs: JsonCapture,
) -> None:
    client = make_app(fault_error_ratio=1).test_client()
    for path in ("/dev/fibo?n=10", "/dev/fibo?n=x", "/dev/fibo"):
        resp = client.get(path, buffered=True)
        assert (resp.status_code, resp.get_json()) == (500, {"error": "injected fault"}), path
        assert resp.mimetype == "application/json" and resp.headers["X-Request-ID"]
    # HEAD is GET without the body: the same answer.
    assert client.head("/dev/fibo?n=10", buffered=True).status_code == 500
    ends = fibo_logs.find("end")
    assert [(e["status"], e["fault"]) for e in ends] == [(500, "error")] * 4
    # An injected error is no bug: no traceback, no `unhandled exception`.
    assert fibo_logs.find("unhandled exception") == []


def test_probes_and_other_answers_never_see_a_fault(fibo_logs: JsonCapture) -> None:
    client = make_app(fault_error_ratio=1, fault_delay_ms=10000).test_client()
    assert client.get("/dev/healthz", buffered=True).get_json() == {"status": "ok"}
    assert client.get("/dev/readyz", buffered=True).get_json() == {"status": "ready"}
    assert client.post("/dev/fibo?n=10", buffered=True).status_code == 405
    assert client.get("/dev/nope", buffered=True).status_code == 404
    ends = fibo_logs.find("end")
    assert [e["status"] for e in ends] == [200, 200, 405, 404]
    assert [e for e in ends if "fault" in e] == []


def test_a_delayed_answer_is_the_result_and_says_delay(fibo_logs: JsonCapture) -> None:
    app = make_app()
    faults.install(app, FaultPlan(max_delay=0.05), draws(0.99))
    resp = app.test_client().get("/dev/fibo?n=10", buffered=True)
    assert (resp.status_code, resp.get_json()) == (200, {"result": 55})
    (end,) = fibo_logs.find("end")
    assert end["fault"] == "delay" and end["duration_ms"] >= 49.5


def test_a_delayed_error_takes_the_delay_and_says_error(fibo_logs: JsonCapture) -> None:
    app = make_app()
    faults.install(app, FaultPlan(max_delay=0.05, error_ratio=0.5), draws(0.6, 0.4))
    resp = app.test_client().get("/dev/fibo?n=10", buffered=True)
    assert (resp.status_code, resp.get_json()) == (500, {"error": "injected fault"})
    (end,) = fibo_logs.find("end")
    assert end["fault"] == "error" and end["duration_ms"] >= 30


def test_an_injected_error_is_a_5xx_of_the_fibo_route(recorded: Recorded) -> None:
    """What the availability SLO counts (k8s/monitoring)."""
    client = app_with(recorded, fault_error_ratio=1).test_client()
    client.get("/dev/fibo?n=10", buffered=True)
    client.get("/dev/healthz", buffered=True)
    fibo_500 = {"http_request_method": "GET", "http_route": "/dev/fibo",
                "http_response_status_code": "500"}  # fmt: skip
    probe_200 = {"http_request_method": "GET", "http_route": "/dev/healthz",
                 "http_response_status_code": "200"}  # fmt: skip
    assert recorded.value(f"{DURATION}_count", **fibo_500) == 1
    assert recorded.value(f"{DURATION}_count", **probe_200) == 1
