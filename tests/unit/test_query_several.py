"""Which query parameters may be repeated: those whose annotation takes several values, read
from the annotation itself (FastAPI's own helper is private)."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import pytest

from orchestrator.api.query import _several


# Optional[...] is typing.Union, not the X | None of types.UnionType: both are read
@pytest.mark.parametrize("annotation", [list[str], Optional[list[int]],  # noqa: UP045
                                        set[int] | None, Annotated[list[str], "doc"],
                                        tuple[int, ...], frozenset[str]])
def test_annotations_of_several_values(annotation: Any) -> None:
    assert _several(annotation)


@pytest.mark.parametrize("annotation", [str, int | None, None, bytes,
                                        Optional[str],  # noqa: UP045
                                        Annotated[int, "doc"], dict[str, str]])
def test_annotations_of_one_value(annotation: Any) -> None:
    assert not _several(annotation)
