"""How long an Elasticsearch outage the log pipeline survives without losing a
line (issue 11; docs/log-buffering.md), derived from the real service.

- Bytes per line B: the PROD run's real `start` and `end` records, merged as the
  kubernetes filter merges them, with the pod metadata it adds (from the rendered
  PROD Deployment), encoded as Fluent Bit stores them in a chunk (msgpack
  [[event time, metadata], record]); chunks hold records after the filters.
- Lines per second N: one PROD pod at its CPU limit (1 CPU) serving cached
  requests, the cheapest there are, so the most lines per CPU second: the records
  per request of the PROD run times 10^6 / server CPU microseconds per request
  measured by `make bench` (bench/results/latest.json).
- Outage survived T = storage.total_limit_size of our output / (N x B).

docs/log-buffering.md states these numbers; the test fails when they drift.
"""

from __future__ import annotations

import json
import re
import struct
import time
from collections import Counter
from typing import Any

import msgpack
import pytest
import yaml

from tests.support.kube import render
from tests.support.logmanifests import parse_size
from tests.support.logpipeline import containerd_lines, cri_records, merge_log
from tests.support.repo import REPO_ROOT
from tests.test_log_contract import corpus  # noqa: F401 (fixture)

DOC = REPO_ROOT / "docs" / "log-buffering.md"
BENCH = REPO_ROOT / "bench" / "results" / "latest.json"
PIPELINE = REPO_ROOT / "k8s" / "logging" / "fluent-bit.yaml"


def kubernetes_metadata() -> dict[str, Any]:
    """What the kubernetes filter (Labels On, Annotations Off) adds to a PROD record,
    with realistic lengths: names from the rendered Deployment, ids at full size."""
    (deploy,) = [o for o in render(REPO_ROOT / "k8s" / "overlays" / "prod")
                 if o["kind"] == "Deployment"]  # fmt: skip
    template = deploy["spec"]["template"]
    (container,) = template["spec"]["containers"]
    labels = {**template["metadata"]["labels"], "pod-template-hash": "7c9d8f6b5d"}
    image = "registry.example.com/fiboserver:0.1.0-54aec29"
    return {
        "pod_name": f"{deploy['metadata']['name']}-7c9d8f6b5d-x2x9q",
        "namespace_name": deploy["metadata"]["namespace"],
        "pod_id": "0f3e2d1c-4b5a-6978-8a9b-0c1d2e3f4a5b",
        "labels": labels,
        "host": "ip-10-0-123-45.eu-west-1.compute.internal",
        "pod_ip": "10.0.123.210",
        "container_name": container["name"],
        "docker_id": "e" * 64,
        "container_hash": f"{image.rpartition(':')[0]}@sha256:{'f' * 64}",
        "container_image": image,
    }


def chunk_bytes(record: dict[str, Any]) -> int:
    """Size of one record in a Fluent Bit chunk: [[EventTime, {}], record], the
    event time as msgpack ext type 0 (seconds, nanoseconds)."""
    event_time = msgpack.ExtType(0, struct.pack(">II", int(time.time()), 123456789))
    return len(msgpack.packb([[event_time, {}], record]))


@pytest.fixture(scope="module")
def prod_records(corpus: dict[str, list[tuple[str, str]]]) -> list[dict[str, Any]]:  # noqa: F811
    """The PROD run's request records as the output's chunks hold them."""
    file_lines: list[str] = []
    for stream, line in corpus["PROD"]:
        file_lines += containerd_lines(stream, line, time.time_ns())
    meta = kubernetes_metadata()
    records = [merge_log(r) for r in cri_records(file_lines)]
    return [{**r, "kubernetes": meta} for r in records if "request_id" in r]


