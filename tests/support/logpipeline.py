"""A model of what k8s/logging does to a line the service prints, and the rules
Elasticsearch holds the result to: the tests' one copy of both.

1. containerd writes the line as ``<RFC3339Nano time> <stream> <F|P> <text>``,
   cutting lines longer than 16 KiB into partial (``P``) pieces (containerd_lines);
2. Fluent Bit's built-in ``cri`` multiline parser splits that with its regular
   expression (the same one, below) and joins partial pieces into ``log``
   (cri_records);
3. the kubernetes filter with ``Merge_Log On`` / ``Keep_Log Off`` parses ``log`` as
   JSON, lifts its keys to the top level and drops ``log`` (merge_log);
4. the es output adds ``@timestamp`` and (``Replace_Dots On``) turns dots in keys
   into underscores; Elasticsearch maps each field by the first type it sees
   (json_type, type_conflicts, int64_overflows).

The field types are the index template's (FIELD_TYPES); QUERY_FIELDS and
PIPELINE_FIELDS are what the Kibana saved searches and the README's KQL may use.
tests/test_log_contract.py holds the real service's records to all of it,
tests/test_logpipeline.py shows the checks catch what Elasticsearch rejects.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from tests.support.repo import REPO_ROOT

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
INDEX_TEMPLATE = REPO_ROOT / "k8s" / "logging" / "elasticsearch" / "index-template.json"
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
        "errmsg", "trace_id",
    )
}  # fmt: skip
# Fields the pipeline adds (kubernetes filter with Labels On, es output), named as
# they are after Replace_Dots (the label app.kubernetes.io/instance becomes
# app_kubernetes_io/instance). test_fluent_bit_config.py checks those settings.
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
