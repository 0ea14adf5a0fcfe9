"""Fixtures shared by the integration tests (the end-to-end rig, the client CLI app)."""

import sys

import pytest

from .api_fixture import cli  # noqa: F401
from .e2e_support import e2e_sim, rig  # noqa: F401


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Where the console's browser tests left their screenshots, if they ran."""
    support = sys.modules.get("tests.integration.console_support")
    saved = getattr(support, "SAVED", [])
    if saved:
        terminalreporter.write_line(
            f"console screenshots ({len(saved)}): {saved[0].parent}")
