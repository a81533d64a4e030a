"""Prometheus metrics: the only package that imports prometheus_client.

Code here runs in all three places: `definitions` (the metric objects, and the
request recorder the app's access middleware uses) in the request threads;
`master` (what the server hooks record, and the /metrics server's life),
`exposition` (the /metrics HTTP server's threads) and `multiproc` (the
PROMETHEUS_MULTIPROC_DIR files) in the gunicorn master. It imports nothing of
the app, the worker or the server.
"""
