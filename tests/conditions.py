"""Waiting on a condition in a test, with a timeout: never a sleep standing in for it."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(what: str, predicate: Callable[[], bool], timeout: float = 30.0,
             interval: float = 0.02) -> None:
    """Until ``predicate()`` holds, looked at every ``interval`` s; AssertionError naming
    ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)  # the polling interval of a condition wait
