"""How every ``orchestrator`` command ends on an error: one line on stderr, exit status 1."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, NoReturn, TypeVar

import typer

from orchestrator.errors import OrchestratorError

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def one_line_errors(fn: F) -> F:
    """The command's ``OrchestratorError`` or ``ValueError`` as one line, not a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OrchestratorError as exc:
            fail(exc.message)
        except ValueError as exc:
            fail(str(exc))

    return wrapper  # type: ignore[return-value]
