"""Rolling update drill: replicas behind the edge nginx replaced one at a time.

The Kubernetes sequence per step, with the delays this drill uses:

    t = 0      new replica started; it joins the upstream once /readyz answers 200
               (a Ready pod joins the endpoints)
    t0         old replica deleted: its endpoint removal starts travelling, and
               its preStop hook starts (sleep)
    t0 + 1 s   the removal reaches nginx (reload with the smaller upstream list):
               endpoint changes take about that long to reach real proxies
    t0 + P     preStop over: SIGTERM; gunicorn drains and exits

With P = PRESTOP_S (2 s, shortened from the Deployment's 10 s to keep the drill
short; what matters is P > the removal delay) nothing is in flight towards the old
replica when it stops listening. Without preStop (P = 0) it stops listening while
nginx still sends it requests.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.edge import Nginx
from tests.support.podmanlib import wait_http
from tests.support.serverproc import ServerProcess

PRESTOP_S = 2.0
PROPAGATION_S = 1.0


@dataclass
class DrillResult:
    prestop: float
    steps: int = 0
    exit_codes: list[int] = field(default_factory=list)
    stop_seconds: list[float] = field(default_factory=list)  # SIGTERM -> exit
    ready_seconds: list[float] = field(default_factory=list)  # start -> /readyz 200
    reload_seconds: list[float] = field(default_factory=list)
    # Requests the load lost during each replacement (with `failed_so_far`).
    failed_per_step: list[int] = field(default_factory=list)
    seconds: float = 0.0


class Replica:
    """One gunicorn replica of the service (the stand-in for a pod)."""

    def __init__(self, config: Mapping[str, object], tmp: Path, index: int) -> None:
        self.index = index
        self.server = ServerProcess(
            config,
            tmp,
            # One worker per replica, as the CPU rule gives a pod with a 1-CPU limit;
            # keeps the drill light on 2 shared cores.
            env={"WEB_CONCURRENCY": "1"},
            name=f"replica-{index}.yaml",
        )
        self.prefix = "/" + str(config["env"]).lower()
        self.started = 0.0

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def start(self) -> float:
        """Start and wait until ready; seconds to ready."""
        self.started = time.monotonic()
        self.server.start()
        self.server.wait_for("server start", timeout=30)
        wait_http(self.server.url(f"{self.prefix}/readyz"), timeout=30)
        return time.monotonic() - self.started

    def sigterm(self) -> None:
        self.server.terminate(signal.SIGTERM)

    def close(self) -> None:
        self.server.close()


def _retire(
    nginx: Nginx,
    old: Replica,
    rest_backends: Mapping[str, list[str]],
    result: DrillResult,
    *,
    prestop: float,
    propagation: float,
) -> None:
    """Delete `old` as Kubernetes does: its endpoint removal reaches nginx
    `propagation` s after the deletion, whatever the pod does meanwhile, and SIGTERM
    follows the `prestop` sleep."""
    deleted_at = time.monotonic()
    removal_error: list[BaseException] = []

    def remove() -> None:
        try:
            result.reload_seconds.append(nginx.set_backends(rest_backends))
        except BaseException as exc:  # surfaced below
            removal_error.append(exc)

    timer = threading.Timer(propagation, remove)
    timer.start()
    time.sleep(max(0.0, prestop - (time.monotonic() - deleted_at)))
    sigterm_at = time.monotonic()
    old.sigterm()
    rc = old.server.wait(timeout=60)
    result.stop_seconds.append(time.monotonic() - sigterm_at)
    result.exit_codes.append(rc)
    timer.join()
    if removal_error:
        raise removal_error[0]
    old.close()


def rolling_update(
    nginx: Nginx,
    service: str,
    replicas: list[Replica],
    make_replica: Callable[[], Replica],
    other_backends: Mapping[str, Sequence[str]],
    *,
    steps: int,
    prestop: float,
    propagation: float = PROPAGATION_S,
    failed_so_far: Callable[[], int] | None = None,
) -> DrillResult:
    """Replace the oldest replica `steps` times; `replicas` is updated in place (the
    caller closes whatever is left in it). `failed_so_far`: the load's failure count,
    read before and after each replacement."""
    result = DrillResult(prestop=prestop)
    t_start = time.monotonic()

    def backends(live: Sequence[Replica]) -> dict[str, list[str]]:
        out = {k: list(v) for k, v in other_backends.items()}
        out[service] = [r.addr for r in live]
        return out

    for _ in range(steps):
        failed_before = failed_so_far() if failed_so_far is not None else 0
        new = make_replica()
        replicas.append(new)  # the caller's cleanup covers it from here on
        result.ready_seconds.append(new.start())
        result.reload_seconds.append(nginx.set_backends(backends(replicas)))

        old = replicas[0]
        _retire(
            nginx, old, backends(replicas[1:]), result, prestop=prestop, propagation=propagation
        )
        replicas.remove(old)
        result.steps += 1
        if failed_so_far is not None:
            result.failed_per_step.append(failed_so_far() - failed_before)
    result.seconds = time.monotonic() - t_start
    return result
