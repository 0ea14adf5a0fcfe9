"""How every ``orchestrator`` command ends on an error: one line on stderr, exit status 1
(a usage error: status 2, from ``orchestrator.cli.main.run``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import wraps
from typing import Any, NoReturn, TypeVar

import psycopg
import typer
from sqlalchemy import exc as sa

from orchestrator.errors import OrchestratorError

F = TypeVar("F", bound=Callable[..., Any])
Said = tuple[type[Exception], Callable[[Any], str]]  # an error type and its one line

# ``scheme://user:password@`` in a message: the password goes before anything is printed
_URL_PASSWORD = re.compile(r"(//[^/\s:@]*:)[^@\s]*@")


class UsageError(ValueError):
    """A bad value on the command line that the command finds itself (a period, a
    ``--param`` without ``=``): status 2, as click's own usage errors."""


def say(message: str) -> None:
    """``error: <message>`` on stderr, on one line: a message of several lines (a pydantic
    ``ValidationError`` is a ``ValueError``) is joined."""
    line = " ".join(s.strip() for s in message.splitlines() if s.strip())
    typer.echo(f"error: {line}", err=True)


def fail(message: str, code: int = 1) -> NoReturn:
    say(message)
    raise typer.Exit(code)


def mask_passwords(text: str) -> str:
    """``text`` with the password of any URL in it as ``***``."""
    return _URL_PASSWORD.sub(r"\1***@", text)


def first_line(text: str) -> str:
    """The first non-empty line of ``text``, passwords masked: a driver's message goes on
    with hints, and SQLAlchemy's with the statement and its parameters (which may hold a key
    hash or a sealed secret), none of which is printed."""
    return mask_passwords(next((s.strip() for s in text.splitlines() if s.strip()), ""))


def database_reason(exc: sa.SQLAlchemyError | psycopg.Error) -> str:
    """One line for a database error: unreachable, or what the server refused."""
    # imported here: it imports redis, which no command needs until something went wrong
    from orchestrator.outage import unavailable

    cause = exc.orig if isinstance(exc, sa.DBAPIError) and exc.orig is not None else exc
    reason = first_line(str(cause)) or type(cause).__name__
    if unavailable(exc) is not None:
        return f"cannot reach the database: {reason}"
    if isinstance(cause, psycopg.errors.UndefinedTable):
        return f"database error: {reason} (is it migrated? orchestrator migrate)"
    return f"database error: {reason}"


def errors_as_one_line(*first: Said) -> Callable[[F], F]:
    """A decorator: the command's errors of the ``first`` types (checked in order), then any
    ``OrchestratorError``, database error or ``ValueError``, as one line, not a traceback."""
    said: tuple[Said, ...] = (
        *first, (OrchestratorError, lambda e: e.message),
        (sa.SQLAlchemyError, database_reason), (psycopg.Error, database_reason),
        (ValueError, str),
    )
    types = tuple(t for t, _ in said)

    def decorate(fn: F) -> F:
        @wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except types as exc:
                fail(next(line(exc) for t, line in said if isinstance(exc, t)),
                     2 if isinstance(exc, UsageError) else 1)

        return wrapper  # type: ignore[return-value]

    return decorate


one_line_errors = errors_as_one_line()
