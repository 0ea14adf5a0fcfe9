"""A module of loadtests/ (a folder of scripts, not a package) imported for its tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def loadtest_module(name: str) -> ModuleType:
    """``loadtests/<name>.py`` as the module ``loadtests_<name>``."""
    module_name = f"loadtests_{name}"
    spec = importlib.util.spec_from_file_location(module_name,
                                                  ROOT / "loadtests" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
