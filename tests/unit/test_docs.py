"""The documentation in docs/ keeps up with the code: every setting is in configuration.md,
every HTTP route and CLI command in api.md, and README points at docs/ only."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer
from pydantic_settings import BaseSettings

from orchestrator.backup.pgtools import BackupSettings
from orchestrator.notify.settings import SmtpSettings
from orchestrator.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
# variables documented in configuration.md that are not fields of a settings class
NOT_SETTINGS = {"ORCH_TEST_DATABASE_URL", "ORCH_TEST_REDIS_URL", "ORCH_READY_FILE"}
RANGE = "\u2013"  # the en dash of a range such as 1-200 in the docs
SETTINGS_CLASSES: tuple[type[BaseSettings], ...] = (Settings, SmtpSettings, BackupSettings)


def settings_names() -> set[str]:
    return {ENV_PREFIX + name.upper() for cls in SETTINGS_CLASSES for name in cls.model_fields}


def test_every_setting_is_in_configuration_md() -> None:
    text = (DOCS / "configuration.md").read_text()
    missing = sorted(n for n in settings_names() if f"`{n}`" not in text)
    assert missing == [], f"add to docs/configuration.md: {missing}"


def _default_cells() -> dict[str, str]:
    """``ORCH_X`` -> the default column of its row in configuration.md."""
    text = (DOCS / "configuration.md").read_text()
    return {m[1]: m[2].strip() for m in re.finditer(r"^\| `(ORCH_[A-Z0-9_]+)` \| ([^|]*) \|",
                                                    text, re.M)}


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    return f"`{value}`"


def test_configuration_md_gives_each_settings_default_and_bounds() -> None:
    cells = _default_cells()
    wrong: list[str] = []
    for cls in SETTINGS_CLASSES:
        for name, field in cls.model_fields.items():
            env, cell = ENV_PREFIX + name.upper(), cells.get(ENV_PREFIX + name.upper(), "")
            default = field.default
            expected = ("unset" if default is None else "empty" if default == ""
                        else _shown(default))
            shown = cell.split(" ", 1)[0].replace(".0`", "`")
            if shown != expected:
                wrong.append(f"{env}: default {expected}, docs say {cell!r}")
            for bound in field.metadata:
                ge, gt = getattr(bound, "ge", None), getattr(bound, "gt", None)
                le = getattr(bound, "le", None)
                if le is not None and "≤" not in cell and RANGE not in cell:
                    wrong.append(f"{env}: at most {le}, docs say {cell!r}")
                if ge is not None and f"≥ {ge}" not in cell and f"({ge}{RANGE}" not in cell:
                    wrong.append(f"{env}: at least {ge}, docs say {cell!r}")
                # above 0 is the stated rule for durations (_S); any other must be shown
                if gt is not None and not (gt == 0 and env.endswith("_S")) \
                        and f"> {gt}" not in cell:
                    wrong.append(f"{env}: above {gt}, docs say {cell!r}")
                if getattr(bound, "min_length", None) and "not empty" not in cell:
                    wrong.append(f"{env}: not empty, docs say {cell!r}")
    assert wrong == [], "docs/configuration.md:\n" + "\n".join(wrong)


def test_configuration_md_names_no_setting_the_code_does_not_have() -> None:
    text = (DOCS / "configuration.md").read_text()
    named = set(re.findall(r"\bORCH_[A-Z0-9_]*[A-Z0-9]\b", text))
    stale = sorted(named - settings_names() - NOT_SETTINGS)
    assert stale == [], f"docs/configuration.md names settings that do not exist: {stale}"


def test_every_http_route_is_in_api_md() -> None:
    from orchestrator.api.app import create_app
    from orchestrator.bootstrap import Container

    settings = Settings(database_url="postgresql+psycopg://u@127.0.0.1:1/unused",
                        redis_url="redis://127.0.0.1:1/0")
    spec = create_app(Container(settings)).openapi()  # connects to nothing
    text = (DOCS / "api.md").read_text()
    routes = [f"{method.upper()} {path}" for path, ops in spec["paths"].items()
              for method in ops]
    assert len(routes) >= 12
    missing = [r for r in routes if f"`{r}`" not in text]
    assert missing == [], f"add to docs/api.md: {missing}"


def _commands(group: Any, prefix: str) -> list[str]:
    """Every leaf command under ``group`` (typer's click Group, vendored or not)."""
    found: list[str] = []
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            found += _commands(cmd, f"{prefix} {name}")
        else:
            found.append(f"{prefix} {name}")
    return found


def test_every_cli_command_is_in_api_md() -> None:
    from orchestrator.cli import app

    group = typer.main.get_command(app)
    commands = _commands(group, "orchestrator")
    assert "orchestrator backup restore" in commands
    text = (DOCS / "api.md").read_text()
    missing = [c for c in commands if c not in text]
    assert missing == [], f"add to docs/api.md: {missing}"


# options every client command takes, described once above the table
SHARED_OPTIONS = {"--json", "--api-url", "--api-key", "--help"}


def _leaf_commands(group: Any, prefix: str) -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    for name, cmd in group.commands.items():
        found += (_leaf_commands(cmd, f"{prefix} {name}") if hasattr(cmd, "commands")
                  else [(f"{prefix} {name}", cmd)])
    return found


def test_every_cli_option_is_in_its_row_of_api_md() -> None:
    from orchestrator.cli import app

    rows = [line for line in (DOCS / "api.md").read_text().splitlines()
            if line.startswith("| `orchestrator ")]
    missing = []
    for name, cmd in _leaf_commands(typer.main.get_command(app), "orchestrator"):
        mine = [r for r in rows if re.search(re.escape(name) + r"(?![\w-])", r)]
        for param in cmd.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("--") and opt not in SHARED_OPTIONS \
                        and not any(opt in r for r in mine):
                    missing.append(f"{name} {opt}")
    assert missing == [], f"add to the command table of docs/api.md: {missing}"


def test_readme_links_to_docs_that_exist_and_not_outside_the_repository() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "../shared" not in readme
    linked = set(re.findall(r"\]\((docs/[a-z_]+\.md)(?:#[^)]*)?\)", readme))
    expected = {f"docs/{n}.md" for n in ("architecture", "configuration", "api", "operations")}
    assert expected <= linked
    assert all((ROOT / link).exists() for link in linked)
