"""Fixtures shared by the integration tests (the end-to-end rig, the client CLI app)."""

import sys
import time
from pathlib import Path

import pytest

from .api_fixture import cli  # noqa: F401
from .e2e_support import e2e_sim, rig  # noqa: F401

_STARTED = time.time()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Where the console's browser tests left their screenshots, if they ran: this process's
    list, or, in the process that ran none itself (under xdist), the files written since it
    started."""
    support = sys.modules.get("tests.integration.console_support")
    saved = getattr(support, "SAVED", []) or _written_since_start()
    if saved:
        terminalreporter.write_line(
            f"console screenshots ({len(saved)}): {saved[0].parent}")


def _written_since_start() -> list[Path]:
    from .console_support import ARTIFACTS

    if not ARTIFACTS.is_dir():
        return []
    return [p for p in ARTIFACTS.glob("*.png") if p.stat().st_mtime >= _STARTED]
