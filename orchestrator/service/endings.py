"""How the chain ends an attempt or a job, and what each ending tells the breaker, the slot
waits and the observer.

A job ends in one ledger statement (``orchestrator.ledger.endings``): its last attempt closed,
its final status and cost, its hold settled, released, or kept for an attempt that outlived the
job's end. Here that statement is made for the chain's three endings (``succeed``, ``fail``,
``end_concluded``: an ended job's attempt concluding), an attempt closed on its own before a
fail-over (``close``), and what the ending charged (``charged``). Every closed attempt gives
its slot back with the breaker's outcome (``attempt_closed``); a statement a duplicate step
ran first changes nothing, so nothing is reported twice.

A job that ended before its attempt (cancelled, or failed by its deadline) and whose attempt
the provider finished all the same (it ignored the stop, or had finished before it) is
charged that work in full, so it keeps the output: written as the job's result, as a
succeeded job's is stored, the job's status unchanged (its terminal event went out when it
ended), by the statement that closes the attempt (``orch_end_job``, migration 0021), whether
the attempt concludes after the job's end or the job ended between a success's answer and
its ending. A crash never leaves the job charged for an attempt closed ``succeeded`` without
its output. The output's files are written before that statement; those of an output it did
not keep are deleted with any expired result's (``events.retention``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from psycopg_pool import ConnectionPool
from sqlalchemy import Engine

from orchestrator.backends.base import PollResult
from orchestrator.domain.catalogue import Catalogue
from orchestrator.ledger import Ledger
from orchestrator.ledger.endings import JobEnd
from orchestrator.service.attempts import Closing, closing_of
from orchestrator.service.observe import JobObserver
from orchestrator.service.slots import SlotWaits
from orchestrator.store import files
from orchestrator.store import jobs as repo
from orchestrator.store.engine import autocommit

# the chain's logger: its records keep the name they had before the chain was split up
log = logging.getLogger("orchestrator.service.runner")


class Endings:
    def __init__(self, engine: Engine, ledger: Ledger, catalogue: Callable[[], Catalogue],
                 slots: SlotWaits, observer: JobObserver,
                 clock: Callable[[], datetime],
                 on_end: Callable[[repo.JobRow], object] | None = None) -> None:
        self.engine = engine
        self.ledger = ledger
        self.catalogue = catalogue
        self.slots = slots
        self.observe = observer
        self.clock = clock
        # told when a job with a cache key ends: its followers wait for it (service.cache)
        self.on_end = on_end

    @property
    def db(self) -> ConnectionPool[Any]:
        """The engine's autocommit pool, looked up per use (see ``JobRunner.db``)."""
        return autocommit(self.engine)

    def close(self, job: repo.JobRow, attempt: repo.AttemptRow, closing: Closing,
              latency_ms: float | None = None) -> bool:
        """Close the attempt alone: the job goes on (it fails over). False: it was already
        closed."""
        now = self.clock()
        exc = closing.error
        with self.db.connection() as conn:
            closed = repo.close_attempt(
                conn, attempt.id, closing.status, now, fault=closing.outcome.value,
                error_code=exc.code if exc else None, error_message=exc.message if exc else None,
                cost_micros=closing.cost, possible_cost_micros=closing.possible,
            )
        if closed:
            self.attempt_closed(job, attempt, closing, now, latency_ms)
        return closed

    def attempt_closed(self, job: repo.JobRow, attempt: repo.AttemptRow, closing: Closing,
                       now: datetime, latency_ms: float | None = None) -> None:
        if attempt.backend in self.catalogue():
            self.slots.released(attempt.backend, closing.outcome, latency_ms=latency_ms,
                                probe=attempt.probe, slot=attempt.slot)
        exc = closing.error
        self.observe.attempt_ended(job, attempt, closing.status, fault=closing.outcome.value,
                                   error_code=exc.code if exc else None,
                                   cost_micros=closing.cost, now=now)

    def succeed(
        self, job: repo.JobRow, attempt: repo.AttemptRow, res: PollResult, latency_ms: float,
        *, external_id: str | None = None,
    ) -> None:
        now = self.clock()
        closing = closing_of(self.catalogue(), job, attempt, res)  # res succeeded
        result = self.result_of(job, res)
        end = self.ledger.end_job(
            job.id, "succeeded", now, backend=attempt.backend, result=result,
            attempt=closing.row(attempt, external_id))
        if end is None:
            return  # a duplicate step concluded it
        self.attempt_closed(job, attempt, closing, now, latency_ms)
        if end.ended:
            self.observe.job_finished(job, "succeeded", backend=attempt.backend,
                                      charged_micros=self.charged(job, end, attempt.backend),
                                      now=now)
            self.notify_ended(job)
        elif end.concluded:  # it had been cancelled meanwhile: charged what it billed
            self.observe.concluded(job, backend=attempt.backend,
                                   charged_micros=self.charged(job, end, attempt.backend))
        if end.kept_result:
            # the job had ended meanwhile (a cancel, its deadline): charged the work in full,
            # it keeps the output, which the ending's statement wrote (its files: result_of)
            self._kept(job, attempt)

    def result_of(self, job: repo.JobRow, res: PollResult) -> dict[str, Any]:
        """A succeeded attempt's output as a job's result. Megabytes of base64 go to files,
        written here, not into the result and its events (a text job's output is the model's
        words, whatever they look like)."""
        output, inline = ((res.output, []) if job.kind == "text"
                          else files.take_inline_data(job.id, res.output))
        if inline:
            with self.db.connection() as conn:
                files.write(conn, job.id, inline)
        return {"output": output}

    @staticmethod
    def _kept(job: repo.JobRow, attempt: repo.AttemptRow) -> None:
        log.info("an ended job's attempt finished; its output is the job's result",
                 extra={"job_id": str(job.id), "backend": attempt.backend,
                        "attempt": attempt.number})

    def fail(self, job: repo.JobRow, code: str, message: str, *,
             backend: str | None = None,
             closing: tuple[repo.AttemptRow, Closing] | None = None,
             conclude_in_s: float = 0.0) -> JobEnd | None:
        now = self.clock()
        end = self.ledger.end_job(
            job.id, "failed", now, error_code=code, error_message=message,
            attempt=closing[1].row(closing[0]) if closing else None, conclude_in_s=conclude_in_s)
        if end is None:
            return None
        if closing is not None:
            self.attempt_closed(job, closing[0], closing[1], now)
        if end.ended:
            self.observe.job_finished(job, "failed", backend=backend,
                                      charged_micros=self.charged(job, end, backend), now=now,
                                      error_code=code)
            self.notify_ended(job)
        return end

    def notify_ended(self, job: repo.JobRow) -> None:
        if job.cache_key is not None and self.on_end is not None:
            self.on_end(job)

    def end_concluded(self, job: repo.JobRow, attempt: repo.AttemptRow | None,
                      closing: Closing | None, res: PollResult | None = None) -> None:
        """Close the attempt and, once none is open, finish the ended job's hold with
        what its attempts cost (one statement). ``res``: the provider's answer the closing
        was read from; a success's output is kept as the ended job's result by that same
        statement (its files are written first, as ``succeed`` writes them): a crash between
        the two would leave the attempt closed, so no later step would look at the output
        again."""
        now = self.clock()
        result = None
        if (attempt is not None and res is not None and res.status == "succeeded"
                and repo.ended_before_its_attempt(job)):
            result = self.result_of(job, res)
        end = self.ledger.end_job(
            job.id, job.status, now,
            attempt=closing.row(attempt) if attempt is not None and closing else None,
            result=result)
        if end is None:
            return
        if attempt is not None and closing is not None:
            if closing.status == "uncertain" and closing.possible is not None:
                self.observe.uncertain(job, attempt, closing.error.code if closing.error
                                       else "outcome_unknown", closing.possible)
            self.attempt_closed(job, attempt, closing, now)
        if end.concluded:
            backend = attempt.backend if attempt else job.backend
            self.observe.concluded(job, backend=backend,
                                   charged_micros=self.charged(job, end, backend))
        if end.kept_result and attempt is not None:
            self._kept(job, attempt)

    def charged(self, job: repo.JobRow, end: JobEnd, backend: str | None) -> int:
        """What the ending charged: the job's whole cost, a bill above its hold included
        (counted as an overage); logged when the hold was gone and nothing was charged."""
        if end.pending:
            return 0  # charged when its last attempt concludes
        if end.hold_status is not None:
            log.error("hold already %s; job finished without a charge", end.hold_status,
                      extra={"job_id": str(job.id)})
        elif end.overage_micros > 0:
            self.observe.overage(job, backend, end.overage_micros,
                                 charged_micros=end.charged_micros, hold_micros=end.hold_micros)
        return end.charged_micros
