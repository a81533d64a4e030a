"""The output of a server started by ``serverproc.ServerProcess``, as it arrives.

One background thread per pipe (stdout, stderr) reads it line by line. Every line
is kept in ``lines``; a line that parses as one JSON object also becomes a record
in ``records`` (with ``_stream`` added, test-side only), any other line goes to
``bad_lines`` too. ``find`` and ``wait_for`` look records up by ``msg`` and a
predicate; ``tail`` is the end of the output for failure messages.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import IO, Any

Record = dict[str, Any]


def _matches(record: Record, msg: str | None, where: Callable[[Record], bool] | None) -> bool:
    return (msg is None or record.get("msg") == msg) and (where is None or where(record))


class ServerLog:
    """Lines and JSON records of one process's pipes; see the module docstring."""

    def __init__(self, on_line: Callable[[str, str], None] | None = None) -> None:
        self._on_line = on_line
        self._cond = threading.Condition()
        self.lines: list[tuple[str, str]] = []  # (stream name, raw line)
        self.records: list[Record] = []
        self.bad_lines: list[tuple[str, str]] = []
        self._readers: list[threading.Thread] = []

    def follow(self, stream_name: str, stream: IO[bytes]) -> None:
        """Read `stream` in a daemon thread until EOF, then close it."""
        t = threading.Thread(target=self._read, args=(stream_name, stream), daemon=True)
        t.start()
        self._readers.append(t)

    def _read(self, stream_name: str, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            if self._on_line is not None:
                self._on_line(stream_name, line)  # in this reader thread, at once
            record: Record | None = None
            try:
                parsed = json.loads(line)
                if isinstance(parsed, dict):
                    record = parsed
            except ValueError:
                pass
            with self._cond:
                self.lines.append((stream_name, line))
                if record is not None:
                    record["_stream"] = stream_name  # test-side only, not in the log line
                    self.records.append(record)
                else:
                    self.bad_lines.append((stream_name, line))
                self._cond.notify_all()
        stream.close()

    def join(self, timeout: float = 5.0) -> None:
        """Wait up to `timeout` s per reader for its EOF."""
        for t in self._readers:
            t.join(timeout=timeout)

    def find(
        self,
        msg: str | None = None,
        where: Callable[[Record], bool] | None = None,
        start: int = 0,
    ) -> list[Record]:
        """Records from index `start` on with this `msg` that satisfy `where`."""
        with self._cond:
            recs = list(self.records[start:])
        return [r for r in recs if _matches(r, msg, where)]

    def wait_for(
        self,
        msg: str | None,
        timeout: float,
        where: Callable[[Record], bool] | None,
        start: int,
        exit_status: Callable[[], int | None],
    ) -> Record:
        """First record (index >= `start`) with this `msg` matching `where`; waits up to
        `timeout` s. Fails with the tail if it does not come, or once `exit_status()`
        says the process exited and every reader reached EOF."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for r in self.records[start:]:
                    if _matches(r, msg, where):
                        return r
                left = deadline - time.monotonic()
                status = exit_status()
                readers_done = not any(t.is_alive() for t in self._readers)
                if left <= 0 or (status is not None and readers_done):
                    tail = self.tail()
                    state = f"exited {status}" if status is not None else "running"
                    raise AssertionError(
                        f"no log record msg={msg!r} within {timeout}s ({state}); "
                        f"last lines:\n{tail}"
                    )
                self._cond.wait(timeout=min(left, 0.2))

    def text(self) -> str:
        """All lines, stdout and stderr interleaved in arrival order."""
        with self._cond:
            return "\n".join(line for _, line in self.lines)

    def tail(self, count: int = 30) -> str:
        """The last `count` lines, each prefixed with its stream's name."""
        with self._cond:
            return "\n".join(f"{s}: {ln}" for s, ln in self.lines[-count:])
