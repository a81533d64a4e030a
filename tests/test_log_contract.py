"""The service's real log lines survive the Fluent Bit -> Elasticsearch pipeline.

The real service runs under gunicorn (DEV and PROD, plus two start-ups that fail
on a bad configuration); requests include errors. Every line it prints is then
taken through what k8s/logging does to it (the model in tests/support/logpipeline.py:
containerd's CRI file, Fluent Bit's ``cri`` parser, the kubernetes filter's
``Merge_Log On`` / ``Keep_Log Off``).

The checks are what keeps Elasticsearch from rejecting records: every line merges,
nothing collides with the pipeline's own keys, every key keeps one JSON type
(int and float differ, bool is not int), and every integer fits a `long`. And the
fields that the Kibana saved searches and the README's KQL use exist with the
types those queries need (``QUERY_FIELDS``, shared with test_kibana_objects.py).

Then a real engine judges them: every record goes to OpenSearch 2.19.6 in one
``_bulk`` request as Fluent Bit's es output sends it (tests/support/esoutput.py),
with zero item errors and the template's types in ``_mapping``, and each saved
search runs as a query (tests/support/kql.py) and finds exactly its records.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.support import kql
from tests.support.clients import exchange, parse_response
from tests.support.esoutput import bulk_body, doc_id, shipped
from tests.support.logpipeline import (
    FIELD_TYPES,
    INDEX_TEMPLATE,
    LEVELS,
    PIPELINE_ADDED,
    QUERY_FIELDS,
    containerd_lines,
    cri_records,
    int64_overflows,
    json_type,
    keys_anywhere,
    merge_log,
    type_conflicts,
)
from tests.support.opensearch import OpenSearch, template_for_opensearch
from tests.support.repo import REPO_ROOT
from tests.support.serverproc import ServerProcess

# The X-Request-ID `drive` sends once: the records of that one request carry it.
CUSTOM_ID = "contract-test.0001_A"
SAVED_OBJECTS = REPO_ROOT / "k8s" / "logging" / "kibana" / "saved-objects.ndjson"
# The W3C trace context `drive` sends once: that request's records carry its ids.
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


# --- the corpus: every line of real runs ---------------------------------------------


class Client(Protocol):
    """What `drive` sends requests through: a ServerProcess, or the cluster's edge."""

    def get(
        self, path: str, headers: Mapping[str, str] | None = ..., method: str = ...
    ) -> tuple[int, Any, bytes]: ...


def drive(srv: Client, prefix: str) -> set[int]:
    """Requests of every kind, errors included; returns the statuses seen."""
    p = prefix
    requests: list[tuple[str, str, dict[str, str]]] = [
        ("GET", f"{p}/fibo?n=10", {}),  # cache miss, stored
        ("GET", f"{p}/fibo?n=10", {}),  # cache hit
        ("GET", f"{p}/fibo?n=0", {}),
        ("GET", f"{p}/fibo?n=1", {}),
        ("GET", f"{p}/fibo?n=100000", {}),  # largest n: 20899 digits, value elided in the log
        ("GET", f"{p}/fibo?n=100001", {}),  # above maxseq: 400
        ("GET", f"{p}/fibo?n=30x", {}),
        ("GET", f"{p}/fibo?n=1e3", {}),
        ("GET", f"{p}/fibo?n=3.0", {}),
        ("GET", f"{p}/fibo?n=%2B-1", {}),
        ("GET", f"{p}/fibo?n=-1", {}),
        ("GET", f"{p}/fibo?n=", {}),
        ("GET", f"{p}/fibo", {}),
        ("HEAD", f"{p}/fibo?n=12", {}),
        ("POST", f"{p}/fibo?n=5", {}),  # 405
        ("GET", f"{p}/nope", {}),  # 404
        ("GET", "/elsewhere/fibo?n=5", {}),  # outside the prefix: 404
        ("GET", f"{p}/healthz", {}),
        ("GET", f"{p}/readyz", {}),
        ("GET", f"{p}/fibo?n=20", {"X-Request-ID": CUSTOM_ID}),
        ("GET", f"{p}/fibo?n=21", {"X-Request-ID": "x" * 200}),  # invalid: a new id
        ("GET", f"{p}/fibo?n=22", {"X-Request-ID": "bad id!"}),
        ("GET", f"{p}/fibo?n=23", {"traceparent": TRACEPARENT, "tracestate": "vendor=x"}),
    ]
    statuses: set[int] = set()
    for method, path, headers in requests:
        status, _, _ = srv.get(path, headers=headers, method=method)
        statuses.add(status)
    return statuses


