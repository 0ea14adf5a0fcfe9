"""The session's log scan (``tests/logscan.py``) recognises every secret the server makes."""

from __future__ import annotations

from pathlib import Path

from orchestrator.events.endpoints import make_secret
from tests.logscan import findings


def test_every_made_webhook_secret_is_found_in_a_log_line(tmp_path: Path) -> None:
    made = [make_secret() for _ in range(500)]  # some start with "-" or "_" after the prefix
    log = tmp_path / "in-process.jsonl"
    log.write_text("".join(f'{{"msg": "signing with {s}"}}\n' for s in made))
    found = list(findings([log]))
    assert len(found) == len(made)
    assert {what for _, what, _ in found} == {"channel secret"}
    clean = tmp_path / "clean.jsonl"
    clean.write_text('{"msg": "webhook delivery 3 (job): http_503 (attempt 1)"}\n')
    assert list(findings([clean])) == []