def figures(prod_records: list[dict[str, Any]]) -> dict[str, float]:
    # Successful requests: what a busy pod serves (an invalid n adds a WARNING).
    ok = {r["request_id"] for r in prod_records if r["msg"] == "end" and r["status"] == 200}
    per_request = Counter(r["request_id"] for r in prod_records if r["request_id"] in ok)
    lines_per_request = sum(per_request.values()) / len(per_request)
    bytes_per_line = sum(chunk_bytes(r) for r in prod_records) / len(prod_records)
    cpu_us = json.loads(BENCH.read_text())["cached"]["fiboserver"]["server_cpu_us_per_req"]
    lines_per_s = lines_per_request * 1e6 / cpu_us  # one CPU: the PROD pod's limit
    outputs = yaml.safe_load(PIPELINE.read_text())["pipeline"]["outputs"]
    (ours,) = [o for o in outputs if o["logstash_prefix"] == "fiboserver"]
    limit = parse_size(ours["storage.total_limit_size"])
    return {
        "lines_per_request": lines_per_request,
        "bytes_per_line": bytes_per_line,
        "lines_per_s": lines_per_s,
        "limit": limit,
        "outage_s": limit / (lines_per_s * bytes_per_line),
        "outage_s_at_1000": limit / (1000 * bytes_per_line),
    }


def test_prod_writes_start_and_end_per_request(prod_records: list[dict[str, Any]]) -> None:
    # INFO and up in PROD: the access log's two records per successful request;
    # a refused n adds its WARNING, and so does a request the HTTP layer refuses.
    assert {r["msg"] for r in prod_records} == {
        "start",
        "end",
        "fibo calculate failed",
        "request refused",
    }
    assert figures(prod_records)["lines_per_request"] == 2


def doc_number(pattern: str) -> float:
    m = re.search(pattern, " ".join(DOC.read_text().split()))  # lines joined
    assert m, f"{DOC.name} lacks {pattern!r}"
    return float(m[1].replace(",", ""))


def test_the_documented_outage_arithmetic_holds(
    prod_records: list[dict[str, Any]], capsys: Any
) -> None:
    got = figures(prod_records)
    with capsys.disabled():
        print(f"\n[buffering] {got}", end="")
    # The document's figures, rounded as written there, within 10 %.
    documented = {
        "bytes_per_line": doc_number(r"B = ([\d,]+) bytes"),
        "lines_per_s": doc_number(r"N = ([\d,]+) lines/s"),
        "outage_s": doc_number(r"T = [^=\n]+= ([\d.]+) minutes") * 60,
        "outage_s_at_1000": doc_number(r"at 1,000 lines/s[^.]*?([\d.]+) hours") * 3600,
    }
    for name, value in documented.items():
        assert abs(value - got[name]) <= 0.1 * got[name], (name, value, got[name])
    assert doc_number(r"storage\.total_limit_size` of ([\d.]+) GB") * 1e9 == got["limit"]
    # And what it is for: a realistic outage (an Elasticsearch restart or upgrade,
    # a few minutes) at the worst rate is covered several times over.
    assert got["outage_s"] >= 10 * 60


def test_retry_window_of_other_namespaces() -> None:
    """60 retries with waits uniform in [base, cap] (+1 s; the first capped lower):
    the document's mean and 99.9 % lower bound for the k8s-* output."""
    config = yaml.safe_load(PIPELINE.read_text())
    base, cap = int(config["service"]["scheduler.base"]), int(config["service"]["scheduler.cap"])
    outputs = config["pipeline"]["outputs"]
    (other,) = [o for o in outputs if o["logstash_prefix"] != "fiboserver"]
    retries = int(other["retry_limit"])
    # Retry n waits uniform(base, min(cap, (2 base)^n)) + 1 (flb_scheduler.c).
    bounds = [(base, min(cap, (2 * base) ** n)) for n in range(1, retries + 1)]
    mean = sum((lo + hi) / 2 + 1 for lo, hi in bounds)
    sd = sum((hi - lo) ** 2 / 12 for lo, hi in bounds) ** 0.5
    low = mean - 3.1 * sd  # one-sided 99.9 % (normal approximation of the sum)
    assert abs(doc_number(r"on average ([\d.]+) minutes") * 60 - mean) <= 60
    assert abs(doc_number(r"at least ([\d.]+) minutes with 99\.9") * 60 - low) <= 60
