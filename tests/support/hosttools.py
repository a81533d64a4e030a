"""The programs of the host a test needs (kubectl, podman, promtool, ...): a test
without one skips, saying which, except in CI (CI=true), where it fails."""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def require_tool(name: str) -> str:
    """Path of `name`; skip the test without it, or fail it in CI (CI=true)."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not installed"
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: no test may skip for a missing tool)")
        pytest.skip(reason)
    return path
