"""What the metrics tests (tests/test_metric*.py) share: a private registry with an
app recording into it, the real server with N workers and its records, and a
scrape or a process's multiprocess files read as samples."""

from __future__ import annotations

import collections
import glob
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from fiboserver.app import create_app
from fiboserver.config import parse_config
from fiboserver.metrics.definitions import Metrics
from tests.support.serverlog import Record
from tests.support.serverproc import ServerProcess

DURATION = "http_server_request_duration_seconds"
Key = tuple[str, frozenset[tuple[str, str]]]

# -- one process: the app and a registry of its own -----------------------------------


class Recorded:
    """A private registry and the Metrics recording into it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)

    def value(self, name: str, **labels: str) -> float:
        v = self.registry.get_sample_value(name, labels)
        return 0.0 if v is None else v


def app_with(recorded: Recorded, **config: Any) -> Any:
    return create_app(
        parse_config({"env": "DEV", "maxseq": 1000, **config}, "t.yaml"), lambda: recorded.metrics
    )


# -- the real server ------------------------------------------------------------------


def server(tmp_path: Path, workers: int, config: dict[str, Any] | None = None,
           **env: str) -> ServerProcess:  # fmt: skip
    return ServerProcess(
        {"env": "DEV", "maxseq": 1000, **(config or {})},
        tmp_path,
        env={"WEB_CONCURRENCY": str(workers), **env},
    )


def wait_booted(srv: ServerProcess, count: int, start: int = 0) -> list[int]:
    """Pids of the first `count` workers booted from record `start` on."""
    deadline = time.monotonic() + 60
    while True:
        booted = [r["pid"] for r in srv.find("worker booted", start=start)]
        if len(booted) >= count:
            return booted[:count]
        assert time.monotonic() < deadline, srv.output()[-3000:]
        time.sleep(0.05)


def wait_records(srv: ServerProcess, msg: str, count: int, start: int = 0) -> list[Record]:
    deadline = time.monotonic() + 30
    while len(found := srv.find(msg, start=start)) < count:
        assert time.monotonic() < deadline, f"{len(found)} of {count} {msg!r} records"
        time.sleep(0.05)
    return found


# A known mix of hits, misses, 400s, 404s, 405s and HEADs, with the labels each gets.
MIX: list[tuple[str, str, int, tuple[str, str]]] = [
    # (method, path, status, (method label, route label))
    *[("GET", f"/dev/fibo?n={n}", 200, ("GET", "/dev/fibo")) for n in range(1, 31)],  # misses
    *[("GET", f"/dev/fibo?n={n % 5 + 1}", 200, ("GET", "/dev/fibo")) for n in range(60)],  # hits
    *[("HEAD", f"/dev/fibo?n={n}", 200, ("HEAD", "/dev/fibo")) for n in (3, 40, 41)],
    *[("GET", f"/dev/fibo?n={bad}", 400, ("GET", "/dev/fibo")) for bad in ("x", "-1", "1001", "")],
    *[("GET", p, 404, ("GET", "unmatched")) for p in ("/dev/nope", "/", "/prod/fibo?n=1")],
    ("HEAD", "/dev/nope", 404, ("HEAD", "unmatched")),
    ("POST", "/dev/fibo?n=1", 405, ("POST", "/dev/fibo")),
    ("GET", "/dev/healthz", 200, ("GET", "/dev/healthz")),
    ("GET", "/dev/readyz", 200, ("GET", "/dev/readyz")),
]


# -- reading a scrape and a process's files ------------------------------------------


def samples(text: str) -> dict[Key, float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(scraped: dict[Key, float], name: str, **labels: str) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


def request_counts(scraped: dict[Key, float]) -> collections.Counter[tuple[str, str, str]]:
    counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for (name, labels), v in scraped.items():
        if name == f"{DURATION}_count":
            d = dict(labels)
            counts[d["http_request_method"], d["http_route"], d["http_response_status_code"]] += (
                int(v)
            )
    return counts


def worker_values(directory: Path, pid: int) -> dict[Key, float]:
    """What one process's files hold, summed as a scrape sums them."""
    files = glob.glob(str(directory / f"*_{pid}.db"))
    return {
        (s.name, frozenset((k, v) for k, v in s.labels.items() if k != "pid")): s.value
        for m in MultiProcessCollector.merge(files)  # type: ignore[no-untyped-call]
        for s in m.samples
    }


def merge_lock(directory: Path) -> Path:
    """The lock file scrapes and archiving take in a multiprocess directory (the one
    file that is not a `.db`; the first scrape makes it)."""
    (lock,) = [p for p in directory.iterdir() if p.suffix != ".db"]
    return lock


def never_went_down(before: dict[Key, float], after: dict[Key, float]) -> list[str]:
    """Counter and histogram samples that are lower (or gone) in `after`."""
    down = []
    for key, v in before.items():
        name = key[0]
        if name.endswith(("_total", "_count", "_sum", "_bucket")) and after.get(key, -1) < v:
            down.append(f"{name}{dict(key[1])}: {v} -> {after.get(key)}")
    return down
