"""store.statement.Statement: driver-level statements behave like Connection.execute ones."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError, IntegrityError

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


_BUMP_RETURNING = Statement("UPDATE holds SET amount_micros = amount_micros + :by "
                            "WHERE job_id = :job RETURNING amount_micros")


def _amount(db: Engine, job: uuid.UUID) -> int:
    with db.connect() as conn:
        return int(conn.execute(text("SELECT amount_micros FROM holds WHERE job_id = :j"),
                                {"j": job}).scalar_one())


def test_first_and_commit_commits_and_unlocks_before_the_block_ends(db: Engine) -> None:
    job = uuid.uuid4()
    with db.begin() as conn:
        _INSERT.first(conn, {"job": job, "amount": 5})
    with db.begin() as conn:
        assert _BUMP_RETURNING.first_and_commit(conn, {"by": 1, "job": job}) == (6,)
        # still inside the block: the row is committed and no longer locked
        with db.connect() as other:
            other.execute(text("SET lock_timeout = '2s'"))
            other.execute(text("UPDATE holds SET amount_micros = amount_micros + 10 "
                               "WHERE job_id = :j"), {"j": job})
            other.commit()
    assert _amount(db, job) == 16


def test_first_and_commit_commits_nothing_when_the_statement_fails(db: Engine) -> None:
    job, other_job = uuid.uuid4(), uuid.uuid4()
    with db.begin() as conn:
        _INSERT.first(conn, {"job": job, "amount": 5})
    fails = Statement("UPDATE holds SET amount_micros = amount_micros / 0 WHERE job_id = :job")
    with pytest.raises(DBAPIError), db.begin() as conn:
        _INSERT.first(conn, {"job": other_job, "amount": 7})
        fails.first_and_commit(conn, {"job": job})
    with db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM holds WHERE job_id = :j"),
                            {"j": other_job}).scalar_one() == 0
    assert _amount(db, job) == 5
