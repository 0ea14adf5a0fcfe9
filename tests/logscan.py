"""Every log line a test run writes, kept as production writes it, for one last test that looks
for what must never reach a log: an API key, a prompt, a channel secret, a password, a remote
reply's body.

In-process records go through a copy of production's handler (``RedactingFilter`` and
``JsonFormatter`` of ``orchestrator.logs``) into ``<log dir>/in-process.jsonl``; worker
processes started by the tests write their stderr and stdout into the same directory
(``worker_log``). The directory is ``ORCH_TEST_LOG_DIR``, set for the session by
``tests/conftest.py``; under xdist, each worker's is a directory of ``ORCH_TEST_LOG_ROOT``.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from orchestrator.logs import JsonFormatter, RedactingFilter

LOG_DIR_ENV = "ORCH_TEST_LOG_DIR"
LOG_ROOT_ENV = "ORCH_TEST_LOG_ROOT"
REPLY_CANARY = "reply-body-canary-5e1f"  # test receivers answer with it; no log may show it

# What the tests send as prompts, secrets and reply bodies, and what keys and passwords look
# like: none of it may appear in any log line.
FORBIDDEN: dict[str, re.Pattern[str]] = {
    "API key": re.compile(r"orch_[0-9a-f]{8}_[A-Za-z0-9_\-]{20,}"),
    "prompt": re.compile(
        r"lighthouse|haiku on ledgers|an honest ledger|a red kite|secret storyboard|"
        r"secret plan|soak 0\.\d{6}|top secret prompt"),
    "channel secret": re.compile(r"s3cret-value|s{20,}|whsec_[A-Za-z0-9_\-]"),
    # (a password Celery's banner masks as ** is not one)
    "password in a URL": re.compile(r"://[^/\s:@\"']*:(?!\*+@)[^/\s@\"']+@"),
    "reply body": re.compile(REPLY_CANARY),
}


def log_dir() -> Path | None:
    value = os.environ.get(LOG_DIR_ENV)
    return Path(value) if value else None


class ProductionCopy(logging.Handler):
    """Formats a copy of every record as production's handler would and appends it to a file
    (the record itself is left alone: pytest's own capture sees it unredacted).

    ``close`` leaves the file open: uvicorn's start-up (``logging.config.dictConfig``) closes
    every handler it finds, ours included, without removing it; ``finish`` ends the file."""

    def __init__(self, path: Path) -> None:
        super().__init__(logging.DEBUG)
        self._file: IO[str] = path.open("a", encoding="utf-8")
        self._redact = RedactingFilter()
        self._lock_file = threading.Lock()
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            mine = copy.copy(record)
            mine.__dict__ = dict(record.__dict__)
            self._redact.filter(mine)
            line = self.format(mine) + "\n"
            with self._lock_file:
                if not self._file.closed:
                    self._file.write(line)
                    self._file.flush()
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        pass

    def finish(self) -> None:
        with self._lock_file:
            self._file.close()
        super().close()


def worker_log(name: str) -> IO[bytes] | None:
    """A file a test's subprocess writes its output to (None outside a test session)."""
    where = log_dir()
    if where is None:
        return None
    return (where / f"{name}-{os.getpid()}.log").open("ab")


def findings(paths: list[Path]) -> Iterator[tuple[str, str, str]]:
    """(file name, what was found, the line) for every forbidden thing in ``paths``."""
    for path in paths:
        with path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                for what, pattern in FORBIDDEN.items():
                    if pattern.search(line):
                        yield path.name, what, line.strip()[:300]


def scan_all_logs(root: Path) -> tuple[int, list[tuple[str, str, str]]]:
    """(lines read, findings) over every log file under ``root``, each worker's included."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    lines = sum(1 for p in files for _ in p.open(encoding="utf-8", errors="replace"))
    return lines, list(findings(files))
