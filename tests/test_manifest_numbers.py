"""Every number in the rendered manifests is the one docs/kubernetes.md's table gives, exactly.

The section "What each probe and each number in the Deployment is for" of
docs/kubernetes.md (the README links it)
has one table, `| number | DEV | PROD | why |`, that is both the explanation for
readers and the expected values here: the two cannot drift apart. Both overlays
are rendered with the real `kubectl kustomize` (tests/support/kube.py); every number in
their Deployment, Service, PodDisruptionBudget and HorizontalPodAutoscaler must
match exactly one row and equal that row's value for the environment, a row's
`-` says the field is not set there, and a row that matches nothing fails too.

A row's `number` is the end of the field's path: `Kind.spec.field`, list items
by their `name` (`ports[http]`), else by their index. Numbers are integers and
Kubernetes quantities (`100m`, `16Mi`, `25%`), wherever they appear.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.kube import render
from tests.support.repo import REPO_ROOT

TABLE_DOC = REPO_ROOT / "docs" / "kubernetes.md"
HEADER = "| number | DEV | PROD | why |"
ENVS = ("DEV", "PROD")
UNSET = "-"
# The objects whose numbers the table explains (the NetworkPolicy and the
# ConfigMap have none: ports by name, the config file is text).
KINDS = ("Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler")
_QUANTITY = re.compile(r"-?[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|%)?")

Obj = dict[str, Any]


@dataclass(frozen=True)
class Row:
    key: str
    values: dict[str, str]  # env -> value as written, UNSET when not set


def table_rows(text: str) -> list[Row]:
    """The rows of the numbers table in the text of TABLE_DOC."""
    lines = text.splitlines()
    assert lines.count(HEADER) == 1, f"{TABLE_DOC.name} needs exactly one table headed {HEADER!r}"
    start = lines.index(HEADER) + 2  # past the |---| line
    rows: list[Row] = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 4, f"not a 4-column row: {line}"
        key, dev, prod, why = cells
        assert re.fullmatch(r"`[^`]+`", key), f"number not in backticks: {line}"
        assert len(why.split()) >= 3, f"a number without its reason: {line}"
        rows.append(Row(key.strip("`"), {"DEV": dev, "PROD": prod}))
    keys = [r.key for r in rows]
    assert len(set(keys)) == len(keys), f"rows with the same number: {keys}"
    return rows


def leaves(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    """(path, value) of every scalar under `node`; list items by name when they have one."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from leaves(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            name = v.get("name") if isinstance(v, dict) else None
            yield from leaves(v, f"{path}[{name if isinstance(name, str) else i}]")
    else:
        yield path, node


def is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    return isinstance(value, str) and _QUANTITY.fullmatch(value) is not None


def ends_with(path: str, key: str) -> bool:
    return path == key or path.endswith("." + key)


def under(path: str, key: str) -> bool:
    """`key` names this leaf or an object or list it is inside."""
    cuts = [m.start() for m in re.finditer(r"[.\[]", path)] + [len(path)]
    return any(ends_with(path[:cut], key) for cut in cuts)


def check(objects: list[Obj], env: str, rows: list[Row]) -> list[str]:
    """Every disagreement between the rendered `objects` of `env` and the table."""
    errors: list[str] = []
    numbered = [o for o in objects if o["kind"] in KINDS]
    all_leaves = [lv for o in numbered for lv in leaves(o, o["kind"])]
    seen: set[str] = set()
    for path, value in all_leaves:
        if not is_number(value):
            continue
        matching = [r for r in rows if ends_with(path, r.key)]
        if len(matching) != 1:
            what = "no row" if not matching else f"rows {[r.key for r in matching]}"
            errors.append(f"{env} {path} = {value!r}: {what} in the table of docs/kubernetes.md")
            continue
        row = matching[0]
        seen.add(row.key)
        if row.values[env] != str(value):
            errors.append(f"{env} {path} = {value!r}, the table says {row.values[env]!r}")
    for row in rows:
        expected = row.values[env]
        if expected == UNSET:
            found = [p for p, _ in all_leaves if under(p, row.key)]
            if found:
                errors.append(f"{env} `{row.key}` is set ({found[0]}), the table says unset")
        elif row.key not in seen:
            errors.append(f"{env} `{row.key}` = {expected} in the table, not in the manifests")
    return errors