def refused_by_the_http_layer(port: int) -> set[int]:
    """Requests the server refuses before the app, one `request refused` record
    each; sent to the server itself (an edge in front would refuse them first)."""
    statuses: set[int] = set()
    for raw in (b"GARBAGE\r\n\r\n", b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n"):
        answer, _ = exchange(port, raw)
        statuses.add(parse_response(answer)[0])
    return statuses


def run_service(tmp: Path, env: str, **config: object) -> tuple[list[tuple[str, str]], set[int]]:
    settings = {"env": env, "maxseq": 100000, **config}
    with ServerProcess(settings, tmp, env={"WEB_CONCURRENCY": "2"}) as srv:
        srv.wait_for("server start", timeout=30)
        statuses = drive(srv, "/" + env.lower()) | refused_by_the_http_layer(srv.port)
        srv.wait_for("end", where=lambda r: r.get("request_id") == CUSTOM_ID, timeout=10)
        srv.terminate(signal.SIGTERM)
        assert srv.wait(30) == 0, srv.output()
        return list(srv.lines), statuses


def run_bad_config(tmp: Path, config: dict[str, object] | None) -> list[tuple[str, str]]:
    with ServerProcess(config, tmp, name="bad.yaml") as srv:
        rc = srv.wait(30)
        assert rc == 78, srv.output()  # EX_CONFIG
        return list(srv.lines)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[str, str]]]:
    """Every (stream, line) each run printed, in order."""
    runs: dict[str, list[tuple[str, str]]] = {}
    for env in ("DEV", "PROD"):
        lines, statuses = run_service(tmp_path_factory.mktemp(env.lower()), env)
        # The runs really covered successes and client errors.
        assert {200, 400, 404, 405, 414} <= statuses, statuses
        runs[env] = lines
    # Faults on (README "Fault injection"): `end` records with `fault`, both values.
    # Delays of 0 to 400 ms: the slow-requests search (duration_ms > 100) must find
    # some; each delayed request is over 100 ms with p = 3/4, so none of the run's
    # delayed fibo requests being slow has a chance below 1e-4.
    lines, statuses = run_service(
        tmp_path_factory.mktemp("faults"), "DEV", fault_delay_ms=400, fault_error_ratio=0.5
    )
    assert 500 in statuses, statuses
    runs["DEV with faults"] = lines
    runs["unknown key"] = run_bad_config(
        tmp_path_factory.mktemp("bad1"), {"env": "DEV", "maxseq": 10, "bogus": 1}
    )
    runs["no config"] = run_bad_config(tmp_path_factory.mktemp("bad2"), None)
    return runs


@pytest.fixture(scope="module")
def cri_files(corpus: dict[str, list[tuple[str, str]]]) -> dict[str, list[str]]:
    """Each run's lines as containerd's CRI logger writes them into the container's
    log file. (tests/cluster/test_cri_logs.py runs the contract on the kubelet's
    real files under /var/log/pods instead.)"""
    return {
        run: [f for stream, line in lines for f in containerd_lines(stream, line, time.time_ns())]
        for run, lines in corpus.items()
    }


