"""The benchmark harness (bench/, `make bench`) still measures what it says it does.

No timings are asserted here: these tests check that the ceiling and the Flask
floor answer exactly like the service under the very same gunicorn settings,
and that wrk's scripts report what the harness parses. They start real
gunicorn masters on loopback ports, as `make bench` does.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import require_tool

from bench.run import (
    CEILING_APP,
    FLASK_FLOOR_APP,
    PROD_CONFIG,
    RANDOM_LUA,
    SUMMARY_LUA,
    Bench,
    Server,
    WrkSettings,
    balanced,
    check_same_response,
    check_same_settings,
    run_wrk,
    running,
)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    tmp = tmp_path_factory.mktemp("bench")
    bench = Bench(argparse.Namespace(), tmp, yaml.safe_load(PROD_CONFIG.read_text()))
    started = {
        "service": bench.server("service", bench.config("service")),
        "ceiling": bench.server("ceiling", bench.config("ceiling"), CEILING_APP),
        "floor": bench.server("floor", bench.config("floor"), FLASK_FLOOR_APP),
    }
    with running(*started.values()):
        yield started


@pytest.mark.parametrize("other", ["ceiling", "floor"])
def test_same_gunicorn_settings(servers: dict[str, Server], other: str) -> None:
    settings = check_same_settings(servers["service"], servers[other])
    assert settings["worker_class"] == "fiboserver.worker.DrainingThreadWorker"
    assert int(settings["threads"]) >= 1


@pytest.mark.parametrize("other", ["ceiling", "floor"])
@pytest.mark.parametrize("n", [0, 1, 30, 1000, 100_000])
def test_same_response(servers: dict[str, Server], other: str, n: int) -> None:
    # Body byte for byte, status and header names: what wrk's bytes would differ in.
    check_same_response(servers["service"], servers[other], f"/prod/fibo?n={n}")


def test_service_logs_its_requests_as_deployed(servers: dict[str, Server]) -> None:
    service = servers["service"]
    status, headers, _ = service.get("/prod/fibo?n=30")
    assert status == 200
    rid = headers["X-Request-ID"]
    end = f'"msg": "end", "request_id": "{rid}"'
    # `end` is written once the response is sent, so it may follow the client's read.
    deadline = time.monotonic() + 10
    while end not in (text := Path(service.log_path).read_text()) and time.monotonic() < deadline:
        time.sleep(0.01)
    # PROD logging is on in the benchmarked service: both access records are there.
    assert f'"msg": "start", "request_id": "{rid}"' in text
    assert end in text


@pytest.mark.parametrize("script", [SUMMARY_LUA, RANDOM_LUA])
def test_wrk_scripts_report_a_summary(servers: dict[str, Server], script: str) -> None:
    require_tool("wrk")
    ceiling = servers["ceiling"]
    path = "/prod/fibo?n=30" if script == SUMMARY_LUA else "/prod/fibo"
    args = [] if script == SUMMARY_LUA else ["100000", "/prod", "1"]
    ws = WrkSettings(threads=1, connections=2, duration_s=1, warmup_s=0, rounds=1)
    result = run_wrk(f"http://127.0.0.1:{ceiling.port}{path}", ws, 1, script, args)
    assert result["requests"] > 0
    assert result["err_status"] == 0
    assert 0 < result["p50_us"] <= result["p99_us"] <= result["max_us"]


def test_balanced() -> None:
    assert balanced([0.9, 0.8])
    assert not balanced([1.0, 0.0])
    assert not balanced([0.0, 1.04])
    assert balanced([0.95])
