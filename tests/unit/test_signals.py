"""Ctrl-C is not lost where Python drops a KeyboardInterrupt: a handler that runs inside a
weakref callback (as an import or the garbage collector runs them) raises it into a place
whose exceptions are printed and dropped. The event it also sets stays set."""

from __future__ import annotations

import signal
import sys
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator.runtime.signals import sigint_also_sets


@pytest.fixture
def sigint_handler_restored() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def ctrl_c_in_a_weakref_callback(monkeypatch: pytest.MonkeyPatch) -> list[type[BaseException]]:
    """SIGINT while a weakref callback runs; the exceptions Python dropped there."""
    dropped: list[type[BaseException]] = []
    monkeypatch.setattr(sys, "unraisablehook",
                        lambda u: dropped.append(type(u.exc_value)) if u.exc_value else None)

    class Thing:
        pass

    thing = Thing()
    ref = weakref.ref(thing, lambda _: signal.raise_signal(signal.SIGINT))
    del thing  # the callback runs here, and the handler in it
    assert ref() is None
    return dropped


@pytest.mark.usefixtures("sigint_handler_restored")
def test_a_ctrl_c_whose_keyboard_interrupt_is_dropped_still_sets_the_events(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert threading.current_thread() is threading.main_thread()
    stop, ctrl_c = threading.Event(), threading.Event()
    sigint_also_sets(stop, ctrl_c)
    assert ctrl_c_in_a_weakref_callback(monkeypatch) == [KeyboardInterrupt]  # dropped
    assert stop.is_set() and ctrl_c.is_set()  # and still known


@pytest.mark.usefixtures("sigint_handler_restored")
def test_a_ctrl_c_elsewhere_is_a_keyboard_interrupt_as_before() -> None:
    stop = threading.Event()
    sigint_also_sets(stop)
    caught: Any = None
    try:
        signal.raise_signal(signal.SIGINT)
    except KeyboardInterrupt as exc:
        caught = exc
    assert isinstance(caught, KeyboardInterrupt) and stop.is_set()
