"""kubectl against the local cluster: its kubeconfig (layout.KUBECONFIG), run from
the repository root. The tool (`up`) and the tests (tests.support.clusterlib) both
run it through `kubectl()`; each decides what a failure means to it."""

from __future__ import annotations

import subprocess

from tests.support.repo import REPO_ROOT
from tools.cluster.layout import KUBECONFIG


def kubectl(
    *args: str, timeout: float = 60, stdin: str | None = None, binary: str = "kubectl"
) -> subprocess.CompletedProcess[str]:
    """`kubectl --kubeconfig .cluster/kubeconfig <args>`, output captured as text."""
    return subprocess.run(
        [binary, "--kubeconfig", str(KUBECONFIG), *args],
        input=stdin, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
    )  # fmt: skip
