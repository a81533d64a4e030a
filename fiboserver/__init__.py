"""fiboserver: Fibonacci numbers over HTTP, run the way a Kubernetes service should be.

The packages follow where their code runs (README "Architecture"):

- `fiboserver.app`: the WSGI app, in the worker's request threads;
- `fiboserver.worker`: the gunicorn worker's event loop (a worker's main thread);
- `fiboserver.server`: the gunicorn master's hooks and start-up;
- `fiboserver.metrics`: Prometheus metrics, for all three (the only user of
  prometheus_client);
- shared by all: `config`, `logs`, `lifecycle`, `serving`, `request_ids`, `echo`,
  and `gunicorn_internals`, the one module that reaches gunicorn.
"""
