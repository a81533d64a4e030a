"""The JSON formatter's own rules, on records made here (the process tests see them live)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fiboserver.logs import (
    GunicornMetricFields,
    JsonFormatter,
    client_name,
    request_id_var,
    rfc3339_utc,
)


def formatted(msg: str, **extra: Any) -> dict[str, Any]:
    record = logging.LogRecord("fiboserver.test", logging.INFO, __file__, 1, msg, None, None)
    record.__dict__.update(extra)
    GunicornMetricFields().filter(record)
    parsed: dict[str, Any] = json.loads(JsonFormatter().format(record))
    return parsed


def test_timestamps_are_rfc3339_utc_with_exact_milliseconds() -> None:
    # 1764183600.123 is 1764183600.1229999... as a float: still .123.
    assert rfc3339_utc(1764183600.123) == "2025-11-26T19:00:00.123Z"
    assert rfc3339_utc(1764183600.0) == "2025-11-26T19:00:00.000Z"
    assert rfc3339_utc(1764183600.9996) == "2025-11-26T19:00:01.000Z"
    # The cached date part follows the second it is asked for, in any order.
    assert rfc3339_utc(0.5) == "1970-01-01T00:00:00.500Z"
    assert rfc3339_utc(1764183600.5) == "2025-11-26T19:00:00.500Z"


def test_common_keys_come_first_then_the_event_keys() -> None:
    token = request_id_var.set("req-1")
    try:
        record = formatted("end", status=200, duration_ms=0.5)
    finally:
        request_id_var.reset(token)
    assert list(record) == ["ts", "level", "logger", "msg", "request_id", "status", "duration_ms"]
    assert record["msg"] == "end" and record["level"] == "INFO"


def test_pipeline_keys_are_renamed_not_clobbered() -> None:
    record = formatted("x", time=1, log="a", stream="b", _p="c", kubernetes="d")
    reserved = {"time", "@timestamp", "log", "stream", "_p", "kubernetes"}
    assert not reserved & set(record)
    assert record["field_time"] == 1 and record["field_log"] == "a"
    assert record["field_stream"] == "b" and record["field_kubernetes"] == "d"
    # Underscore attributes are private to logging and never written.
    assert "field_p" not in record
    assert formatted("x", **{"@timestamp": "t"})["field_timestamp"] == "t"


def test_values_json_cannot_encode_are_written_as_text() -> None:
    # A record must never be lost (or turn into a traceback on stderr) for a value
    # that json cannot encode: gunicorn and libraries log what they like.
    when = datetime(2026, 11, 26, 19, 0, tzinfo=UTC)
    record = formatted("x", when=when, where=Path("/tmp/x"), error=ValueError("bad"))
    assert record["when"] == "2026-11-26T19:00:00+00:00"
    assert record["where"] == "/tmp/x" and record["error"] == "ValueError: bad"


def test_gunicorn_metric_value_is_renamed_so_value_stays_a_string() -> None:
    record = formatted("2 workers", metric="gunicorn.workers", value=2, mtype="gauge")
    assert "value" not in record and record["metric_value"] == 2
    # Our own `value` (cache fibo) is untouched.
    assert formatted("cache fibo", key=10, value="55")["value"] == "55"


def test_what_orjson_refuses_is_still_written() -> None:
    # orjson encodes integers up to 64 bits and valid UTF-8 only; the json
    # encoder takes the rest, so the record is kept whole.
    big = 2**70
    assert formatted("x", big=big)["big"] == big
    assert formatted("x", text="a\udc80b")["text"] == "a\udc80b"


def test_non_ascii_input_keeps_its_characters() -> None:
    assert formatted("x", path="/prod/fibo?n=é€😀")["path"] == "/prod/fibo?n=é€😀"


def test_a_client_is_named_by_its_address_and_port_or_its_socket_path() -> None:
    assert client_name(("10.1.2.3", 40112)) == "10.1.2.3:40112"
    assert client_name(("::1", 8080, 0, 0)) == "::1:8080"  # IPv6: accept() gives 4 fields
    assert client_name("") == ""  # a UNIX socket's unnamed client
    assert client_name(b"\x00abstract") == "\x00abstract"  # Linux's abstract namespace
