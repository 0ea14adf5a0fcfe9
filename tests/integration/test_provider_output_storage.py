"""A provider's output is stored whatever text it holds: jsonb refuses NUL and NaN, and a
refused write left a paid job running, its hold held, with the provider's text quoted in the
database error that the worker logged."""

from __future__ import annotations

from sqlalchemy import Engine, text

from orchestrator.ledger import Ledger
from orchestrator.ledger.endings import ClosingAttempt
from orchestrator.store import jobs as repo

from .ledger_helpers import (
    T0,
    FakeClock,
    admitted_text_job,
    assert_sound,
    hold_status,
    make_budget,
)


def test_output_with_nul_and_nan_ends_the_job_and_is_charged(db: Engine) -> None:
    make_budget(db, "tenant:acme", "month", 10_000_000)
    ledger = Ledger(db, clock=FakeClock())
    job = admitted_text_job(ledger)
    with db.begin() as conn:
        opened = repo.claim_and_open(conn, job.id, job.chain_token, T0, "txt-small", lease_s=60)
    assert opened is not None

    output = {"text": "CONFIDENTIAL\x00 reply \ud800", "logprob": float("nan"),
              "k\x00": [float("inf"), 1.5]}
    end = ledger.end_job(job.id, "succeeded", T0, backend="txt-small", result=output,
                         attempt=ClosingAttempt(opened[1].id, "succeeded", "success", 328))

    assert end is not None and end.ended
    with db.connect() as conn:
        status, stored = conn.execute(text("SELECT status, result FROM jobs WHERE id = :j"),
                                      {"j": job.id}).one()
    assert status == "succeeded"
    assert stored == {"text": "CONFIDENTIAL\ufffd reply \ufffd", "logprob": None,
                      "k\ufffd": [None, 1.5]}
    assert hold_status(db, job.id) == "settled"
    assert_sound(db)
