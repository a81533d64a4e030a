"""The gunicorn worker: runs in each worker process, around its event loop.

`RequestThreadWorker` (gunicorn.conf.py's `worker_class`) is gthread with an
event loop in front: the loop (`loop`) accepts and reads request heads without a
thread (`heads`, `connections`), gives the probes a lane of their own, decides
which request starts, waits or is shed (`admission`), and writes the answers it
gives without the app (`refusals`), and beats the master's heartbeat once a
second (`heartbeat`); only whole requests reach the pool threads.
It imports nothing of the app or the server.
"""

from fiboserver.worker.loop import RequestThreadWorker

__all__ = ["RequestThreadWorker"]
