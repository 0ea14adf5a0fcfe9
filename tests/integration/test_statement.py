"""store.statement.Statement: driver-level statements behave like Connection.execute ones."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from orchestrator.store.statement import Statement

_ECHO = Statement("SELECT CAST(:a AS int) + 1, CAST(:b AS text) || ':' || 'x', '100%'")
_INSERT = Statement("INSERT INTO holds (job_id, amount_micros, expires_at) "
                    "VALUES (:job, :amount, now()) RETURNING id")


def test_named_parameters_casts_and_literals(db: Engine) -> None:
    with db.begin() as conn:
        assert _ECHO.first(conn, {"a": 41, "b": "k"}) == (42, "k:x", "100%")
        assert _ECHO.scalar(conn, {"a": 1, "b": ""}) == 2


def test_it_joins_the_sqlalchemy_transaction(db: Engine) -> None:
    job = uuid.uuid4()
    with db.connect() as conn:
        _INSERT.first(conn, {"job": job, "amount": 5})
        conn.rollback()
    with db.connect() as conn:
        _INSERT.first(conn, {"job": job, "amount": 5})
        conn.commit()
    with db.connect() as conn:
        count = conn.execute(text("SELECT count(*) FROM holds WHERE job_id = :j"), {"j": job})
        assert count.scalar_one() == 1


def test_errors_are_sqlalchemy_errors_without_parameters(db: Engine) -> None:
    job = uuid.uuid4()
    with db.begin() as conn:
        _INSERT.first(conn, {"job": job, "amount": 5})
    with pytest.raises(IntegrityError) as caught, db.begin() as conn:
        _INSERT.first(conn, {"job": job, "amount": 424242})
    assert "424242" not in str(caught.value)
