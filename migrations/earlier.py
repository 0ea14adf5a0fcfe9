"""An earlier migration's module, for a later one's ``downgrade`` to restore what it left
(migration files never change once released, so their SQL is the record of it)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType


def migration(filename: str) -> ModuleType:
    """The module of ``migrations/versions/<filename>``, loaded under a name of its own."""
    path = Path(__file__).with_name("versions") / filename
    spec = importlib.util.spec_from_file_location(f"_orch_migration_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
