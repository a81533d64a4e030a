"""The Elasticsearch side of the logs (issue 11): the index template for
fiboserver-*, its ILM policy, and `make elasticsearch-setup` (run by
`make kibana-import`) that installs both.

The bodies are checked against the shapes of Elasticsearch's composable index
template and ILM APIs (PUT _index_template/<name>, PUT _ilm/policy/<name>); the
field types themselves are the contract test's table (tests/support/logpipeline.py reads
them from the same file). The requests go to the local Elasticsearch and
Kibana stand-in of tests/test_kibana_objects.py.
"""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import pytest
import yaml

from tests.support import logpipeline
from tests.support.hosttools import require_tool
from tests.support.repo import REPO_ROOT
from tests.test_kibana_objects import _Kibana, kibana  # noqa: F401 (fixture)

ES_DIR = REPO_ROOT / "k8s" / "logging" / "elasticsearch"
TEMPLATE = ES_DIR / "index-template.json"
POLICY = ES_DIR / "ilm-policy.json"
PIPELINE = REPO_ROOT / "k8s" / "logging" / "fluent-bit.yaml"
# Top-level keys of a composable index template and of an ILM policy body.
TEMPLATE_KEYS = {
    "index_patterns", "template", "composed_of", "priority", "version", "_meta",
    "data_stream", "allow_auto_create", "ignore_missing_component_templates", "deprecated",
}  # fmt: skip
ILM_PHASES = ("hot", "warm", "cold", "frozen", "delete")


def load(path: Any) -> Any:
    return json.loads(path.read_text())


def our_output() -> dict[str, Any]:
    outputs = yaml.safe_load(PIPELINE.read_text())["pipeline"]["outputs"]
    (ours,) = [o for o in outputs if o["logstash_prefix"] == "fiboserver"]
    return dict(ours)


def test_template_covers_the_indices_fluent_bit_writes() -> None:
    template = load(TEMPLATE)
    assert set(template) <= TEMPLATE_KEYS
    assert template["index_patterns"] == [our_output()["logstash_prefix"] + "-*"]
    # Daily indices from logstash_format, not a data stream; above Elasticsearch's
    # built-in templates (priority 100), which match other names anyway.
    assert "data_stream" not in template
    assert template["priority"] > 100
    assert set(template["template"]) == {"settings", "mappings"}


def test_template_mappings() -> None:
    mappings = load(TEMPLATE)["template"]["mappings"]
    # No string ever becomes a `date` by looking like one; unknown strings are
    # keywords (exact match, aggregatable) rather than text + keyword twice.
    assert mappings["date_detection"] is False
    (rule,) = mappings["dynamic_templates"]
    (spec,) = rule.values()
    assert spec == {"match_mapping_type": "string",
                    "mapping": {"type": "keyword", "ignore_above": 1024}}  # fmt: skip
    props = mappings["properties"]
    # The pipeline's own fields: the time field of the data view, and the
    # runtime's nanosecond stamp.
    assert props["@timestamp"] == {"type": "date"}
    assert props["time"] == {"type": "date_nanos"}
    for name, field in props.items():
        if "properties" in field:
            continue
        assert field["type"] in logpipeline.JSON_TYPE_OF, (name, field)
        # keyword fields that may be long say where indexing stops (Lucene refuses
        # terms over 32766 bytes; a whole record would be refused with them).
        if name in {"value", "path"}:
            assert field["ignore_above"] <= 8191, name
    # Every field the issue names, with the type it names.
    issue = {"status": "long", "duration_ms": "float", "key": "long", "value": "keyword",
             "request_id": "keyword", "ts": "date"}  # fmt: skip
    assert {k: props[k]["type"] for k in issue} == issue


def test_ilm_policy_deletes_after_the_retention() -> None:
    policy = load(POLICY)
    assert set(policy) == {"policy"}
    body = policy["policy"]
    assert set(body) <= {"phases", "_meta"}
    assert set(body["phases"]) <= set(ILM_PHASES)
    delete = body["phases"]["delete"]
    assert delete == {"min_age": "14d", "actions": {"delete": {}}}
    # The template's indices are the ones the policy manages.
    settings = load(TEMPLATE)["template"]["settings"]
    assert settings["index.lifecycle.name"] == "fiboserver-logs"


def run_setup(url: str) -> subprocess.CompletedProcess[str]:
    make = require_tool("make")
    require_tool("curl")
    return subprocess.run(
        [make, "--no-print-directory", "elasticsearch-setup", f"ELASTICSEARCH_URL={url}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_make_elasticsearch_setup_puts_policy_then_template(
    kibana: tuple[str, type[_Kibana]],  # noqa: F811
) -> None:
    url, handler = kibana
    proc = run_setup(url)
    assert proc.returncode == 0, proc.stderr
    sent = handler.es_puts
    policy_name = load(TEMPLATE)["template"]["settings"]["index.lifecycle.name"]
    assert sent == [
        (f"/_ilm/policy/{policy_name}", "application/json", POLICY.read_bytes()),
        ("/_index_template/fiboserver", "application/json", TEMPLATE.read_bytes()),
    ]


@pytest.mark.parametrize(
    "reply",
    [{"acknowledged": False}, {"error": {"type": "x_content_parse_exception"}, "status": 400}],
    ids=["not-acknowledged", "error"],
)
def test_make_elasticsearch_setup_fails_when_refused(
    kibana: tuple[str, type[_Kibana]],  # noqa: F811
    reply: dict[str, Any],
) -> None:
    url, handler = kibana
    handler.es_reply = reply
    proc = run_setup(url)
    assert proc.returncode != 0
    assert re.search(r"elasticsearch-setup: PUT /_ilm/policy/\S+ not acknowledged", proc.stderr)
    assert len(handler.es_puts) == 1, "stops at the first refusal"