@pytest.fixture(scope="module")
def merged(cri_files: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Every line as Elasticsearch receives it (before Replace_Dots and @timestamp)."""
    out: list[dict[str, Any]] = []
    for file_lines in cri_files.values():
        assert file_lines
        out += [merge_log(r) for r in cri_records(file_lines)]
    return out


# --- the contract --------------------------------------------------------------------------


def test_every_line_merges(cri_files: dict[str, list[str]], merged: list[dict[str, Any]]) -> None:
    # merge_log already failed on any line that is not a JSON object or collides;
    # every line printed (one final `F` piece each) became one record.
    finals = [ln for lines in cri_files.values() for ln in lines if ln.split(" ", 3)[2] == "F"]
    assert len(merged) == len(finals)
    for record in merged:
        assert record["_p"] == "F" and record["stream"] in {"stdout", "stderr"}
        assert {"ts", "level", "logger", "msg"} <= set(record), record
        assert json_type(record["ts"]) == "date", record  # one `date` field in ES
        assert record["level"] in LEVELS, record


def test_no_key_collides_or_changes_name(merged: list[dict[str, Any]]) -> None:
    for record in merged:
        app_keys = [k for k in record if k not in {"time", "stream", "_p"}]
        for key in [*app_keys, *keys_anywhere({k: record[k] for k in app_keys})]:
            assert key.strip(), f"empty key in {record}"
            # Replace_Dots would rename it, and queries by the logged name would miss.
            assert "." not in key, f"dotted key {key!r} in {record}"
        for key in app_keys:
            # Elasticsearch reserves _-prefixed names for its metadata fields.
            assert not key.startswith("_"), f"{key!r} in {record}"


def test_each_key_keeps_one_type(merged: list[dict[str, Any]]) -> None:
    conflicts = type_conflicts(merged)
    assert not conflicts, f"keys with more than one JSON type (type: first msg): {conflicts}"


def test_integers_fit_int64(merged: list[dict[str, Any]]) -> None:
    assert not int64_overflows(merged)


def test_query_fields_exist_with_their_types(merged: list[dict[str, Any]]) -> None:
    for field, wanted in QUERY_FIELDS.items():
        values = [r[field] for r in merged if field in r]
        assert values, f"no record has {field!r}"
        for value in values:
            assert json_type(value) == wanted, f"{field}={value!r}"


def test_every_field_has_its_template_type(merged: list[dict[str, Any]]) -> None:
    """Every key the service writes is pinned in the index template, with the type
    its values have: a new log key needs its line in index-template.json."""
    unpinned: dict[str, str] = {}
    wrong: list[str] = []
    for record in merged:
        for key, value in record.items():
            if key in PIPELINE_ADDED:
                continue
            if key not in FIELD_TYPES:
                unpinned.setdefault(key, str(record.get("msg")))
            elif json_type(value) != FIELD_TYPES[key]:
                wrong.append(f"{key}={value!r} is {json_type(value)}, template: {FIELD_TYPES[key]}")
    assert not unpinned, f"keys not in {INDEX_TEMPLATE.name} (key: first msg): {unpinned}"
    assert not wrong, wrong
    # The ones the issue names, as it names them.
    expected = {"status": "int", "duration_ms": "float", "key": "int", "value": "string",
                "request_id": "string", "ts": "date", "fault": "string", "trace_id": "string",
                "span_id": "string"}  # fmt: skip
    assert {k: FIELD_TYPES[k] for k in expected} == expected


def test_records_the_queries_look_for(merged: list[dict[str, Any]]) -> None:
    # `request_id : "<id>"` finds every record of the request: DEV logs start,
    # cache miss, cache fibo and end for an uncached n, all with the client's id.
    ours = [r for r in merged if r.get("request_id") == CUSTOM_ID]
    assert {"start", "end"} <= {r["msg"] for r in ours}
    assert {"cache miss", "cache fibo"} <= {r["msg"] for r in ours}
    # `trace_id : "<id>"` finds the records of a traced request, from start to end
    # (no exporter here: the span id is the caller's).
    traced = [r for r in merged if r.get("trace_id") == TRACE_ID]
    assert {"start", "cache miss", "cache fibo", "end"} <= {r["msg"] for r in traced}
    assert {r["span_id"] for r in traced} == {PARENT_ID}
    # The slow-requests search: `msg : "end" and duration_ms > <n>`.
    ends = [r for r in merged if r["msg"] == "end"]
    assert ends and all(isinstance(r["duration_ms"], float) for r in ends)
    assert all(isinstance(r["status"], int) for r in ends)
    # Injected faults: `msg : "end" and fault : "error"` (or "delay").
    faulted = [r for r in ends if "fault" in r]
    assert {r["fault"] for r in faulted} == {"delay", "error"}
    assert all(r["path"].endswith("/fibo") for r in faulted)
    assert {r["status"] for r in faulted if r["fault"] == "error"} == {500}
    # The errors-and-warnings search: invalid n is logged as a WARNING with errmsg.
    failed = [r for r in merged if r["msg"] == "fibo calculate failed"]
    assert failed and all(r["level"] == "WARNING" and r["errmsg"] for r in failed)
    # The HTTP layer's refusals are WARNINGs with the types of `end`'s keys.
    refused = [r for r in merged if r["msg"] == "request refused"]
    assert {r["status"] for r in refused} >= {400, 414}
    for r in refused:
        assert r["level"] == "WARNING" and isinstance(r["duration_ms"], float)
        assert isinstance(r["errmsg"], str) and isinstance(r["request_id"], str)
    # A configuration error is one ERROR/CRITICAL record (both runs that refused).
    assert sum(r["level"] in {"ERROR", "CRITICAL"} for r in merged) >= 2


# --- the real engine: Fluent Bit's bulk requests and the saved searches --------------
# OpenSearch 2.19.6 (tests/support/opensearch.py) with the index template installed
# as `make elasticsearch-setup` installs it, minus the ILM setting OpenSearch does
# not know (tests/test_elasticsearch_setup.py proves that is the only refusal).


@pytest.fixture(scope="module")
def indexed(
    opensearch: OpenSearch, cri_files: dict[str, list[str]]
) -> list[tuple[str, dict[str, Any]]]:
    """Every record shipped to OpenSearch as the es output does; (index, document).
    Into empty indices: a second setup of this module's fixtures (tests selected
    one by one, as `make mutate` gives them, or a rerun) ships a new corpus, and
    the searches must find this one only."""
    opensearch.ok("DELETE", "/fiboserver-*")
    opensearch.ok("PUT", "/_index_template/fiboserver", template_for_opensearch())
    docs: list[tuple[str, dict[str, Any]]] = []
    for run, file_lines in cri_files.items():
        instance = "fiboserver-prod" if run == "PROD" else "fiboserver-dev"
        pod = f"{instance}-6d9f7c-{run.split()[0].lower()}"
        docs += [shipped(merge_log(r), instance, pod) for r in cri_records(file_lines)]
    status, answer = opensearch.request("POST", "/_bulk?refresh=true", bulk_body(docs), True)
    assert status == 200, answer
    errors = [item["create"] for item in answer["items"] if "error" in item["create"]]
    assert not errors and answer["errors"] is False, errors[:5]
    assert [item["create"]["status"] for item in answer["items"]] == [201] * len(docs)
    return docs


def test_bulk_lands_with_the_template_types(
    opensearch: OpenSearch, indexed: list[tuple[str, dict[str, Any]]]
) -> None:
    count = opensearch.ok("GET", "/fiboserver-*/_count")["count"]
    assert count == len(indexed)
    props = json.loads(INDEX_TEMPLATE.read_text())["template"]["mappings"]["properties"]
    for index in {index for index, _ in indexed}:
        mapping = opensearch.ok("GET", f"/{index}/_mapping")[index]["mappings"]["properties"]
        for name, spec in props.items():
            if "properties" in spec:  # kubernetes: its pinned subfields
                for sub, subspec in spec["properties"].items():
                    assert mapping[name]["properties"][sub]["type"] == subspec["type"], sub
            elif name in mapping:  # a field no record had is not mapped yet
                assert mapping[name]["type"] == spec["type"], (name, mapping[name])
        # Every field the records brought is one of the template's or the pipeline's.
        assert set(mapping) - set(props) == {"_p"}, set(mapping) - set(props)
        labels = mapping["kubernetes"]["properties"]["labels"]["properties"]
        assert labels["app_kubernetes_io/instance"]["type"] == "keyword"  # Replace_Dots


def saved_queries() -> list[tuple[str, str]]:
    """(title, KQL) of every saved search."""
    out: list[tuple[str, str]] = []
    for line in SAVED_OBJECTS.read_text().splitlines():
        obj = json.loads(line)
        if obj["type"] == "search":
            source = json.loads(obj["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])
            assert source["query"]["language"] == "kuery" and not source["filter"], obj["id"]
            out.append((obj["attributes"]["title"], source["query"]["query"]))
    assert out
    return out


@pytest.mark.parametrize(("title", "query"), saved_queries(), ids=lambda v: str(v)[:40])
def test_saved_search_finds_its_records(
    opensearch: OpenSearch, indexed: list[tuple[str, dict[str, Any]]], title: str, query: str
) -> None:
    clauses = kql.parse(query)
    body = {"query": kql.to_dsl(clauses), "size": 10000, "_source": False}
    hits = opensearch.ok("POST", "/fiboserver-*/_search", body)["hits"]
    found = {hit["_id"] for hit in hits["hits"]}
    ids = {doc_id(doc): doc for _, doc in indexed}
    expected = {doc_id for doc_id, doc in ids.items() if kql.matches(clauses, doc)}
    # The search selects: it finds some records and not all of them.
    assert 0 < len(expected) < len(ids), (title, len(expected))
    assert found == expected, (title, len(found), len(expected))


def test_kql_translator_refuses_what_it_does_not_know() -> None:
    for query in ('level : "ERROR" or level : "WARNING"', "not level : \"INFO\"",
                  "level : ERROR", 'msg : "a" and (level : "b")', 'ts > "2024-01-01"'):  # fmt: skip
        with pytest.raises(kql.UnsupportedKql):
            kql.parse(query)
