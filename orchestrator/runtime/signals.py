"""SIGTERM (``docker stop``, systemd, ``timeout``, a supervisor) as an exit that leaves
through every ``finally``, as Ctrl-C does, where the default action would end the process in
place."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import NoReturn


@contextmanager
def sigterm_exits(code: int, say: Callable[[], None] | None = None) -> Iterator[None]:
    """While the block runs, SIGTERM raises ``SystemExit(code)`` (after ``say()``, if
    given); a second one is ignored, so the cleanup it started is not cut short. Only on the
    main thread (elsewhere a signal cannot be caught from Python: the block runs as it is);
    the handler found is put back after the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> NoReturn:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if say is not None:
            say()
        raise SystemExit(code)

    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:  # None: a handler not set from Python, which cannot be put back
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
