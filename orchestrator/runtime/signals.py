"""SIGTERM (``docker stop``, systemd, ``timeout``, a supervisor) as an exit that leaves
through every ``finally``, as Ctrl-C does, where the default action would end the process in
place; and Ctrl-C that is not lost where Python drops its KeyboardInterrupt."""

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


def sigint_also_sets(*events: threading.Event) -> None:
    """From now on Ctrl-C (SIGINT) raises KeyboardInterrupt, as Python's own handler does,
    and sets ``events`` first. Python runs a signal's handler at whatever line the main thread
    is on, and a KeyboardInterrupt raised in a weakref callback or a ``__del__`` (as an
    import or the garbage collector runs them) is printed as ignored and dropped: `up`, hit
    so while it imported its API modules, went on and started every process. The events
    stay set, so a caller that looks at them between its steps stops all the same. On the
    main thread only."""

    def interrupt(signum: int, frame: FrameType | None) -> NoReturn:
        for event in events:
            event.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
