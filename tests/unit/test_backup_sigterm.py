"""The backup commands' SIGTERM handling (orchestrator.cli.backup.stop_on_sigterm): an exit
while their block runs, on the main thread only, the handler found put back after."""

from __future__ import annotations

import signal
import threading
from types import FrameType

import pytest

from orchestrator.cli.backup import stop_on_sigterm


def test_sigterm_is_an_exit_in_the_block_and_the_old_handler_is_back_after() -> None:
    seen: list[int] = []

    def mine(signum: int, frame: FrameType | None) -> None:
        seen.append(signum)

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        with pytest.raises(SystemExit) as stopped, stop_on_sigterm():
            signal.raise_signal(signal.SIGTERM)
        assert stopped.value.code == 128 + signal.SIGTERM
        # before, the command's handler stayed: a later SIGTERM exited from anywhere
        assert signal.getsignal(signal.SIGTERM) is mine
        signal.raise_signal(signal.SIGTERM)
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_off_the_main_thread_the_block_runs_without_a_handler() -> None:
    """Before, signal.signal raised there: the command could not run in a thread at all."""
    ran: list[BaseException | None] = []

    def run() -> None:
        try:
            with stop_on_sigterm():
                ran.append(None)
        except BaseException as exc:  # what the thread met is the finding
            ran.append(exc)

    before = signal.getsignal(signal.SIGTERM)
    worker = threading.Thread(target=run)
    worker.start()
    worker.join(10)
    assert ran == [None]
    assert signal.getsignal(signal.SIGTERM) is before
