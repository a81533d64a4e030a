"""The application factory (runs in the master, which preloads the app)."""

from __future__ import annotations

import logging
import os

from flask import Flask, Response
from werkzeug.exceptions import HTTPException
from werkzeug.sansio.response import Response as BaseResponse

from fiboserver.app import access, faults
from fiboserver.app.cache import FiboCache
from fiboserver.app.routes import PROBE_ROUTES, bp, json_response
from fiboserver.config import CONFIG_ENV, Config, load_config
from fiboserver.metrics.definitions import (
    EXTENSION_KEY,
    MetricsSource,
    RequestMetrics,
    process_metrics,
    static_rules,
)
from fiboserver.serving import ATTRIBUTE, Serving
from fiboserver.tracing import RequestTracing

log = logging.getLogger("fiboserver.app")


def create_app(
    config: Config | None = None, metrics: MetricsSource | None = None, *, tracing: bool = True
) -> Flask:
    """Build the app for `config`, by default the file named by $FIBOSERVER_CONFIG.

    With `metrics_port` set, it records metrics into `metrics()`, by default this
    process's own (fiboserver.metrics.definitions.process_metrics). The app
    carries a `Serving` record for the worker and the master (fiboserver.serving).
    `tracing=False` leaves tracing out of the request path altogether: only the
    benchmark's baseline wants that (the OTEL_* variables decide everything else).
    """
    if config is None:
        config = load_config(os.environ[CONFIG_ENV])
    # No static route: nothing is served outside the environment's prefix.
    app = Flask("fiboserver", static_folder=None)
    app.config.from_mapping(
        FIBOSERVER=config,
        FIBO_MAXSEQ=config.maxseq,
        FIBO_CACHE_MAX_BYTES=config.cache_max_bytes,
    )
    app.register_blueprint(bp, url_prefix=config.prefix)
    faults.install(app, faults.FaultPlan.of(config))
    source = (metrics or process_metrics) if config.metrics_port else None
    if source is not None:
        app.extensions[EXTENSION_KEY] = source
    routes = static_rules(app.url_map)
    requests = RequestMetrics(routes, source) if source else None
    probe_paths = frozenset(config.prefix + route for route in PROBE_ROUTES)
    access.init_app(app, requests, RequestTracing(routes, probe_paths) if tracing else None)
    if config.cacheresult:
        FiboCache(app, metrics=source)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _internal_error)
    serving = Serving(
        probe_paths=probe_paths,
        requests=requests,
        metrics_port=config.metrics_port,
    )
    setattr(app, ATTRIBUTE, serving)
    return app


def _http_error(exc: HTTPException) -> BaseResponse:
    # Werkzeug's own response keeps headers such as Allow on a 405.
    response = exc.get_response()
    response.set_data(json_response({"error": exc.name.lower()}).get_data())
    response.mimetype = "application/json"
    return response


def _internal_error(exc: Exception) -> Response:
    # The traceback goes to the log as one record, never to the client.
    log.error("unhandled exception", exc_info=exc)
    return json_response({"error": "internal error"}, 500)
