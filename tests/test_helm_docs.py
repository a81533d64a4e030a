"""What the chart's documentation says is what the chart does.

- charts/fiboserver/README.md has one table, `| value | default | what it does |`,
  with a row for every value the schema knows; a default written in backticks is
  YAML and equals values.yaml's, `unset` means values.yaml leaves it out.
- The project README's table of manifest numbers (tests/test_manifest_numbers.py)
  holds for the chart too: its defaults and values-dev.yaml against the DEV
  column, values-prod.yaml against PROD.
- The project README's "Install with Helm" section uses the targets and files
  that exist.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.support.helmchart import CHART, VALUES, template, without_hooks
from tests.support.repo import REPO_ROOT
from tests.test_manifest_numbers import TABLE_DOC, Row, check, table_rows

CHART_README = CHART / "README.md"
HEADER = "| value | default | what it does |"
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())
UNSET = "unset"


def schema_keys(node: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Dotted path of every value the schema describes (objects by their keys)."""
    for key, sub in node.get("properties", {}).items():
        path = f"{prefix}{key}"
        if key == "global":
            continue
        if sub.get("type") == "object" and "properties" in sub:
            yield from schema_keys(sub, path + ".")
        else:
            yield path


def lookup(values: dict[str, Any], path: str) -> tuple[bool, Any]:
    node: Any = values
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def readme_table() -> dict[str, tuple[str, str]]:
    lines = CHART_README.read_text().splitlines()
    assert lines.count(HEADER) == 1, f"the chart README needs one table headed {HEADER!r}"
    rows: dict[str, tuple[str, str]] = {}
    for line in lines[lines.index(HEADER) + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 3, line
        key, default, what = cells
        assert re.fullmatch(r"`[^`]+`", key), line
        assert len(what.split()) >= 4, f"no real explanation: {line}"
        assert key.strip("`") not in rows, f"two rows for {key}"
        rows[key.strip("`")] = (default, what)
    return rows


def test_chart_readme_lists_every_value_with_its_default() -> None:
    rows = readme_table()
    keys = list(schema_keys(SCHEMA))
    assert len(keys) > 20
    assert sorted(rows) == sorted(keys), "rows and the schema's values differ"
    for key in keys:
        default = rows[key][0]
        present, value = lookup(DEFAULTS, key)
        if not present:
            assert default.startswith(UNSET), (
                f"{key}: not in values.yaml, the README says {default}"
            )
            continue
        m = re.fullmatch(r"`([^`]*)`", default)
        assert m, f"{key}: default {default!r} not in backticks"
        assert yaml.safe_load(m.group(1)) == value, (
            f"{key}: README {default}, values.yaml {value!r}"
        )


def test_every_value_in_values_yaml_is_in_the_schema() -> None:
    def leaves(node: Any, prefix: str = "") -> Iterator[str]:
        for k, v in node.items():
            if isinstance(v, dict) and v:
                yield from leaves(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"

    assert set(leaves(DEFAULTS)) <= set(schema_keys(SCHEMA))


def test_config_values_are_the_services_keys() -> None:
    """config.* in the schema are the keys of the project README's Configuration table."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `([a-z_]+)` \|", section, re.M)
    assert len(documented) >= 7
    assert sorted(SCHEMA["properties"]["config"]["properties"]) == sorted(documented)


@pytest.fixture(scope="module")
def rows() -> list[Row]:
    return table_rows(TABLE_DOC.read_text())


@pytest.mark.parametrize(("values", "env"), [(None, "DEV"), ("dev", "DEV"), ("prod", "PROD")])
def test_chart_numbers_are_the_documented_table(
    rows: list[Row], values: str | None, env: str
) -> None:
    files = (VALUES[values],) if values else ()
    objects = without_hooks(template(f"fiboserver-{env.lower()}", *files))
    errors = check(objects, env, rows)
    assert not errors, "chart and the docs/kubernetes.md table disagree:\n" + "\n".join(errors)


def test_the_table_check_sees_a_changed_chart_default(rows: list[Row]) -> None:
    """The control: a default moved through values is a disagreement."""
    objects = without_hooks(template("fiboserver-dev", sets=["terminationGracePeriodSeconds=40"]))
    assert any("terminationGracePeriodSeconds" in e for e in check(objects, "DEV", rows))


def test_install_with_helm_section_uses_what_exists() -> None:
    text = (REPO_ROOT / "README.md").read_text()
    assert "\n## Install with Helm\n" in text
    section = text.split("\n## Install with Helm\n", 1)[1].split("\n## ", 1)[0]
    makefile = (REPO_ROOT / "Makefile").read_text()
    for target in set(re.findall(r"\bmake (?:-s )?([a-z][a-z-]+)", section)):
        assert re.search(rf"^{target}:", makefile, re.M), f"make {target} does not exist"
    for path in set(re.findall(r"charts/fiboserver/[\w./-]+", section)):
        assert (REPO_ROOT / path.rstrip(".")).exists(), path
    for step in (
        "kind load",
        "minikube image load",
        "tls-secret",
        "helm test",
        "helm upgrade --install",
    ):
        assert step in section, step
