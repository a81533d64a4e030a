"""Kibana saved objects (k8s/logging/kibana/saved-objects.ndjson), the README's KQL
examples, and `make kibana-import`.

The objects must import as Kibana 8.x/9.x exports them (one JSON object per line;
a search points at its data view through `indexRefName` in searchSourceJSON and a
matching entry in `references`), cover the indices Fluent Bit writes, and query only
fields that test_log_contract.py proves the service's records have (QUERY_FIELDS),
or that the pipeline adds (PIPELINE_FIELDS).
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections.abc import Iterator
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
import test_log_contract as contract
import yaml
from conftest import require_tool
from kube import REPO_ROOT

NDJSON = REPO_ROOT / "k8s" / "logging" / "kibana" / "saved-objects.ndjson"
PIPELINE = REPO_ROOT / "k8s" / "logging" / "fluent-bit.yaml"
README = REPO_ROOT / "README.md"
REF_NAME = "kibanaSavedObjectMeta.searchSourceJSON.index"
ALLOWED_FIELDS = set(contract.QUERY_FIELDS) | contract.PIPELINE_FIELDS
# What the issue asks the README to show, verbatim.
REQUIRED_KQL = [
    'kubernetes.namespace_name : "cloudnative" and level : "ERROR"',
    'request_id : "<id>"',
    'kubernetes.labels.app_kubernetes_io/instance : "fiboserver-prod" and duration_ms > 100',
]


def kql_fields(query: str) -> set[str]:
    """Field names in a KQL query: what stands before `:`, `<`, `<=`, `>`, `>=`."""
    unquoted = re.sub(r'"(?:[^"\\]|\\.)*"', '""', query)
    return set(re.findall(r"([A-Za-z_@][\w.@/-]*)\s*(?::|<=|>=|<|>)", unquoted))


def test_kql_fields_parser() -> None:
    assert kql_fields('a.b/c : "x:y" and not d >= 3 or (e:1)') == {"a.b/c", "d", "e"}
    assert kql_fields('level : ("WARNING" or "ERROR")') == {"level"}


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    lines = NDJSON.read_text().splitlines()
    assert lines and all(line.strip() for line in lines), "one object per line, no blanks"
    parsed = [json.loads(line) for line in lines]
    assert all(isinstance(o, dict) for o in parsed)
    ids = [(o["type"], o["id"]) for o in parsed]
    assert len(ids) == len(set(ids)), "duplicate ids"
    return parsed


@pytest.fixture(scope="module")
def data_view(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (view,) = [o for o in objects if o["type"] == "index-pattern"]
    return view


def searches(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = [o for o in objects if o["type"] == "search"]
    assert {o["type"] for o in objects} == {"index-pattern", "search"}
    return found


def test_data_view_covers_our_indices(data_view: dict[str, Any]) -> None:
    attrs = data_view["attributes"]
    assert attrs["timeFieldName"] == "@timestamp"
    # Fluent Bit's es output for namespace cloudnative writes <prefix>-YYYY.MM.DD.
    outputs = yaml.safe_load(PIPELINE.read_text())["pipeline"]["outputs"]
    app_tag = "kube.var.log.containers.fiboserver-prod-6b5f4-x2x9q_cloudnative_fiboserver-0.log"
    (ours,) = [o for o in outputs if re.search(o["match_regex"], app_tag)]
    assert attrs["title"] == f"{ours['logstash_prefix']}-*"
    assert data_view["references"] == []


def test_saved_searches(objects: list[dict[str, Any]], data_view: dict[str, Any]) -> None:
    found = {o["attributes"]["title"]: o for o in searches(objects)}
    assert set(found) == {
        "fiboserver: errors and warnings",
        "fiboserver: one request by id",
        "fiboserver: slow requests",
    }
    for title, search in found.items():
        attrs = search["attributes"]
        source = json.loads(attrs["kibanaSavedObjectMeta"]["searchSourceJSON"])
        # Kibana 8.x form: the data view by reference, never an inline `index`.
        assert "index" not in source, title
        assert source["indexRefName"] == REF_NAME, title
        assert search["references"] == [
            {"name": REF_NAME, "type": "index-pattern", "id": data_view["id"]}
        ], title
        assert source["query"]["language"] == "kuery", title
        query = source["query"]["query"]
        used = kql_fields(query) | set(attrs["columns"]) | {f for f, _ in attrs["sort"]}
        unknown = used - ALLOWED_FIELDS
        assert not unknown, f"{title}: fields no test proves exist: {unknown}"
        assert all(direction in {"asc", "desc"} for _, direction in attrs["sort"])


def test_search_queries_match_the_service(objects: list[dict[str, Any]]) -> None:
    """The literal values the searches look for are ones the service writes."""
    queries = {
        o["attributes"]["title"]: json.loads(
            o["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"]
        )["query"]["query"]
        for o in searches(objects)
    }
    levels = set(re.findall(r'"([A-Z]+)"', queries["fiboserver: errors and warnings"]))
    assert levels == {"WARNING", "ERROR", "CRITICAL"} and levels <= contract.LEVELS
    assert "request_id" in kql_fields(queries["fiboserver: one request by id"])
    slow = queries["fiboserver: slow requests"]
    assert kql_fields(slow) == {"msg", "duration_ms"} and '"end"' in slow


def readme_section() -> str:
    text = README.read_text()
    start = text.index("<!-- section: logs in kibana -->")
    nxt = text.find("<!-- section:", start + 1)
    return text[start : nxt if nxt != -1 else len(text)]


def test_readme_kql_examples_use_proven_fields() -> None:
    section = readme_section()
    blocks = re.findall(r"```kql\n(.*?)```", section, flags=re.S)
    queries = [q.strip() for block in blocks for q in block.splitlines() if q.strip()]
    for required in REQUIRED_KQL:
        assert required in queries, f"README lacks the KQL example {required!r}"
    for query in queries:
        unknown = kql_fields(query) - ALLOWED_FIELDS
        assert not unknown, f"{query!r}: fields no test proves exist: {unknown}"


# --- make kibana-import ------------------------------------------------------------------


class _Capture(BaseHTTPRequestHandler):
    """Stands in for Kibana's import endpoint only to record what `make` sends; the
    answer is Kibana's documented response shape, success or not as the test sets."""

    requests: ClassVar[list[tuple[str, str, dict[str, str], bytes]]] = []
    reply: ClassVar[dict[str, Any]] = {}
    # Elasticsearch's answer to the PUTs of `make elasticsearch-setup`, which
    # kibana-import runs first (tests/test_elasticsearch_setup.py checks them).
    es_reply: ClassVar[dict[str, Any]] = {"acknowledged": True}
    separators: ClassVar[tuple[str, str]] = (",", ":")

    def do_PUT(self) -> None:
        self.do_POST()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).requests.append((self.command, self.path, dict(self.headers), body))
        reply = type(self).reply if self.command == "POST" else type(self).es_reply
        payload = json.dumps(reply, separators=type(self).separators).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def capture_server() -> Iterator[tuple[str, type[_Capture]]]:
    handler = type(
        "Handler", (_Capture,), {"requests": [], "reply": {}, "es_reply": {"acknowledged": True}}
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def run_import(url: str) -> subprocess.CompletedProcess[str]:
    make = require_tool("make")
    require_tool("curl")
    return subprocess.run(
        [
            make,
            "--no-print-directory",
            "kibana-import",
            f"KIBANA_URL={url}",
            f"ELASTICSEARCH_URL={url}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("separators", [(",", ":"), (", ", ": ")], ids=["compact", "spaced"])
def test_make_kibana_import_uses_the_import_api(
    capture_server: tuple[str, type[_Capture]], separators: tuple[str, str]
) -> None:
    url, handler = capture_server
    handler.separators = separators
    handler.reply = {"success": True, "successCount": 4, "successResults": []}
    proc = run_import(url)
    assert proc.returncode == 0, proc.stderr
    # Elasticsearch first (policy, then the template naming it), then Kibana.
    puts = [(m, p) for m, p, _, _ in handler.requests[:2]]
    assert puts == [("PUT", "/_ilm/policy/fiboserver-logs"), ("PUT", "/_index_template/fiboserver")]
    ((method, path, headers, body),) = handler.requests[2:]
    assert method == "POST"
    assert path == "/api/saved_objects/_import?overwrite=true"
    assert headers["kbn-xsrf"] == "true"
    # multipart/form-data with the NDJSON file, unchanged, in the `file` field.
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {headers['Content-Type']}\r\n\r\n".encode() + body
    )
    (part,) = list(message.iter_parts())
    assert part.get_param("name", header="content-disposition") == "file"
    assert part.get_filename() == NDJSON.name
    assert part.get_payload(decode=True) == NDJSON.read_bytes()


def test_make_kibana_import_fails_when_kibana_refuses(
    capture_server: tuple[str, type[_Capture]],
) -> None:
    url, handler = capture_server
    handler.reply = {"success": False, "successCount": 3, "errors": [{"id": "x"}]}
    proc = run_import(url)
    assert proc.returncode != 0
    assert "did not import everything" in proc.stderr
