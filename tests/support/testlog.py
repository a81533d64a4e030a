"""`say`: a line in the test log past pytest's capture, so the CI log shows the
figures a test measured even when it passes (tests/conftest.py binds the session)."""

from __future__ import annotations

import sys
from typing import Any

import pytest

_config: pytest.Config | None = None


def bind(config: pytest.Config | None) -> None:
    """The session whose terminal `say` writes to (None: stderr)."""
    global _config
    _config = config


def say(tag: str, text: str) -> None:
    """`[tag] text` on the terminal, as capsys.disabled() prints."""
    line = f"[{tag}] {text}"
    if _config is None:
        print(line, file=sys.stderr)
        return
    capman: Any = _config.pluginmanager.get_plugin("capturemanager")
    reporter: Any = _config.pluginmanager.get_plugin("terminalreporter")
    with capman.global_and_fixture_disabled():
        reporter.write_line(line)
