"""What the server processes need to know about the app they serve: one record.

The worker's event loop (fiboserver.worker) answers some requests without the
app: the probes get a thread of their own, and refusals (overload, requests the
HTTP layer cannot read) are written by the loop and counted in the app's request
metrics. The master (fiboserver.server) serves metrics beside the app. The app
factory (fiboserver.app.create_app) states those needs in a `Serving` record
attached to the app it builds; the servers read it with `serving_of` and know
nothing else about the app. Any other WSGI app (the benchmark's bare ceiling)
gets `Serving()`: no probe lane, no metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# The attribute of the WSGI app that holds its Serving record.
ATTRIBUTE = "fiboserver_serving"


class RequestSink(Protocol):
    """Where an answered request is counted: the request duration histogram."""

    def observe(self, method: str, path: str, status: int, seconds: float) -> None: ...


@dataclass(frozen=True)
class Serving:
    """`probe_paths`: the liveness and readiness paths (the probe lane's).
    `requests`: where answers written without the app are counted (None: metrics off).
    `metrics_port`: where the master serves /metrics (0: metrics off)."""

    probe_paths: frozenset[str] = frozenset()
    requests: RequestSink | None = None
    metrics_port: int = 0


def serving_of(wsgi: object) -> Serving:
    """The Serving record of `wsgi`, or `Serving()` for an app without one."""
    found = getattr(wsgi, ATTRIBUTE, None)
    return found if isinstance(found, Serving) else Serving()
