"""Kubernetes manifest helpers for tests: render with the real kubectl, validate strictly.

- ``render(path)``: ``kubectl kustomize <path>`` (the kustomize built into kubectl,
  as ``kubectl apply -k`` uses it), parsed into a list of objects.
- ``schema_versions()``: the Kubernetes versions every manifest must validate
  against: 1.30 and the newest one the installed kubernetes-validate ships.
- ``validate_strict(objects, version)``: kubernetes-validate in strict mode (unknown
  fields are errors, not silently dropped as the API server would); a kind without a
  schema is an error too, unless listed in ``allow_kinds_without_schema``.
- ``parse_quantity(q)``: a resource quantity (``500m``, ``1Gi``) as a number.
- ``crd_validator(crd_file, version)``: a JSON Schema validator for the objects of a
  vendored CustomResourceDefinition (tests/schemas), just as strict.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.version import Version

from tests.support.hosttools import require_tool
from tests.support.repo import REPO_ROOT

OLDEST_VERSION = "1.30.0"

Obj = dict[str, Any]


def render(path: Path | str) -> list[Obj]:
    """Objects of the kustomization at `path`, rendered by `kubectl kustomize`."""
    kubectl = require_tool("kubectl")
    proc = subprocess.run(
        [kubectl, "kustomize", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"kubectl kustomize {path} failed:\n{proc.stderr}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def parse_quantity(q: str | int | float) -> float:
    """A Kubernetes resource quantity as a number (CPUs or bytes)."""
    units = {
        "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
        "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
    }  # fmt: skip
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(q))
    assert match, f"bad quantity {q!r}"
    number, unit = match.groups()
    return float(number) * (units[unit] if unit else 1)


def newest_version() -> str:
    """The newest Kubernetes version whose schemas the installed validator ships."""
    return str(kubernetes_validate.latest_version())


def schema_versions() -> list[str]:
    """1.30 and the newest shipped version (one entry if they coincide)."""
    newest = newest_version()
    assert Version(newest) >= Version(OLDEST_VERSION), newest
    return sorted({OLDEST_VERSION, newest}, key=Version)


def validate_strict(
    objects: Iterable[Obj],
    version: str,
    allow_kinds_without_schema: Sequence[str] = (),
) -> None:
    """Fail with every error found when any object is invalid for `version`."""
    errors: list[str] = []
    for obj in objects:
        name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            errors.append(f"{name}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            if obj.get("kind") not in allow_kinds_without_schema:
                errors.append(f"{name}: {exc.message}")
    assert not errors, f"invalid for Kubernetes {version}:\n" + "\n".join(errors)


def strict_schema(schema: Any) -> Any:
    """CRD schemas leave unknown fields allowed (the API server prunes them); as a
    linter we reject them: additionalProperties false wherever properties are
    listed and the schema does not ask to keep unknown fields."""
    if isinstance(schema, list):
        return [strict_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict_schema(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_validator(crd_file: Path, version: str) -> tuple[str, jsonschema.protocols.Validator]:
    """(kind, strict validator of its `version`) for the CRD in `crd_file`."""
    crd = yaml.safe_load(crd_file.read_text())
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    assert served["served"], f"{crd_file.name}: {version} is not served"
    schema = strict_schema(served["schema"]["openAPIV3Schema"])
    return crd["spec"]["names"]["kind"], jsonschema.Draft7Validator(schema)


def schema_errors(validator: jsonschema.protocols.Validator, obj: Obj) -> list[str]:
    return [
        f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(obj)
    ]


def checkov_binary() -> str:
    """checkov from `make checkov` (its own venv), else from PATH."""
    local = REPO_ROOT / ".tools" / "checkov" / "bin" / "checkov"
    return str(local) if local.exists() else require_tool("checkov")


def assert_checkov_fails_only_skips(
    objects: Sequence[Obj], skips_file: Path, workdir: Path
) -> None:
    """checkov over `objects` fails exactly the (check, resource) pairs in `skips_file`.

    The skip list maps a check id to `resources` (checkov's `Kind.namespace.name`)
    and a `reason`. A new failure breaks the test, and so does a skip that no
    longer fails, so the list never outlives its reasons.
    """
    skips = yaml.safe_load(skips_file.read_text())
    for check_id, entry in skips.items():
        assert re.fullmatch(r"CKV2?_K8S_\d+", check_id), check_id
        assert entry["resources"], f"{check_id}: no resources"
        assert len(entry["reason"].split()) >= 10, f"{check_id}: no real reason"
    (workdir / "rendered.yaml").write_text(yaml.safe_dump_all(objects))
    out = subprocess.run(
        [checkov_binary(), "--directory", str(workdir), "--framework", "kubernetes",
         "--output", "json", "--quiet", "--compact"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},  # offline: no guideline download
        check=False,
    )  # fmt: skip
    assert out.returncode in (0, 1), out.stderr
    report = json.loads(out.stdout)
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] > 100, report["summary"]  # it really looked
    failed = {(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]}
    allowed = {(cid, res) for cid, entry in skips.items() for res in entry["resources"]}
    assert not failed - allowed, f"failures not in {skips_file.name}: {sorted(failed - allowed)}"
    assert not allowed - failed, f"skips that no longer fail: {sorted(allowed - failed)}"