@pytest.fixture(scope="module")
def rows() -> list[Row]:
    return table_rows(TABLE_DOC.read_text())


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Obj]]:
    return {env: render(f"k8s/overlays/{env.lower()}") for env in ENVS}


@pytest.mark.parametrize("env", ENVS)
def test_every_manifest_number_is_the_table(
    rows: list[Row], rendered: dict[str, list[Obj]], env: str
) -> None:
    assert {o["kind"] for o in rendered[env]} >= set(KINDS) - {"HorizontalPodAutoscaler"}
    errors = check(rendered[env], env, rows)
    assert not errors, f"manifests and {TABLE_DOC.name} disagree:\n" + "\n".join(errors)


def test_table_covers_the_numbers_that_matter(rows: list[Row]) -> None:
    """The table speaks of the numbers operators tune (and issue 13 saw drift in)."""
    keys = {r.key for r in rows}
    for key in (
        "terminationGracePeriodSeconds",
        "preStop.sleep.seconds",
        "minReadySeconds",
        "progressDeadlineSeconds",
        "revisionHistoryLimit",
        "volumes[tmp].emptyDir.sizeLimit",
        "initialDelaySeconds",
        "minReplicas",
        "maxReplicas",
        "target.averageUtilization",
        "behavior",
    ):
        assert key in keys, key
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        for field in ("periodSeconds", "timeoutSeconds", "failureThreshold"):
            assert f"{probe}.{field}" in keys, (probe, field)
    for quantity in ("requests.cpu", "requests.memory", "limits.cpu", "limits.memory"):
        assert quantity in keys, quantity


def _deployment(objects: list[Obj]) -> Obj:
    return next(o for o in objects if o["kind"] == "Deployment")


def _container(objects: list[Obj]) -> Obj:
    container: Obj = _deployment(objects)["spec"]["template"]["spec"]["containers"][0]
    return container


def _hpa(objects: list[Obj]) -> Obj:
    return next(o for o in objects if o["kind"] == "HorizontalPodAutoscaler")


# Drift the check must catch: the changes issue 13 found the suite blind to, and
# numbers added or dropped without a row.
DRIFT = {
    "grace 600": lambda o: _deployment(o)["spec"]["template"]["spec"].update(
        terminationGracePeriodSeconds=600
    ),
    "startup threshold 10": lambda o: _container(o)["startupProbe"].update(failureThreshold=10),
    "minReadySeconds 0": lambda o: _deployment(o)["spec"].update(minReadySeconds=0),
    "revisionHistoryLimit 0": lambda o: _deployment(o)["spec"].update(revisionHistoryLimit=0),
    "sizeLimit 16Gi": lambda o: _deployment(o)["spec"]["template"]["spec"]["volumes"][1][
        "emptyDir"
    ].update(sizeLimit="16Gi"),
    "HPA max 60": lambda o: _hpa(o)["spec"].update(maxReplicas=60),
    "HPA target 99": lambda o: _hpa(o)["spec"]["metrics"][0]["resource"]["target"].update(
        averageUtilization=99
    ),
    "HPA behavior": lambda o: _hpa(o)["spec"].update(
        behavior={"scaleDown": {"stabilizationWindowSeconds": 0}}
    ),
    "new initialDelaySeconds": lambda o: _container(o)["livenessProbe"].update(
        initialDelaySeconds=30
    ),
    "a new port without a row": lambda o: _container(o)["ports"].append(
        {"name": "debug", "containerPort": 5678}
    ),
    "prod memory limit 1Gi": lambda o: _container(o)["resources"]["limits"].update(memory="1Gi"),
    "preStop dropped": lambda o: _container(o).pop("lifecycle"),
}


@pytest.mark.parametrize("change", list(DRIFT))
def test_the_check_catches_drift(
    rows: list[Row], rendered: dict[str, list[Obj]], change: str
) -> None:
    objects = copy.deepcopy(rendered["PROD"])
    before = set(check(objects, "PROD", rows))  # empty unless the manifests drifted
    DRIFT[change](objects)
    assert set(check(objects, "PROD", rows)) - before, f"{change} went unnoticed"
