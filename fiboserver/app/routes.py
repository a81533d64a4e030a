"""The HTTP API: one blueprint, registered under the environment's prefix."""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from flask import Blueprint, Response, current_app, request

from fiboserver.app.cache import EXTENSION_KEY, FiboCache
from fiboserver.app.fibo import fibonacci_digits
from fiboserver.echo import bounded, quoted
from fiboserver.lifecycle import is_draining
from fiboserver.metrics.definitions import EXTENSION_KEY as METRICS_KEY
from fiboserver.metrics.definitions import MetricsSource
from fiboserver.tracing import computation

bp = Blueprint("fibo", __name__)
log = logging.getLogger("fiboserver.fibo")

_PLAIN_INTEGER = re.compile(r"-?[0-9]+")
# A query string of just `n=<digits>` (what clients send) is read as it is;
# Werkzeug would parse it into a MultiDict first, a large part of the route's
# cost (docs/performance.md).
# Anything else (more keys, %-escapes, no n) goes through request.args.
_PLAIN_QUERY = re.compile(r"n=([0-9]{1,20})")
JSON = "application/json"
# The kubelet's probes (liveness, readiness): the worker gives them a lane of
# their own (fiboserver.serving tells it their paths) so they answer in
# milliseconds however busy the other threads are.
PROBE_ROUTES = ("/healthz", "/readyz")


def json_body(body: str, status: int = 200) -> Response:
    """A response whose body is `body`, a JSON text.

    `direct_passthrough`: Werkzeug hands the body (already encoded, a list of one
    bytes object) to the server as it is, where it would otherwise wrap it in a
    ClosingIterator whose constructor evaluates a typing annotation at run time,
    a measurable part of a cached request (docs/performance.md). The bytes sent
    are the same; nothing of ours registers a close callback on a response.
    """
    return Response(body, status=status, mimetype=JSON, direct_passthrough=True)


def json_response(payload: dict[str, Any], status: int = 200) -> Response:
    return json_body(json.dumps(payload), status)


def parse_n(raw: str | None, maxseq: int) -> int:
    """The `n` query argument as an int in 0..maxseq; ValueError says what is wrong.

    The message quotes at most 40 characters of `raw` (fiboserver.echo): it goes
    into the response and into the log record.
    """
    if raw is None or raw == "":
        raise ValueError("query parameter n is required, e.g. ?n=10")
    if not _PLAIN_INTEGER.fullmatch(raw):
        raise ValueError(f"n must be a plain base-10 integer, got {quoted(raw)}")
    if raw.startswith("-"):
        raise ValueError(f"n must not be negative, got {bounded(raw)}")
    # Compare lengths first, without the leading zeros: int() refuses strings of
    # over 4300 digits, zeros included.
    significant = raw.lstrip("0") or "0"
    if len(significant) > len(str(maxseq)) or int(significant) > maxseq:
        raise ValueError(f"n must be <= maxseq ({maxseq}), got {bounded(raw)}")
    return int(significant)


def fibo() -> Response:
    try:
        plain = _PLAIN_QUERY.fullmatch(request.environ.get("QUERY_STRING", ""))
        raw = plain.group(1) if plain is not None else request.args.get("n")
        n = parse_n(raw, current_app.config["FIBO_MAXSEQ"])
    except ValueError as exc:
        log.warning("fibo calculate failed", extra={"errmsg": str(exc)})
        return json_response({"error": str(exc)}, 400)
    cache: FiboCache | None = current_app.extensions.get(EXTENSION_KEY)
    digits = cache.get(n) if cache is not None else None
    if digits is None:
        started = time.perf_counter()
        with computation(n):  # a child of the request's span, when exporting
            digits = fibonacci_digits(n)
        metrics: MetricsSource | None = current_app.extensions.get(METRICS_KEY)
        if metrics is not None:
            metrics().compute_duration.observe(time.perf_counter() - started)
        if cache is not None:
            cache.put(n, digits)
    # Written by hand: json.dumps would convert through int, which is both slow
    # and limited to 4300 digits.
    return json_body('{"result": ' + digits + "}")


def healthz() -> Response:
    # Liveness: answers whenever the process can; stays 200 while draining,
    # since restarting a pod that is finishing its requests helps nobody.
    return json_response({"status": "ok"})


def readyz() -> Response:
    if is_draining():
        return json_response({"status": "draining"}, 503)
    return json_response({"status": "ready"})


# Registered here rather than with @bp.get: mutmut (`make mutate`) leaves decorated
# functions alone, and these three are the service.
bp.add_url_rule("/fibo", view_func=fibo, methods=["GET"])
# The endpoint fault injection wraps (fiboserver.app.faults).
FIBO_ENDPOINT = f"{bp.name}.fibo"
bp.add_url_rule("/healthz", view_func=healthz, methods=["GET"])
bp.add_url_rule("/readyz", view_func=readyz, methods=["GET"])
