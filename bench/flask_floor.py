"""The Flask floor: a plain Flask app answering `<prefix>/fibo` like the service, nothing else.

`make bench` runs it next to the service and the bare-WSGI ceiling, under the
same gunicorn settings (`gunicorn -c gunicorn.conf.py bench.flask_floor:app`).
It has what any Flask app has (request context, URL routing, a view, a
Response) and none of the service's features: no request id, no log records,
no validation, no cache extension. The distance from the ceiling to this floor
is the price of Flask itself; from this floor to the service, the price of the
service's features.
"""

from __future__ import annotations

import os

from flask import Blueprint, Flask, Response, request

from fiboserver.app.fibo import fibonacci_digits
from fiboserver.config import CONFIG_ENV, load_config

_CONFIG = load_config(os.environ[CONFIG_ENV])
# Same length as a UUID4, so the bytes on the wire match the service's.
_HEADERS = {"X-Request-ID": "00000000-0000-4000-8000-000000000000"}
_memo: dict[int, str] = {}

bp = Blueprint("floor", __name__)


@bp.get("/fibo")
def fibo() -> Response:
    n = int(request.args["n"])
    digits = _memo.get(n) if _CONFIG.cacheresult else None
    if digits is None:
        digits = fibonacci_digits(n)
        if _CONFIG.cacheresult:
            _memo[n] = digits
    return Response('{"result": ' + digits + "}", mimetype="application/json", headers=_HEADERS)


@bp.get("/readyz")
def readyz() -> Response:
    return Response('{"status": "ready"}', mimetype="application/json", headers=_HEADERS)


def create_app() -> Flask:
    app = Flask("flask_floor")
    app.register_blueprint(bp, url_prefix=_CONFIG.prefix)
    return app


app = create_app()
