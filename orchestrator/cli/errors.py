"""How every ``orchestrator`` command ends on an error: one line on stderr, exit status 1."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, NoReturn, TypeVar

import typer

from orchestrator.errors import OrchestratorError

F = TypeVar("F", bound=Callable[..., Any])
Said = tuple[type[Exception], Callable[[Any], str]]  # an error type and its one line


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def errors_as_one_line(*first: Said) -> Callable[[F], F]:
    """A decorator: the command's errors of the ``first`` types (checked in order), then any
    ``OrchestratorError`` or ``ValueError``, as one line, not a traceback."""
    said: tuple[Said, ...] = (*first, (OrchestratorError, lambda e: e.message), (ValueError, str))
    types = tuple(t for t, _ in said)

    def decorate(fn: F) -> F:
        @wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except types as exc:
                fail(next(line(exc) for t, line in said if isinstance(exc, t)))

        return wrapper  # type: ignore[return-value]

    return decorate


one_line_errors = errors_as_one_line()
