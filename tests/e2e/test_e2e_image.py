"""e2e, the image's provenance (issue 11): what `make image` built carries its
version and commit, and `make sbom` lists exactly the locked distributions.

Uses the session's one image build (tests/e2e/conftest.py), tagged
localhost/fiboserver:e2e through `make image`.
"""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from tests.support.podmanlib import make, podman
from tests.support.repo import REPO_ROOT
from tests.test_release import LOCK, parse_lock

pytestmark = pytest.mark.e2e

# Installed into the venv only to build the project, then removed with pip.
BUILD_ONLY = {"setuptools"}


def git_head() -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_image_labels_name_version_and_commit(
    podman_tools: dict[str, str], e2e_image: tuple[str, float, str]
) -> None:
    tag = e2e_image[0]
    out = podman(podman_tools["podman"], "image", "inspect", "--format", "{{json .Labels}}", tag)
    labels = json.loads(out.stdout)
    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert labels["org.opencontainers.image.version"] == version
    dirty = subprocess.run(
        ["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True
    ).stdout.strip()
    assert labels["org.opencontainers.image.revision"] == git_head() + ("-dirty" if dirty else "")


def test_sbom_lists_the_locked_versions(
    podman_tools: dict[str, str], e2e_image: tuple[str, float, str], tmp_path: Path
) -> None:
    name, _, tag = e2e_image[0].rpartition(":")
    sbom_file = tmp_path / "sbom.cdx.json"
    make("sbom", f"CONTAINER_ENGINE={podman_tools['podman']}", f"IMAGE={name}", f"TAG={tag}",
         f"SBOM={sbom_file}")  # fmt: skip
    sbom = json.loads(sbom_file.read_text())
    assert sbom["bomFormat"] == "CycloneDX"
    assert sbom["metadata"]["component"]["name"] == "fiboserver"
    found = {str(canonicalize_name(c["name"])): c for c in sbom["components"]}
    locked = parse_lock(LOCK.read_text())
    for dist in ("flask", "gunicorn", "pyyaml", "python-json-logger"):
        assert found[dist]["version"] == locked[dist].version, dist
        assert found[dist]["purl"] == f"pkg:pypi/{dist}@{locked[dist].version}"
    # The image's environment is the lock, exactly: nothing missing, nothing else
    # (pip and setuptools were removed after the build).
    assert {n: c["version"] for n, c in found.items()} == {
        n: pin.version for n, pin in locked.items() if n not in BUILD_ONLY
    }
    # Reproducible: no timestamp or random serial number, so equal images give
    # byte-equal SBOMs.
    assert "serialNumber" not in sbom and "timestamp" not in sbom["metadata"]
