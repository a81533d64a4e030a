"""The gunicorn master: runs in the master process, which forks the workers.

`startup` validates the configuration when gunicorn reads gunicorn.conf.py (exit
78 before anything listens) and sizes the worker count from the container's CPU
quota (`cgroup`); `hooks` are gunicorn's server hooks: the graceful stop, which
makes the kernel drop new connections (`listener`), the safe reload on SIGHUP
(`reload`), and the metrics server's life (fiboserver.metrics.master). It
imports nothing of the app or the worker.
"""
