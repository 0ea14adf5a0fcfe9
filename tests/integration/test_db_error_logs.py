"""A PostgreSQL error that quotes a row or a value (a prompt, a provider's reply) reaches no
log: its DETAIL and CONTEXT lines and the value after "invalid input syntax" are redacted,
whether the error is logged with its traceback or inside a message as Celery logs a failed
task (``%r``: the newlines escaped)."""

from __future__ import annotations

import io
import json
import logging

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from orchestrator.logs import REDACTED
from orchestrator.store.statement import Statement

from ..unit.test_logs import out  # noqa: F401 (the fixture: the root logger as JSON lines)

PROMPT = "whalesong_under_the_midnight_ice"


def _raised(db: Engine, sql: str) -> DBAPIError:
    with pytest.raises(DBAPIError) as caught, db.begin() as conn:
        Statement("CREATE TEMP TABLE prompts (body text CHECK (length(body) < 5))").run(conn, {})
        Statement(sql).run(conn, {"body": PROMPT})
    return caught.value


@pytest.mark.parametrize(("sql", "kept"), [
    # DETAIL:  Failing row contains (<the prompt>).
    ("INSERT INTO prompts VALUES (:body)", "prompts_body_check"),
    # CONTEXT:  JSON data, line 1: <the prompt>
    ("SELECT CAST(:body AS jsonb)", "invalid input syntax for type json"),
    # invalid input syntax for type uuid: "<the prompt>"
    ("SELECT CAST(:body AS uuid)", "invalid input syntax for type uuid"),
])
def test_a_database_error_logs_its_kind_but_no_value(
        db: Engine, out: io.StringIO, sql: str, kept: str) -> None:  # noqa: F811 (the fixture)
    error = _raised(db, sql)
    assert PROMPT[:20] in str(error.orig)  # the driver's text does quote it
    log = logging.getLogger("orchestrator.test")
    try:
        raise error
    except DBAPIError:
        log.exception("step failed")
    log.error("Task %s raised unexpected: %r", "job.step", error)  # as Celery logs it
    text = out.getvalue()
    assert PROMPT[:20] not in text
    traceback_line, celery_line = (json.loads(line) for line in text.splitlines())
    assert kept in traceback_line["exc"] and kept in celery_line["message"]
    assert REDACTED in traceback_line["exc"] and REDACTED in celery_line["message"]
