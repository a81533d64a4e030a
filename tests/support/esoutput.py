"""What Fluent Bit's ``es`` output (k8s/logging/fluent-bit.yaml, the fiboserver
output) sends for a merged record: the last step of tests/support/logpipeline.py's
model, so the tests can ship the service's records to a real engine with ``_bulk``.

The output's settings modelled here, each as that file sets it:

- ``logstash_format on`` / ``logstash_prefix fiboserver``: index
  ``fiboserver-YYYY.MM.DD`` (Logstash_DateFormat ``%Y.%m.%d``) from the record's
  time, and ``@timestamp`` (Time_Key) as ``%Y-%m-%dT%H:%M:%S.<ms>Z``;
- ``replace_dots on``: dots in keys, at any depth, become underscores (the pod
  label ``app.kubernetes.io/instance`` is ``app_kubernetes_io/instance``);
- ``suppress_type_name on``: no ``_type`` in the action line;
- ``generate_id on``: an ``_id`` derived from the record, so a retried chunk does not
  index a record twice; Write_Operation ``create`` (the default).

The kubernetes filter's metadata (``kubernetes``, Labels On) is added here too: the
saved searches show its fields.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import time
from typing import Any

PREFIX = "fiboserver"


def replace_dots(value: Any) -> Any:
    if isinstance(value, dict):
        return {k.replace(".", "_"): replace_dots(v) for k, v in value.items()}
    if isinstance(value, list):
        return [replace_dots(v) for v in value]
    return value


def kubernetes_metadata(instance: str, pod: str) -> dict[str, Any]:
    """The kubernetes filter's map for a pod of the Deployment `instance`."""
    return {
        "pod_name": pod,
        "namespace_name": "cloudnative",
        "container_name": "fiboserver",
        "host": "node-1",
        "labels": {"app.kubernetes.io/name": "fiboserver", "app.kubernetes.io/instance": instance},
    }


def record_time_ns(record: dict[str, Any]) -> int:
    """The event time the cri parser gave the record: its `time` (RFC3339Nano, UTC)."""
    stamp = record["time"]
    seconds, _, fraction = stamp.rstrip("Z").partition(".")
    whole = calendar.timegm(time.strptime(seconds, "%Y-%m-%dT%H:%M:%S"))
    return whole * 10**9 + int(fraction.ljust(9, "0")[:9])


def shipped(record: dict[str, Any], instance: str, pod: str) -> tuple[str, dict[str, Any]]:
    """(index, document) of one merged record as the output writes it."""
    stamp_ns = record_time_ns(record)
    secs, nanos = divmod(stamp_ns, 10**9)
    day = time.strftime("%Y.%m.%d", time.gmtime(secs))
    doc = {**record, "kubernetes": kubernetes_metadata(instance, pod)}
    doc["@timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + (
        f".{nanos // 10**6:03d}Z"
    )
    return f"{PREFIX}-{day}", replace_dots(doc)


def doc_id(doc: dict[str, Any]) -> str:
    """generate_id's role: the same record always gets the same id."""
    source = json.dumps(doc, separators=(",", ":"), sort_keys=True)
    return hashlib.sha1(source.encode()).hexdigest()


def bulk_body(docs: list[tuple[str, dict[str, Any]]]) -> bytes:
    """A `_bulk` request of the documents, one action line and one source line each."""
    lines: list[str] = []
    for index, doc in docs:
        lines.append(json.dumps({"create": {"_index": index, "_id": doc_id(doc)}}))
        lines.append(json.dumps(doc, separators=(",", ":")))
    return ("\n".join(lines) + "\n").encode()
