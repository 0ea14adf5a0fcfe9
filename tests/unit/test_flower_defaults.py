"""Where Flower's default basic-auth password comes from (workers.flower_defaults); the
integration test (tests/integration/test_flower.py) starts Flower itself."""

from __future__ import annotations

import stat
from pathlib import Path

from orchestrator.settings import Settings
from workers.flower_defaults import flower_credentials


def test_the_password_in_the_settings_wins_and_writes_nothing(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, flower_user="ops", flower_password="s3cret-pass")
    assert flower_credentials(settings) == ("ops", "s3cret-pass", "ORCH_FLOWER_PASSWORD")
    assert not (tmp_path / "flower.password").exists()


def test_without_one_a_password_is_generated_once_into_the_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "d"
    user, generated, source = flower_credentials(Settings(data_dir=data))
    assert (user, source) == ("flower", str(data / "flower.password"))
    assert len(generated) >= 40
    assert stat.S_IMODE((data / "flower.password").stat().st_mode) == 0o600
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert flower_credentials(Settings(data_dir=data))[1] == generated  # kept
