"""Which of gunicorn's settings the worker can honour: checked once, in the master,
before the first worker starts (gunicorn calls the worker class's check_config)."""

from __future__ import annotations

from typing import Any


def unsupported_setting(cfg: Any) -> str | None:
    """What in gunicorn's settings `cfg` this worker cannot honour, or None.

    The loop reads request heads itself, as plain HTTP/1 bytes, before any thread
    or gunicorn's parser sees them: TLS (it ends at the ingress), HTTP/2 in
    cleartext (its connection would hold a pool thread for its whole life and
    bypass admission) and a PROXY protocol header in front of the request (it
    would hide the request line) would all reach it unread. It holds idle
    connections as descriptors, not threads, and caps them by the open-files
    limit, so gthread's `worker_connections` would be silently ignored.
    """
    if cfg.is_ssl:
        return "does not terminate TLS: unset certfile and keyfile"
    if cfg.http2_cleartext != "off":
        return (
            "does not serve HTTP/2 in cleartext: http2_cleartext must be off, "
            f"not {cfg.http2_cleartext!r}"
        )
    if cfg.proxy_protocol not in ("off", False, None):
        return (
            "does not read PROXY protocol headers: proxy_protocol must be off, "
            f"not {cfg.proxy_protocol!r}"
        )
    default = type(cfg.settings["worker_connections"]).default
    if cfg.worker_connections != default:
        return (
            f"does not cap connections by worker_connections ({cfg.worker_connections}): "
            "idle connections cost a descriptor each, up to the open-files limit; leave it at "
            f"its default ({default})"
        )
    return None
