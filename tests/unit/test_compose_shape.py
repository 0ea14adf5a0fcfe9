"""compose.yaml as production runs it, checked without Docker: what the containers' logs may
take of the disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return data


def test_every_service_rotates_its_logs() -> None:
    """Docker's default json-file driver keeps a container's output for ever: the workers'
    JSON lines would fill the host's disk. Each service caps its logs."""
    unbounded = []
    for name, svc in compose()["services"].items():
        logging = svc.get("logging") or {}
        options = logging.get("options") or {}
        if logging.get("driver") not in ("json-file", "local") or not options.get("max-size") \
                or not options.get("max-file"):
            unbounded.append(name)
    assert unbounded == [], f"services whose logs grow without bound: {unbounded}"
