"""The Elasticsearch side of the logs (issue 11): the index template for
fiboserver-*, its ILM policy, and `make elasticsearch-setup` (run by
`make kibana-import`) that installs both.

The index template is judged by a real engine: OpenSearch 2.19.6
(tests/support/opensearch.py) must acknowledge it and create indices with its
mappings. OpenSearch has no ILM (Elasticsearch's X-Pack feature; OpenSearch's
equivalent, ISM, is a separate plugin with another API), so:
- the ILM policy keeps its shape checks only (test_ilm_policy_deletes_after_the_retention);
- the template's one ILM setting, index.lifecycle.name, is refused by OpenSearch
  as an unknown setting: a test proves it is the only thing refused, and the
  template goes in without it (opensearch.template_for_opensearch); the file keeps
  it, since Elasticsearch users need it;
- `make elasticsearch-setup` against OpenSearch stops at its first request
  (PUT _ilm/policy: no such API), which shows the target fails on a real refusal.
The target's full success path (policy, then template, bodies byte for byte) needs
an Elasticsearch with ILM, which these registries do not offer: that part alone still
runs against the stand-in of tests/test_kibana_objects.py, which records requests.
The field types themselves are the contract test's table (tests/support/logpipeline.py
reads them from the same file).
"""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import yaml

from tests.support import logpipeline
from tests.support.hosttools import require_tool
from tests.support.opensearch import (
    ELASTICSEARCH_ONLY_SETTINGS,
    OpenSearch,
    template_for_opensearch,
)
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


def test_make_elasticsearch_setup_fails_when_not_acknowledged(
    kibana: tuple[str, type[_Kibana]],  # noqa: F811
) -> None:
    # A 200 without "acknowledged": true: only a stand-in can answer that on demand.
    url, handler = kibana
    handler.es_reply = {"acknowledged": False}
    proc = run_setup(url)
    assert proc.returncode != 0
    assert re.search(r"elasticsearch-setup: PUT /_ilm/policy/\S+ not acknowledged", proc.stderr)
    assert len(handler.es_puts) == 1, "stops at the first refusal"


# --- the real engine -----------------------------------------------------------------


def test_opensearch_refuses_only_the_elasticsearch_settings(opensearch: OpenSearch) -> None:
    status, answer = opensearch.request(
        "PUT", "/_index_template/fiboserver-as-is", TEMPLATE.read_bytes()
    )
    assert status == 400, answer
    reason = answer["error"]["reason"]
    assert answer["error"]["type"] == "invalid_index_template_exception", answer
    assert set(re.findall(r"unknown setting \[([^\]]+)\]", reason)) == set(
        ELASTICSEARCH_ONLY_SETTINGS
    ), reason
    # Nothing else in the reason: each problem is one "N: ..." entry.
    assert len(re.findall(r"\d+: ", reason)) == 2, reason  # unknown, and "not private"


def test_opensearch_acknowledges_the_template(opensearch: OpenSearch) -> None:
    answer = opensearch.ok("PUT", "/_index_template/fiboserver", template_for_opensearch())
    assert answer == {"acknowledged": True}
    # An index Fluent Bit would create gets the template's mappings, exactly.
    mappings = load(TEMPLATE)["template"]["mappings"]
    simulated = opensearch.ok("POST", "/_index_template/_simulate_index/fiboserver-2025.01.01")
    got = simulated["template"]["mappings"]
    assert got["date_detection"] is False
    assert got["dynamic_templates"] == mappings["dynamic_templates"]
    assert got["properties"] == mappings["properties"]


def test_make_elasticsearch_setup_stops_at_opensearch_refusal(opensearch: OpenSearch) -> None:
    # Another test may have installed it: the check below must see this run's effect.
    opensearch.request("DELETE", "/_index_template/fiboserver")
    proc = run_setup(opensearch.url)
    assert proc.returncode != 0
    assert re.search(
        r"elasticsearch-setup: PUT /_ilm/policy/fiboserver-logs failed: .*no handler found",
        proc.stderr,
    ), proc.stderr
    status, _ = opensearch.request("GET", "/_index_template/fiboserver")
    assert status == 404, "the template must not be put after the policy failed"
