"""The service's real log lines survive the Fluent Bit -> Elasticsearch pipeline.

The real service runs under gunicorn (DEV and PROD, plus two start-ups that fail
on a bad configuration); requests include errors. Every line it prints is then
taken through what k8s/logging does to it:

1. containerd writes it as ``<RFC3339Nano time> <stream> <F|P> <text>``, cutting
   lines longer than 16 KiB into partial (``P``) pieces;
2. Fluent Bit's built-in ``cri`` multiline parser splits that with its regular
   expression (the same one, below) and joins partial pieces into ``log``;
3. the kubernetes filter with ``Merge_Log On`` / ``Keep_Log Off`` parses ``log`` as
   JSON, lifts its keys to the top level and drops ``log``;
4. the es output adds ``@timestamp`` and (``Replace_Dots On``) turns dots in keys
   into underscores; Elasticsearch maps each field by the first type it sees.

The checks are what keeps step 4 from rejecting records: every line merges,
nothing collides with the pipeline's own keys, every key keeps one JSON type
(int and float differ, bool is not int), and every integer fits a `long`. And the
fields that the Kibana saved searches and the README's KQL use exist with the
types those queries need (``QUERY_FIELDS``, shared with test_kibana_objects.py).
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import pytest
from clients import exchange, parse_response
from serverproc import ServerProcess

# FLB_ML_CRI_REGEX from fluent/fluent-bit src/multiline/flb_ml_parser_cri.c (the
# built-in `cri` multiline parser), with Onigmo's (?<name>) written as Python's
# (?P<name>). Its time format there is "%Y-%m-%dT%H:%M:%S.%L%z"; `time` is kept.
CRI_REGEX = re.compile(r"^(?P<time>.+?) (?P<stream>stdout|stderr) (?P<_p>F|P) (?P<log>.*)$")
# containerd's default max_container_log_line_size: longer lines become P pieces.
CRI_MAX_LINE = 16384

# Keys the pipeline writes itself: the cri parser (time, stream, _p, log), the
# kubernetes filter (kubernetes) and the es output (@timestamp). A log record with
# one of them would produce a duplicate key, which Elasticsearch rejects.
PIPELINE_KEYS = frozenset({"time", "stream", "_p", "log", "@timestamp", "kubernetes"})

# THE type table: the index template that `make kibana-import` installs for
# fiboserver-* pins each field's Elasticsearch type, and the checks below hold the
# service's records to it, read from that one file. Elasticsearch type -> the JSON
# type (json_type below) a record's value must have for it.
INDEX_TEMPLATE = (
    Path(__file__).resolve().parent.parent
    / "k8s"
    / "logging"
    / "elasticsearch"
    / "index-template.json"
)
JSON_TYPE_OF = {
    "keyword": "string", "text": "string", "long": "int", "float": "float",
    "double": "float", "date": "date", "date_nanos": "date", "boolean": "bool",
}  # fmt: skip
# Keys the pipeline adds (cri parser, kubernetes filter, es output), not the service.
PIPELINE_ADDED = frozenset({"time", "stream", "_p", "@timestamp", "kubernetes"})


def template_field_types() -> dict[str, str]:
    """The service's fields in the index template: name -> JSON type."""
    template = json.loads(INDEX_TEMPLATE.read_text())
    properties = template["template"]["mappings"]["properties"]
    return {
        name: JSON_TYPE_OF[spec["type"]]
        for name, spec in properties.items()
        if name not in PIPELINE_ADDED
    }


FIELD_TYPES = template_field_types()
# Fields of the service's records that the saved searches
# (k8s/logging/kibana/saved-objects.ndjson) and the README's KQL examples use;
# their types are the template's (`duration_ms > 100` needs a number that keeps
# its fraction: float; `level : "ERROR"` a string; ...).
QUERY_FIELDS: dict[str, str] = {
    name: FIELD_TYPES[name]
    for name in (
        "level", "logger", "msg", "request_id", "method", "path", "status", "duration_ms",
        "errmsg",
    )
}  # fmt: skip
# Fields the pipeline adds (kubernetes filter with Labels On, es output), named as
# they are after Replace_Dots (the label app.kubernetes.io/instance becomes
# app_kubernetes_io/instance). test_logging_manifests.py checks those settings.
PIPELINE_FIELDS = frozenset(
    {
        "@timestamp",
        "stream",
        "kubernetes.namespace_name",
        "kubernetes.pod_name",
        "kubernetes.container_name",
        "kubernetes.labels.app_kubernetes_io/name",
        "kubernetes.labels.app_kubernetes_io/instance",
    }
)
LEVELS = frozenset({"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"})
INT64 = (-(2**63), 2**63 - 1)
CUSTOM_ID = "contract-test.0001_A"


