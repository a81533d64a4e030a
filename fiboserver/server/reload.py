"""SIGHUP: reload the configuration without ever stopping the server.

On HUP gunicorn re-executes gunicorn.conf.py, starts new workers with what it
defines and stops the old ones. Two things go wrong with that as it comes:

- gunicorn.conf.py exits 78 on a bad config file (fiboserver/server/startup.py), the
  right answer at start, but on HUP it ends the running master and every
  worker with it. So the file is checked first: a bad one is logged (ERROR
  `invalid configuration`, with `file` and `config_key`) and nothing changes.
  Should the reload still fail (the file changed again meanwhile, or
  gunicorn.conf.py itself is broken), the previous settings are put back.
- With `preload_app` the app was built in the master from the old file, and
  gunicorn reuses it for the new workers. It is dropped before the reload, so
  gunicorn builds it again from the new file and the app's settings (`maxseq`,
  `cacheresult`, ...) reach the new workers along with gunicorn's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from fiboserver import gunicorn_internals as gunicorn
from fiboserver.config import CONFIG_ENV, ConfigError, load_config
from fiboserver.server.startup import config_error_fields

log = logging.getLogger("fiboserver.server")


def reload_safely(server: Any) -> None:
    """Make the master's SIGHUP handling keep the old settings instead of exiting
    when the new ones cannot be used."""

    def safe(reload: Callable[[], None]) -> Callable[[], None]:
        def safe_reload() -> None:
            path = os.environ.get(CONFIG_ENV, "")
            try:
                load_config(path)
            except ConfigError as exc:
                log.error("invalid configuration", extra=config_error_fields(exc))
                return
            try:
                gunicorn.reload_keeping_old_app(server, reload)
            except (Exception, SystemExit) as exc:
                # gunicorn.conf.py exited or raised: the settings in use stay.
                log.error(
                    "configuration not reloaded",
                    extra={"file": path, "errmsg": f"{type(exc).__name__}: {exc}"},
                )
                return
            log.info("configuration reloaded", extra={"file": path})

        return safe_reload

    gunicorn.replace_reload(server, safe)
