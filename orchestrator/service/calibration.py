"""The calibration factors routing ranks on, read from the settled jobs in PostgreSQL.

A backend's samples are its newest succeeded jobs that ran there and paid for it (a cached
job's $0 is not a bill), finished within ``max_age_s``: what its succeeded attempt there was
billed (not the job's whole cost, which includes what earlier attempts elsewhere billed
before a failover) against the worst-case estimate its route made for that backend, with
that estimate's price model (both in the job's ``route``). One query reads the window of
every backend in the catalogue (an index scan per backend, ``ix_jobs_settled_by_backend``);
``domain.calibration.learn`` turns them into factors. A process keeps the factors it read for
``refresh_s``: routing runs on every quote and submission, the factors move only as jobs
settle. A failed read keeps the last factors (or none): calibration only ever changes the
order of candidates, never a hold.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.domain.calibration import Factor, Sample, learn
from orchestrator.domain.catalogue import Catalogue

log = logging.getLogger(__name__)

#: A week: older bills say nothing of a provider's price today. Without an age limit a
#: backend whose factor made it dear would keep that factor for good: ``cheapest`` stops
#: sending it jobs, so no newer bill would ever replace the old ones.
DEFAULT_MAX_AGE_S = 7 * 86_400.0

_WINDOW = text(
    """
    SELECT b.name, x.price_model, x.estimate, x.actual
    FROM unnest(CAST(:names AS text[])) AS b(name)
    CROSS JOIN LATERAL (
        SELECT COALESCE(
                   (SELECT a.cost_micros FROM attempts a
                    WHERE a.job_id = j.id AND a.backend = j.backend
                      AND a.outcome = 'succeeded' AND a.cost_micros IS NOT NULL
                    LIMIT 1), j.cost_micros) AS actual,
               CAST(c.cand ->> 'estimated_cost_micros' AS bigint) AS estimate,
               c.cand ->> 'price_model' AS price_model
        FROM jobs j
        CROSS JOIN LATERAL (
            SELECT cand FROM jsonb_array_elements(
                CASE WHEN jsonb_typeof(j.route -> 'candidates') = 'array'
                     THEN j.route -> 'candidates' ELSE '[]'::jsonb END) AS cand
            WHERE cand ->> 'backend' = j.backend
              AND cand ->> 'estimated_cost_micros' ~ '^[0-9]+$'
            LIMIT 1) AS c
        WHERE j.backend = b.name AND j.status = 'succeeded' AND j.cached_from IS NULL
          AND j.cost_micros IS NOT NULL
          AND j.finished_at >= now() - make_interval(secs => CAST(:max_age_s AS double precision))
        ORDER BY j.finished_at DESC
        LIMIT :window
    ) AS x
    """
)


def read_samples(engine: Engine, names: list[str], window: int,
                 max_age_s: float = DEFAULT_MAX_AGE_S) -> list[Sample]:
    """The newest ``window`` settled jobs of each backend in ``names`` that finished within
    ``max_age_s`` (by the database's clock), newest first."""
    with engine.connect() as conn:
        rows = conn.execute(_WINDOW, {"names": names, "window": window,
                                      "max_age_s": max_age_s}).all()
    return [Sample(r.name, r.price_model or "", int(r.estimate), int(r.actual)) for r in rows]


class Calibrator:
    """Factors per backend for routing, re-read at most every ``refresh_s``."""

    def __init__(self, engine: Engine, catalogue: Callable[[], Catalogue], *, window: int = 50,
                 min_samples: int = 5, refresh_s: float = 10.0,
                 max_age_s: float = DEFAULT_MAX_AGE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.catalogue = catalogue
        self.window = window
        self.min_samples = min_samples
        self.refresh_s = refresh_s
        self.max_age_s = max_age_s
        self.clock = clock
        self._factors: dict[str, Factor] = {}
        self._read_at: float | None = None
        self._lock = threading.Lock()

    def factors(self) -> Mapping[str, Factor]:
        """The current factors (read again once ``refresh_s`` has passed)."""
        now = self.clock()
        read_at = self._read_at
        if read_at is not None and now - read_at < self.refresh_s:
            return self._factors
        with self._lock:  # one reader per process; the others use the last factors
            if self._read_at is not read_at:
                return self._factors
            self._read_at = now
            try:
                self._factors = self.read()
            except SQLAlchemyError as exc:
                log.warning("calibration not read; keeping the last factors",
                            extra={"error": type(exc).__name__})
        return self._factors

    def read(self) -> dict[str, Factor]:
        cat = self.catalogue()
        models = {b.name: b.price.model for b in cat.backends}
        samples = read_samples(self.engine, list(models), self.window, self.max_age_s)
        return learn(samples, models, window=self.window, min_samples=self.min_samples)