# Elasticsearch's default dynamic_date_formats: strict_date_optional_time
# (exactly four year digits), "yyyy/MM/dd HH:mm:ss Z" and "yyyy/MM/dd Z". A new
# string field whose first value matches becomes a `date` field, and later
# non-date strings in it are rejected; strings that parse as numbers are exempt
# (elastic/elasticsearch#22171).
ES_DATE = re.compile(
    r"\d{4}(-\d{2}(-\d{2}(T\d{2}(:\d{2}(:\d{2}([.,]\d{1,9})?)?)?(Z|[+-]\d{2}(:?\d{2})?)?)?)?)?"
    r"|\d{4}/\d{2}/\d{2}( \d{2}:\d{2}:\d{2})? [+-]\d{4}"
)


def looks_like_es_date(text: str) -> bool:
    try:
        float(text)
        return False
    except ValueError:
        return ES_DATE.fullmatch(text) is not None


def json_type(value: object) -> str:
    """Elasticsearch-relevant JSON type: bool, int and float are three types, and a
    string that dynamic date detection takes for a date is a `date`."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "date" if looks_like_es_date(value) else "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    assert value is None, type(value)
    return "null"


def containerd_lines(stream: str, line: str, now_ns: int) -> list[str]:
    """`line` as containerd's CRI logger writes it to the container's log file."""
    secs, nanos = divmod(now_ns, 10**9)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{nanos:09d}Z"
    data = line.encode()
    pieces = [data[i : i + CRI_MAX_LINE] for i in range(0, len(data), CRI_MAX_LINE)] or [b""]
    return [
        f"{stamp} {stream} {'F' if i == len(pieces) - 1 else 'P'} "
        + piece.decode(errors="surrogateescape")
        for i, piece in enumerate(pieces)
    ]


def cri_records(file_lines: list[str]) -> list[dict[str, str]]:
    """What the `cri` multiline parser emits: one record per F line, P pieces joined."""
    records: list[dict[str, str]] = []
    pending: dict[str, str] = {}
    for raw in file_lines:
        m = CRI_REGEX.match(raw)
        assert m, f"cri regex does not match: {raw[:200]!r}"
        fields = m.groupdict()
        key = fields["stream"]
        pending[key] = pending.get(key, "") + fields["log"]
        if fields["_p"] == "F":
            records.append({**fields, "log": pending.pop(key)})
    assert not pending, "partial line without its final piece"
    return records


class MergeError(ValueError):
    """The line would reach Elasticsearch unmerged, or with a duplicate key."""


def merge_log(record: dict[str, str]) -> dict[str, Any]:
    """The kubernetes filter's Merge_Log On + Keep_Log Off, refusing what would break."""
    text = record["log"].strip()  # Merge_Log_Trim (default on) drops the line end
    try:
        parsed = json.loads(text)
    except ValueError:
        raise MergeError(f"not JSON, would stay an unmerged string: {text[:200]!r}") from None
    if not isinstance(parsed, dict):
        raise MergeError(f"JSON but not an object, cannot merge: {text[:200]!r}")
    clash = PIPELINE_KEYS.intersection(parsed)
    if clash:
        raise MergeError(f"keys {sorted(clash)} collide with the pipeline's in {text[:200]!r}")
    merged: dict[str, Any] = {k: v for k, v in record.items() if k != "log"}
    merged.update(parsed)
    return merged


