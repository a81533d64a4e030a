"""Fault injection on `fibo` (README "Fault injection"): a random extra delay and
injected 500s, so the latency histogram and the alerts can be seen working.

Off unless the config sets `fault_delay_ms` or `fault_error_ratio`: then
`install` leaves the app as it is, and no code of this module runs per request.
On, it wraps the `fibo` view alone, so the probes (their own routes and the
worker's probe lane) and /metrics (served by the master) never see a fault.

Order when both apply: the delay first, then the error. A real failure usually
costs time before it shows (a timeout, a slow dependency), and a delayed error
holds its request thread like real work does. The `end` record's `fault` names
what the client got: `error` for the injected 500 (delayed or not; `duration_ms`
shows the delay), `delay` for a delayed answer.
"""

from __future__ import annotations

import enum
import functools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, request

from fiboserver.app.access import FAULT_ENVIRON_KEY
from fiboserver.app.routes import FIBO_ENDPOINT, json_response
from fiboserver.config import Config

# Uniform on [0, 1). The random module's shared instance: thread-safe (one C call
# under the GIL), and re-seeded in every forked worker by the random module
# itself, whereas a Random built by create_app in the master would hand every
# worker the same sequence.
Uniform = Callable[[], float]
SHARED_UNIFORM: Uniform = random.random


class Fault(enum.Enum):
    """What a faulted request got: the `fault` key of its `end` record."""

    DELAY = "delay"
    ERROR = "error"


@dataclass(frozen=True)
class FaultPlan:
    """`max_delay`: upper bound of the extra delay, seconds; `error_ratio`: share of
    requests answered 500."""

    max_delay: float = 0.0
    error_ratio: float = 0.0

    @classmethod
    def of(cls, config: Config) -> FaultPlan:
        return cls(config.fault_delay_ms / 1000, config.fault_error_ratio)

    @property
    def active(self) -> bool:
        return self.max_delay > 0 or self.error_ratio > 0


@dataclass(frozen=True)
class Outcome:
    """One request's draw: seconds of delay, and the fault it reports (None: none)."""

    delay: float
    fault: Fault | None


def draw(plan: FaultPlan, uniform: Uniform) -> Outcome:
    """The delay and the fault for one request, from `uniform`'s values.

    A value is drawn only for what the plan turns on, so a plan with one fault
    costs one draw."""
    delay = plan.max_delay * uniform() if plan.max_delay > 0 else 0.0
    # uniform() < 1 always, so a ratio of 1 fails every request, and 0 none.
    if plan.error_ratio > 0 and uniform() < plan.error_ratio:
        return Outcome(delay, Fault.ERROR)
    return Outcome(delay, Fault.DELAY if plan.max_delay > 0 else None)


def faulty(
    view: Callable[..., Any], plan: FaultPlan, uniform: Uniform = SHARED_UNIFORM
) -> Callable[..., Any]:
    """`view` with `plan`'s faults in front of it."""

    @functools.wraps(view)
    def with_faults(**kwargs: Any) -> Any:
        outcome = draw(plan, uniform)
        if outcome.fault is not None:
            request.environ[FAULT_ENVIRON_KEY] = outcome.fault.value
        if outcome.delay > 0:
            # In the request thread, like real work: the worker's admission counts
            # it in the service time, and a graceful stop waits for it.
            time.sleep(outcome.delay)
        if outcome.fault is Fault.ERROR:
            return injected_error()
        return view(**kwargs)

    return with_faults


def injected_error() -> Response:
    return json_response({"error": "injected fault"}, 500)


def install(app: Flask, plan: FaultPlan, uniform: Uniform = SHARED_UNIFORM) -> None:
    """Put `plan`'s faults in front of the app's `fibo` view; nothing when it is off."""
    if plan.active:
        app.view_functions[FIBO_ENDPOINT] = faulty(app.view_functions[FIBO_ENDPOINT], plan, uniform)
