"""The benchmark harness (bench/, `make bench`) still measures what it says it does.

No timings are asserted here: these tests check that the ceiling and the Flask
floor answer exactly like the service under the very same gunicorn settings,
and that wrk's scripts report what the harness parses. They start real
gunicorn masters on loopback ports, as `make bench` does.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import require_tool
from serverproc import wait_until

from bench.servers import (
    CEILING,
    FLASK_FLOOR,
    SERVICE,
    Bench,
    Server,
    check_same_response,
    check_same_settings,
)
from bench.wrk import WrkSettings, balanced, cached_load, random_load, run_wrk


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    bench = Bench(tmp_path_factory.mktemp("bench"))
    started = {
        "service": bench.server("service", SERVICE),
        "ceiling": bench.server("ceiling", CEILING),
        "floor": bench.server("floor", FLASK_FLOOR),
    }
    with bench.running(*started.values()):
        yield started


@pytest.mark.parametrize("other", ["ceiling", "floor"])
def test_same_gunicorn_settings(servers: dict[str, Server], other: str) -> None:
    settings = check_same_settings([servers["service"], servers[other]])[0]
    assert settings["worker_class"] == "fiboserver.worker.RequestThreadWorker"
    assert int(settings["threads"] or 0) >= 1


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
    log_path = service.log_path
    assert log_path is not None
    # PROD logging is on in the benchmarked service: both access records are there.
    # `end` is written once the answer is sent, so it may come after the client has it.
    end = f'"msg": "end", "request_id": "{rid}"'
    wait_until(lambda: end in log_path.read_text(), 10, "the end record")
    assert f'"msg": "start", "request_id": "{rid}"' in log_path.read_text()


@pytest.mark.parametrize("cached", [True, False])
def test_wrk_scripts_report_a_summary(servers: dict[str, Server], cached: bool) -> None:
    require_tool("wrk")
    load = cached_load("/prod") if cached else random_load("/prod", 100_000, 1)
    ws = WrkSettings(threads=1, connections=2, duration_s=1, warmup_s=0, rounds=1)
    result = run_wrk(servers["ceiling"].port, load, ws, 1)
    assert result["requests"] > 0
    assert result["err_status"] == 0
    assert 0 < result["p50_us"] <= result["p99_us"] <= result["max_us"]


def test_balanced() -> None:
    assert balanced([0.9, 0.8])
    assert not balanced([1.0, 0.0])
    assert not balanced([0.0, 1.04])
    assert balanced([0.95])
