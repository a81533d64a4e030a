"""Logging: every record is one JSON object on stdout.

The same formatter serves the gunicorn master, its workers and the app, so a
log pipeline sees one shape: `ts`, `level`, `logger`, `msg`, then the event's
own keys. Records written while a request is served carry its `request_id`,
and its `trace_id` and `span_id` when it has a trace context.
"""

from __future__ import annotations

import logging
import logging.config
import time
from contextvars import ContextVar
from typing import Any

from pythonjsonlogger.json import JsonEncoder
from pythonjsonlogger.orjson import OrjsonFormatter as _LibraryJsonFormatter

# Set by the access middleware for the duration of a request (one context per thread).
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
# (trace_id, span_id) as 32 and 16 hex digits, set by fiboserver.tracing for a
# request that has a trace context, for as long as request_id_var.
trace_ids_var: ContextVar[tuple[str, str] | None] = ContextVar("trace_ids", default=None)

# Our records show none of the caller's file and line, thread or process (a
# worker's records carry `pid` explicitly), so the logging module need not look
# them up for every record: its documented optimisations (logging HOWTO,
# "Optimization"); docs/performance.md has what they save.
logging._srcfile = None  # no sys._getframe() walk to find the caller
logging.logThreads = False
logging.logProcesses = False
logging.logMultiprocessing = False

# Keys the log pipeline adds itself (containerd, Fluent Bit, Elasticsearch);
# an event key with one of these names is renamed rather than clobbered.
PIPELINE_KEYS = frozenset({"time", "@timestamp", "log", "stream", "_p", "kubernetes"})


def client_name(address: object) -> str:
    """A peer as every record's `client` names it: `host:port` for an IP
    peer, the socket path of a UNIX one (from accept(), usually empty)."""
    if isinstance(address, tuple):
        return f"{address[0]}:{address[1]}"
    return address.decode(errors="replace") if isinstance(address, bytes) else str(address)


# (second, its text): the date part changes once a second, records come by the
# thousand. One tuple, read and replaced whole, so threads never see half of it.
_last_second: tuple[int, str] = (-1, "")


def rfc3339_utc(created: float) -> str:
    """`2026-11-26T19:00:00.123Z` for a `time.time()` value."""
    global _last_second
    # Whole milliseconds first: `created - int(created)` loses digits to float
    # error (1764183600.123 would print as .122).
    seconds, millis = divmod(round(created * 1000), 1000)
    cached_second, text = _last_second
    if cached_second != seconds:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _last_second = (seconds, text)
    return f"{text}.{millis:03d}Z"


class JsonFormatter(_LibraryJsonFormatter):
    """python-json-logger's orjson formatter with our key names and order, and
    the request id.

    orjson writes the same JSON values as the json module, compactly (no space
    after `:` and `,`) and with non-ASCII characters as UTF-8 rather than
    `\\u` escapes, at a fraction of the cost (docs/performance.md). Datetimes,
    exceptions and any other object are written as text (the library's default
    function), so a record is never lost for a value it cannot encode.
    """

    def __init__(self) -> None:
        # No `fmt` fields, renames, defaults or static fields: add_fields below
        # writes every key itself, which is what lets it skip the library's
        # general merge (docs/performance.md).
        super().__init__(fmt=())
        # What orjson refuses (an integer beyond 64 bits, a string with a lone
        # surrogate) the library's json encoder writes. Encoding keeps no state
        # between calls, so threads can share it.
        self._fallback = JsonEncoder()

    def jsonify_log_record(self, log_data: dict[str, Any]) -> str:
        try:
            return super().jsonify_log_record(log_data)
        except TypeError:  # orjson.JSONEncodeError is one
            return self._fallback.encode(log_data)

    def add_fields(
        self,
        log_data: dict[str, Any],
        record: logging.LogRecord,
        message_dict: dict[str, Any],
    ) -> None:
        log_data["ts"] = rfc3339_utc(record.created)
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        log_data["msg"] = record.message
        request_id = request_id_var.get()
        if request_id is not None:
            log_data["request_id"] = request_id
            trace_ids = trace_ids_var.get()
            if trace_ids is not None:
                log_data["trace_id"], log_data["span_id"] = trace_ids
        # The message dict (exc_info), then the record's extra attributes in
        # their order: the library's add_fields with nothing to rename.
        log_data.update(message_dict)
        skip = self._skip_fields
        for key, value in record.__dict__.items():
            if key not in skip and not (isinstance(key, str) and key.startswith("_")):
                log_data[key] = value
        for key in PIPELINE_KEYS.intersection(log_data):
            log_data["field_" + key.lstrip("@_")] = log_data.pop(key)


class GunicornMetricFields(logging.Filter):
    """Renames the `value` of gunicorn's statsd-style records to `metric_value`.

    gunicorn attaches `metric`, `value` and `mtype` to a few records, with a
    number in `value`; our `cache fibo` record has a string there. A field has
    one type in Elasticsearch, so one of them has to move.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if hasattr(record, "mtype") and hasattr(record, "value"):
            record.metric_value = record.__dict__.pop("value")
        return True


def logconfig_dict(level: str) -> dict[str, Any]:
    """A `logging.config.dictConfig` schema; gunicorn takes it as `logconfig_dict`."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "filters": {"gunicorn_metrics": {"()": GunicornMetricFields}},
        "handlers": {
            # One stream for everything keeps records in order for readers.
            "stdout": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stdout",
            },
        },
        "root": {"level": level, "handlers": ["stdout"]},
        "loggers": {
            "gunicorn.error": {
                "level": level,
                "handlers": ["stdout"],
                "filters": ["gunicorn_metrics"],
                "propagate": False,
            },
            # The app writes the access records (`start`, `end`) itself.
            "gunicorn.access": {"level": "CRITICAL", "handlers": [], "propagate": False},
        },
    }


def configure_logging(level: str) -> None:
    """JSON logging for a process that gunicorn has not configured (yet)."""
    logging.config.dictConfig(logconfig_dict(level))
    logging.captureWarnings(True)
