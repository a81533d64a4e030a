"""The WSGI app: runs in a worker's request threads (and is built once in the master).

`create_app` is the Flask app factory: the routes blueprint under the
environment's prefix, the result cache extension, the access middleware (request
ids, `start`/`end` records, request metrics) and the JSON error handlers. It
imports nothing of the worker or the server; what they need to know about it is
the `fiboserver.serving.Serving` record it attaches.
"""

from fiboserver.app.factory import create_app

__all__ = ["create_app"]
