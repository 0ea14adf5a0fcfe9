"""orchestrator.runtime.heap: start-up objects leave the collector's generations."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from orchestrator.runtime.heap import freeze_startup_heap


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


@pytest.mark.usefixtures("unfrozen")
def test_freezing_takes_the_long_lived_objects_out_of_full_collections() -> None:
    survivors = [[i] for i in range(10_000)]  # tracked containers that outlive start-up
    before = len(gc.get_objects(generation=2))

    frozen = freeze_startup_heap()

    assert frozen >= len(survivors)
    assert gc.get_freeze_count() >= len(survivors)  # (refcounting still frees frozen objects)
    # what a full collection walks now is only what was allocated since
    assert len(gc.get_objects(generation=2)) < before - len(survivors)
    gc.collect()
    assert all(o == [i] for i, o in enumerate(survivors))  # frozen, not freed
