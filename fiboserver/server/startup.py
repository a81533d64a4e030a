"""What gunicorn.conf.py needs before gunicorn opens a socket.

The configuration file is validated here, when gunicorn reads its config file:
a bad one ends the process with one JSON error record and exit status 78
(EX_CONFIG), before anything listens.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any, NoReturn

from fiboserver import logs
from fiboserver.config import CONFIG_ENV, Config, ConfigError, load_config
from fiboserver.server.cgroup import default_workers

log = logging.getLogger("fiboserver.server")


def refuse_to_start(msg: str, **fields: Any) -> NoReturn:
    """Log one CRITICAL JSON record and exit with EX_CONFIG (78)."""
    logs.configure_logging("INFO")
    log.critical(msg, extra=fields)
    sys.exit(os.EX_CONFIG)


def config_or_exit(environ: Mapping[str, str]) -> Config:
    """The validated file named by $FIBOSERVER_CONFIG, or exit 78 saying why."""
    path = environ.get(CONFIG_ENV)
    if not path:
        refuse_to_start(
            "invalid configuration", errmsg=f"environment variable {CONFIG_ENV} is not set"
        )
    try:
        return load_config(path)
    except ConfigError as exc:
        refuse_to_start("invalid configuration", **config_error_fields(exc))


def config_error_fields(exc: ConfigError) -> dict[str, str]:
    """The keys of an `invalid configuration` record: file, config_key (if any), errmsg."""
    fields = {"file": exc.path}
    if exc.key is not None:
        fields["config_key"] = exc.key
    fields["errmsg"] = str(exc)
    return fields


def workers_or_exit(environ: Mapping[str, str]) -> int:
    """Worker processes: $WEB_CONCURRENCY, else the container's CPU limit; or exit 78."""
    try:
        return default_workers(environ)
    except ValueError as exc:
        refuse_to_start("invalid configuration", errmsg=str(exc))
