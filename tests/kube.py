"""Kubernetes manifest helpers for tests: render with the real kubectl, validate strictly.

- ``render(path)``: ``kubectl kustomize <path>`` (the kustomize built into kubectl,
  as ``kubectl apply -k`` uses it), parsed into a list of objects.
- ``schema_versions()``: the Kubernetes versions every manifest must validate
  against: 1.30 and the newest one the installed kubernetes-validate ships.
- ``validate_strict(objects, version)``: kubernetes-validate in strict mode (unknown
  fields are errors, not silently dropped as the API server would); a kind without a
  schema is an error too, unless listed in ``allow_kinds_without_schema``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from conftest import require_tool
from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parent.parent
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