def leaves(obj: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, value) of every field as Elasticsearch indexes it."""
    for key, value in obj.items():
        path = prefix + key
        if isinstance(value, dict):
            yield path, value
            yield from leaves(value, path + ".")
        elif isinstance(value, list):
            for item in value:
                yield path, item
        else:
            yield path, value


def keys_anywhere(obj: object) -> Iterator[str]:
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield key
            yield from keys_anywhere(value)
    elif isinstance(obj, list):
        for item in obj:
            yield from keys_anywhere(item)


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


def run_service(tmp: Path, env: str) -> tuple[list[tuple[str, str]], set[int]]:
    with ServerProcess({"env": env, "maxseq": 100000}, tmp, env={"WEB_CONCURRENCY": "2"}) as srv:
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


def test_cri_regex_reassembles_long_lines() -> None:
    # A record longer than containerd's line limit arrives in pieces and is joined.
    line = json.dumps({"msg": "x" * (2 * CRI_MAX_LINE + 10)})
    file_lines = containerd_lines("stdout", line, time.time_ns())
    assert [ln.split(" ", 3)[2] for ln in file_lines] == ["P", "P", "F"]
    (record,) = cri_records(file_lines)
    assert record["log"] == line and record["_p"] == "F"


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


def type_conflicts(records: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Paths seen with more than one JSON type: {path: {type: first msg with it}}."""
    seen: dict[str, dict[str, str]] = defaultdict(dict)
    for record in records:
        for path, value in leaves(record):
            kind = json_type(value)
            if kind != "null":  # Elasticsearch maps nothing for null
                seen[path].setdefault(kind, str(record.get("msg")))
    return {path: kinds for path, kinds in seen.items() if len(kinds) > 1}


def int64_overflows(records: list[dict[str, Any]]) -> list[str]:
    return [
        f"{path}={value} in {record.get('msg')!r}"
        for record in records
        for path, value in leaves(record)
        if isinstance(value, int)
        and not isinstance(value, bool)
        and not INT64[0] <= value <= INT64[1]
    ]


def test_each_key_keeps_one_type(merged: list[dict[str, Any]]) -> None:
    conflicts = type_conflicts(merged)
    assert not conflicts, f"keys with more than one JSON type (type: first msg): {conflicts}"


def test_integers_fit_int64(merged: list[dict[str, Any]]) -> None:
    assert not int64_overflows(merged)


def test_the_checks_catch_what_elasticsearch_rejects() -> None:
    """The checks above are not vacuous: each flags the kind of record ES refuses."""

    def one_line(line: str) -> dict[str, Any]:
        (record,) = cri_records(containerd_lines("stdout", line, time.time_ns()))
        return merge_log(record)

    for bad in ("plain text", "[1, 2]", '{"msg": "x", "time": "now"}', '{"log": "x"}'):
        with pytest.raises(MergeError):
            one_line(bad)
    lines = ['{"n": 1}', '{"n": 1.5}', '{"b": true}', '{"b": 0}', '{"o": {"k": 1}}', '{"o": "s"}']
    assert set(type_conflicts([one_line(x) for x in lines])) == {"n", "b", "o"}
    assert type_conflicts([one_line('{"n": 1}'), one_line('{"n": null}')]) == {}
    # A string field first seen holding a date is a date field from then on.
    dates = ['{"d": "2026-11-26T19:00:00.123Z"}', '{"d": "2026-11"}', '{"d": "soon"}']
    assert set(type_conflicts([one_line(x) for x in dates])) == {"d"}
    assert type_conflicts([one_line('{"d": "2026"}'), one_line('{"d": "x"}')]) == {}
    assert len(int64_overflows([one_line('{"n": 9223372036854775808}')])) == 1
    assert int64_overflows([one_line('{"n": -9223372036854775808}')]) == []


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
                "request_id": "string", "ts": "date"}  # fmt: skip
    assert {k: FIELD_TYPES[k] for k in expected} == expected


def test_records_the_queries_look_for(merged: list[dict[str, Any]]) -> None:
    # `request_id : "<id>"` finds every record of the request: DEV logs start,
    # cache miss, cache fibo and end for an uncached n, all with the client's id.
    ours = [r for r in merged if r.get("request_id") == CUSTOM_ID]
    assert {"start", "end"} <= {r["msg"] for r in ours}
    assert {"cache miss", "cache fibo"} <= {r["msg"] for r in ours}
    # The slow-requests search: `msg : "end" and duration_ms > <n>`.
    ends = [r for r in merged if r["msg"] == "end"]
    assert ends and all(isinstance(r["duration_ms"], float) for r in ends)
    assert all(isinstance(r["status"], int) for r in ends)
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
