"""k8s/logging as `kubectl kustomize` renders it, and its Fluent Bit DaemonSet: the
fixtures and lookups that test_logging_manifests.py (the objects) and
test_fluent_bit_config.py (the pipeline config they carry) share. The fixtures'
functions end in _fixture (their names do not) so that a test module imports them
without its parameters shadowing the import.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.support.kube import Obj, render
from tests.support.repo import REPO_ROOT

LOGGING = REPO_ROOT / "k8s" / "logging"
# The position DB and the filesystem buffer: the one host path Fluent Bit may write.
STATE_DIR = "/var/lib/fluent-bit"


@pytest.fixture(scope="module", name="logging_objs")
def logging_objs_fixture() -> list[Obj]:
    return render(LOGGING)


def one(objs: list[Obj], kind: str, name_prefix: str = "") -> Obj:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"].startswith(name_prefix)]
    assert len(found) == 1, f"expected one {kind} {name_prefix}*, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module", name="daemonset")
def daemonset_fixture(logging_objs: list[Obj]) -> Obj:
    return one(logging_objs, "DaemonSet", "fluent-bit")


@pytest.fixture(scope="module", name="fb_container")
def fb_container_fixture(daemonset: Obj) -> dict[str, Any]:
    (container,) = daemonset["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def parse_size(text: str) -> int:
    """Fluent Bit sizes (K, M, G: decimal, as flb_utils_size_to_bytes reads them)
    and Kubernetes quantities (Ki, Mi, Gi: binary)."""
    m = re.fullmatch(r"(\d+)(K|M|G|KB|MB|GB|Ki|Mi|Gi)?", str(text))
    assert m, text
    unit = m.group(2) or ""
    factor = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "Ki": 2**10, "Mi": 2**20,
              "Gi": 2**30}[unit.removesuffix("B") if unit.endswith("B") else unit]  # fmt: skip
    return int(m.group(1)) * factor
