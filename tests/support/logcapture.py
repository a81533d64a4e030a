"""The service's log records captured in the test process, as the service prints
them (the `fibo_logs` fixture of tests/conftest.py hands one to a test)."""

from __future__ import annotations

import json
import logging
from typing import Any


class JsonCapture:
    """Records of the `fiboserver` loggers as the service prints them: each one is
    formatted by the service's own JSON formatter at emit time (so the request id
    from the request context is included) and parsed back into a dict."""

    def __init__(self) -> None:
        from fiboserver.logs import JsonFormatter

        self.records: list[dict[str, Any]] = []
        formatter = JsonFormatter()
        records = self.records

        class _Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                records.append(json.loads(formatter.format(record)))

        self.handler = _Handler(logging.DEBUG)

    def find(self, msg: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("msg") == msg]
