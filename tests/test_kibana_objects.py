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
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from tests.support import logpipeline
from tests.support.hosttools import require_tool
from tests.support.repo import REPO_ROOT

NDJSON = REPO_ROOT / "k8s" / "logging" / "kibana" / "saved-objects.ndjson"
PIPELINE = REPO_ROOT / "k8s" / "logging" / "fluent-bit.yaml"
README = REPO_ROOT / "README.md"
REF_NAME = "kibanaSavedObjectMeta.searchSourceJSON.index"
ALLOWED_FIELDS = set(logpipeline.QUERY_FIELDS) | logpipeline.PIPELINE_FIELDS
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
    assert levels == {"WARNING", "ERROR", "CRITICAL"} and levels <= logpipeline.LEVELS
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

# Types Kibana 8.x/9.x imports (a subset: what a log setup exports).
IMPORTABLE_TYPES = {"index-pattern", "search", "visualization", "dashboard", "lens", "query"}


class _Kibana(BaseHTTPRequestHandler):
    """Kibana's saved-objects import endpoint, checking the upload as Kibana does.

    POST /api/saved_objects/_import with a `kbn-xsrf` header (else 400), a
    multipart/form-data body whose `file` field is an .ndjson file (else 400/415),
    `overwrite` and `createNewCopies` not both set; each line one saved object of an
    importable type whose references resolve (here, within the file: the Kibana is
    empty). The answer is Kibana's: `success`, `successCount`, `successResults`,
    and `errors` per object that failed. `status` makes it answer an HTTP error
    instead, `conflicts` makes it refuse those ids (an object it cannot overwrite).

    A stand-in because no Kibana is installable here (no registry offers it), and
    the saved-objects import is Kibana's alone: OpenSearch, the tests' real engine
    for everything Elasticsearch does (tests/support/opensearch.py), has no such API.
    """

    uploads: ClassVar[list[tuple[str, list[dict[str, Any]]]]] = []
    status: ClassVar[int] = 200
    conflicts: ClassVar[set[str]] = set()
    # Elasticsearch, for the PUTs of `make elasticsearch-setup`, which kibana-import
    # runs first: (path, Content-Type, body) of each, and the answer it gets. Only
    # the request sequence is checked here (tests/test_elasticsearch_setup.py): the
    # real engine of the tests, OpenSearch, has no ILM API to acknowledge the first
    # PUT; the template itself is judged by OpenSearch there.
    es_puts: ClassVar[list[tuple[str, str, bytes]]] = []
    es_reply: ClassVar[dict[str, Any]] = {"acknowledged": True}
    separators: ClassVar[tuple[str, str]] = (",", ":")

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).es_puts.append((self.path, self.headers.get("Content-Type", ""), body))
        self.answer(200, self.es_reply)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        path, _, query = self.path.partition("?")
        params = dict(p.partition("=")[::2] for p in query.split("&") if p)
        if path != "/api/saved_objects/_import":
            return self.answer(404, {"statusCode": 404, "error": "Not Found"})
        if "kbn-xsrf" not in self.headers:
            return self.bad_request("Request must contain a kbn-xsrf header.")
        if params.get("overwrite") == "true" and params.get("createNewCopies") == "true":
            return self.bad_request("createNewCopies and overwrite cannot be used together")
        ctype = self.headers.get("Content-Type", "")
        if not ctype.startswith("multipart/form-data"):
            return self.answer(415, {"statusCode": 415, "error": "Unsupported Media Type"})
        form = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {ctype}\r\n\r\n".encode() + body)
        files = [
            part for part in form.iter_parts()
            if part.get_param("name", header="content-disposition") == "file"
        ]  # fmt: skip
        if len(files) != 1:
            return self.bad_request("[request body.file]: expected value of type [Stream]")
        filename = files[0].get_filename() or ""
        if not filename.endswith(".ndjson"):
            return self.bad_request(f"Invalid file extension {filename!r}")
        raw = files[0].get_payload(decode=True)
        assert isinstance(raw, bytes)
        try:
            objects = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
        except ValueError as exc:
            return self.bad_request(f"not NDJSON: {exc}")
        type(self).uploads.append((self.path, objects))
        self.answer(self.status, self.result(objects, params.get("overwrite") == "true"))

    def result(self, objects: list[dict[str, Any]], overwrite: bool) -> dict[str, Any]:
        if self.status != 200:
            return {"statusCode": self.status, "error": "Internal Server Error", "message": "x"}
        present = {(o.get("type"), o.get("id")) for o in objects}
        ok, errors = [], []
        for o in objects:
            kind, oid = o.get("type"), o.get("id")
            title = o.get("attributes", {}).get("title")
            error: dict[str, Any] | None = None
            if not isinstance(oid, str) or not isinstance(o.get("attributes"), dict):
                error = {"type": "unknown", "message": "not a saved object"}
            elif kind not in IMPORTABLE_TYPES:
                error = {"type": "unsupported_type"}
            elif missing := [
                r for r in o.get("references", []) if (r.get("type"), r.get("id")) not in present
            ]:
                error = {"type": "missing_references", "references": missing}
            elif oid in self.conflicts or not overwrite:
                error = {"type": "conflict"}  # (in an empty Kibana only with `conflicts`)
            if error is None:
                ok.append({"id": oid, "type": kind, "meta": {"title": title}})
            else:
                errors.append({"id": oid, "type": kind, "title": title, "error": error})
        answer: dict[str, Any] = {
            "success": not errors,
            "successCount": len(ok),
            "successResults": ok,
        }
        if errors:
            answer["errors"] = errors
        return answer

    def bad_request(self, message: str) -> None:
        self.answer(400, {"statusCode": 400, "error": "Bad Request", "message": message})

    def answer(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload, separators=self.separators).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def kibana() -> Iterator[tuple[str, type[_Kibana]]]:
    handler = type(
        "Handler",
        (_Kibana,),
        {"uploads": [], "conflicts": set(), "es_puts": [], "es_reply": {"acknowledged": True}},
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def run_import(url: str, *overrides: str) -> subprocess.CompletedProcess[str]:
    make = require_tool("make")
    require_tool("curl")
    return subprocess.run(
        [
            make,
            "--no-print-directory",
            "kibana-import",
            f"KIBANA_URL={url}",
            f"ELASTICSEARCH_URL={url}",
            *overrides,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("separators", [(",", ":"), (", ", ": ")], ids=["compact", "spaced"])
def test_make_kibana_import_is_accepted(
    kibana: tuple[str, type[_Kibana]], separators: tuple[str, str]
) -> None:
    url, handler = kibana
    handler.separators = separators
    proc = run_import(url)
    assert proc.returncode == 0, proc.stderr
    # Elasticsearch first (policy, then the template naming it), then Kibana.
    puts = [path for path, _, _ in handler.es_puts]
    assert puts == ["/_ilm/policy/fiboserver-logs", "/_index_template/fiboserver"]
    ((path, objects),) = handler.uploads
    assert path == "/api/saved_objects/_import?overwrite=true"
    # The file as it is, every object imported: the answer `make` accepted.
    assert objects == [json.loads(line) for line in NDJSON.read_text().splitlines()]
    assert '"successCount"' in proc.stdout and str(len(objects)) in proc.stdout


def test_the_check_refuses_what_kibana_refuses(kibana: tuple[str, type[_Kibana]]) -> None:
    """The stand-in is no rubber stamp: uploads Kibana refuses are refused here too."""
    url, _ = kibana
    curl = require_tool("curl")

    def post(*args: str) -> int:
        out = subprocess.run(
            [curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", *args],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        return int(out.stdout)

    api = f"{url}/api/saved_objects/_import?overwrite=true"
    assert post(api, "-H", "kbn-xsrf: true", "--form", f"file=@{NDJSON}") == 200
    assert post(api, "--form", f"file=@{NDJSON}") == 400  # no kbn-xsrf
    assert post(api, "-H", "kbn-xsrf: true", "--form", f"upload=@{NDJSON}") == 400
    assert post(api, "-H", "kbn-xsrf: true", "--data-binary", f"@{NDJSON}") == 415


def test_make_kibana_import_fails_on_an_error_answer(kibana: tuple[str, type[_Kibana]]) -> None:
    url, handler = kibana
    handler.status = 500
    proc = run_import(url)
    assert proc.returncode != 0
    assert "request failed" in proc.stderr and "Internal Server Error" in proc.stderr


def test_make_kibana_import_fails_on_partial_success(kibana: tuple[str, type[_Kibana]]) -> None:
    url, handler = kibana
    handler.conflicts = {"fiboserver-one-request"}
    proc = run_import(url)
    assert proc.returncode != 0
    assert "did not import everything" in proc.stderr
    assert "fiboserver-one-request" in proc.stderr


def test_make_kibana_import_fails_on_a_broken_reference(
    kibana: tuple[str, type[_Kibana]], tmp_path: Path
) -> None:
    url, _ = kibana
    broken = tmp_path / "saved-objects.ndjson"
    broken.write_text(NDJSON.read_text().replace('"id":"fiboserver-logs"}', '"id":"nowhere"}', 1))
    assert broken.read_text() != NDJSON.read_text()
    proc = run_import(url, f"KIBANA_OBJECTS={broken}")
    assert proc.returncode != 0
    assert "missing_references" in proc.stderr
