"""A randomized soak of the job chain against providers that behave as real ones do, with
chaos: submissions, cancels, killed workers, a flushed Redis, slow backends, lost answers and
a backend removed from the catalogue, all while the sweeper runs. Afterwards every promise is
checked against the providers' own bills, attempt by attempt:

- every job has ended and no work is owed (``wake_at`` clear);
- no attempt created work twice at a provider (one bill per idempotency key at most), and no
  provider holds work no attempt sent;
- every attempt whose outcome is known cost exactly what its provider billed; an uncertain
  one's possible charge covers its bill;
- the ledger's committed spend is the sum of the known costs (the providers' bills less what
  only uncertain attempts may owe), nothing is still held, and the audit is clean.

``ORCH_SOAK_S`` (default 30) and ``ORCH_SOAK_SEED`` (default 1) set its length and its draw;
a failure prints the seed to run it again.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from sqlalchemy import Engine, text

from orchestrator.domain.jobs import JobSpec
from orchestrator.errors import BudgetExceeded, NoEligibleBackend
from orchestrator.ledger.audit import audit
from orchestrator.ledger.budgets import set_budget
from orchestrator.service.sweeper import sweep
from orchestrator.simulator import RunningSimulator
from orchestrator.store import jobs as repo

from .e2e_support import Rig, rig_for, simulator_fixture

TENANT = "acme"
SOAK_S = float(os.environ.get("ORCH_SOAK_S", "30"))
SEED = int(os.environ.get("ORCH_SOAK_SEED", "1"))
PACE_S = 0.2
_TXT = {"model": "per_token", "usd_per_1k_input": 0.5, "usd_per_1k_output": 1.5}
CATALOGUE: dict[str, Any] = {
    "defaults": {"timeouts": {"connect_s": 1.0, "read_s": 3.0, "start_to_close_s": 30}},
    "backends": [
        {"name": "vid-n", "protocol": "predictions", "kinds": ["video"], "tier": "draft",
         "base_url": "${ORCH_SIMULATOR_URL}/vid-n", "idempotency": "none",
         "price": {"model": "per_second", "usd_per_second": 0.03}},
        {"name": "vid-c", "protocol": "predictions", "kinds": ["video"], "tier": "draft",
         "base_url": "${ORCH_SIMULATOR_URL}/vid-c", "idempotency": "completed",
         "price": {"model": "per_second", "usd_per_second": 0.05}},
        {"name": "vid-x", "protocol": "predictions", "kinds": ["video"], "tier": "draft",
         "base_url": "${ORCH_SIMULATOR_URL}/vid-x", "idempotency": "inflight",
         "price": {"model": "per_second", "usd_per_second": 0.04}},
        {"name": "txt-i", "protocol": "openai", "kinds": ["text"], "tier": "standard",
         "base_url": "${ORCH_SIMULATOR_URL}/txt-i", "idempotency": "inflight", "price": _TXT},
        {"name": "txt-c", "protocol": "openai", "kinds": ["text"], "tier": "standard",
         "base_url": "${ORCH_SIMULATOR_URL}/txt-c", "idempotency": "completed",
         "price": {**_TXT, "usd_per_1k_output": 2.0}},
        {"name": "img-i", "protocol": "openai", "kinds": ["image"], "tier": "standard",
         "base_url": "${ORCH_SIMULATOR_URL}/img-i", "idempotency": "inflight",
         "price": {"model": "per_image", "usd_per_image": {"1024x1024": 0.04}}},
    ],
}
BACKENDS = [b["name"] for b in CATALOGUE["backends"]]
PREDICTIONS = [b["name"] for b in CATALOGUE["backends"] if b["protocol"] == "predictions"]
REMOVED = "vid-x"


sim = simulator_fixture(CATALOGUE)


@pytest.fixture()
def rig(db: Engine, database_url: str, redis_url: str, sim: RunningSimulator,
        tmp_path: Path) -> Iterator[Rig]:
    with rig_for(CATALOGUE, db, database_url, redis_url, sim, tmp_path,
                 start_grace_s=2.0) as r:
        yield r


class Soak:
    def __init__(self, rig: Rig, rng: random.Random) -> None:
        self.rig = rig
        self.rng = rng
        self.jobs: list[uuid.UUID] = []
        self.removed = False
        self.refused = 0
        self.events: dict[str, int] = {}

    def act(self) -> None:
        acts = [(self.submit, 6.0), (self.cancel, 1.0), (self.kill, 0.25), (self.flush, 0.15),
                (self.slow, 0.6), (self.drop, 0.6)]
        action = self.rng.choices([a for a, _ in acts], [w for _, w in acts])[0]
        self.events[action.__name__] = self.events.get(action.__name__, 0) + 1
        action()

    def submit(self) -> None:
        kind = self.rng.choice(["video", "video", "text", "image"])
        inp: dict[str, Any] = {"prompt": f"soak {self.rng.random():.6f}"}
        if kind == "video":
            inp |= {"duration_s": self.rng.randint(2, 8)}
        elif kind == "text":
            inp |= {"max_tokens": self.rng.randint(16, 256)}
        spec: dict[str, Any] = {"kind": kind, "input": inp,
                                "tier": "draft" if kind == "video" else "standard"}
        if self.rng.random() < 0.15:
            spec["deadline_s"] = self.rng.randint(2, 6)
        try:
            job, _ = self.rig.container.submitter.submit(TENANT, JobSpec.model_validate(spec))
        except (BudgetExceeded, NoEligibleBackend):
            self.refused += 1
            return
        self.jobs.append(job.id)

    def cancel(self) -> None:
        if self.jobs:
            self.rig.container.runner.cancel(self.rng.choice(self.jobs[-20:]), TENANT)

    def kill(self) -> None:
        self.rig.kill_workers()
        self.rig.start_worker()

    def flush(self) -> None:
        redis.Redis.from_url(self.rig.redis_url).flushdb()

    def slow(self) -> None:
        self.rig.control(self.rng.choice(BACKENDS), latency_ms=self.rng.choice([0, 0, 800, 4000]))

    def drop(self) -> None:
        self.rig.control(self.rng.choice(BACKENDS), drop_answers=1)

    def remove_backend(self) -> None:
        """The operator takes a backend out of the catalogue and restarts the workers."""
        rest = {**CATALOGUE, "backends": [b for b in CATALOGUE["backends"]
                                          if b["name"] != REMOVED]}
        Path(self.rig.env["ORCH_BACKENDS_FILE"]).write_text(yaml.safe_dump(rest))
        self.removed = True
        self.kill()

    def sweep(self) -> None:
        c = self.rig.container
        sweep(c.engine, c.ledger, c.enqueue, grace_s=3)


def test_soak_every_paid_call_ends_in_the_providers_bill(rig: Rig) -> None:
    rng = random.Random(SEED)
    with rig.engine.begin() as conn:
        set_budget(conn, scope=f"tenant:{TENANT}", period="month", limit_micros=10**9,
                   now=datetime.now(UTC))
    for name in PREDICTIONS:
        rig.control(name, duration_ms=rng.randint(300, 2500), cancel_bill_fraction=0.5)
    for b in CATALOGUE["backends"]:  # each provider keeps the guarantee its entry declares
        rig.control(b["name"], latency_ms=rng.choice([0, 200]), idempotency=b["idempotency"])
    soak = Soak(rig, rng)
    rig.start_worker()
    rig.wait_worker_ready()

    started = datetime.now(UTC)
    while (elapsed := (datetime.now(UTC) - started).total_seconds()) < SOAK_S:
        soak.act()
        if not soak.removed and elapsed > SOAK_S / 2:
            soak.remove_backend()
        soak.sweep()
        time.sleep(PACE_S)  # the chaos's own pace (a few events a second), not a race fix

    # the chaos stops; what was started must end on its own (with the sweeper's help)
    for name in BACKENDS:
        rig.control(name, latency_ms=0, drop_answers=0)
    if not any(p.poll() is None for p in rig.workers):
        rig.start_worker()

    def settled() -> bool:
        soak.sweep()
        with rig.engine.connect() as conn:
            owed = conn.execute(text(
                "SELECT count(*) FROM jobs WHERE wake_at IS NOT NULL "
                "OR status NOT IN ('succeeded', 'failed', 'cancelled')")).scalar_one()
        return int(owed) == 0

    rig.wait_for(f"every job to end (seed {SEED})", settled, timeout=180)
    for name in PREDICTIONS:  # work left running at a provider ends (and is billed)
        rig.wait_for(f"{name}'s predictions to end",
                     lambda n=name: rig.http.get(  # type: ignore[misc]
                         f"{rig.sim_url}/_control/{n}").json()["in_flight"] == 0, 30)

    check_the_promises(rig, soak)


def check_the_promises(rig: Rig, soak: Soak) -> None:
    assert len(soak.jobs) > 20, "the soak submitted too little to mean anything"
    bills: dict[str, list[int]] = {}
    created = 0
    for name in BACKENDS:
        state = rig.http.get(f"{rig.sim_url}/_control/{name}").json()
        created += state["counters"]["created"]
        for bill in state["bills"]:
            bills.setdefault(f"{name}/{bill['reference']}", []).append(bill["cost_micros"])
    twice = {ref: b for ref, b in bills.items() if len(b) > 1}
    assert not twice, f"work created twice under one key (seed {SEED}): {twice}"

    with rig.engine.connect() as conn:
        attempts = [repo.AttemptRow(*r) for r in conn.execute(text(
            f"SELECT {', '.join(repo.AttemptRow.__slots__)} FROM attempts"))]
        jobs = {r.id: r for r in conn.execute(text("SELECT id, cost_micros FROM jobs"))}
        committed, held = conn.execute(text(
            "SELECT COALESCE(SUM(committed_micros), 0), COALESCE(SUM(held_micros), 0) "
            "FROM budget_periods")).one()
        assert audit(conn) == []
    assert created <= len(attempts)
    sent = {f"{a.backend}/{a.job_id}:{a.number}": a for a in attempts}
    strays = set(bills) - set(sent)
    assert not strays, f"providers hold work no attempt sent (seed {SEED}): {strays}"

    known = uncertain_billed = 0
    for ref, a in sent.items():
        bill = sum(bills.get(ref, []))
        assert a.outcome is not None, f"attempt {ref} still open (seed {SEED})"
        if a.outcome == "uncertain":
            assert a.possible_cost_micros is not None and bill <= a.possible_cost_micros, ref
            uncertain_billed += bill
        else:
            assert (a.cost_micros or 0) == bill, (
                f"attempt {ref} ({a.outcome}) cost {a.cost_micros}, billed {bill} "
                f"(seed {SEED})")
            known += bill
    for job_id, job in jobs.items():
        costs = [a.cost_micros or 0 for a in attempts if a.job_id == job_id]
        assert (job.cost_micros or 0) == sum(costs), job_id
    total_billed = sum(sum(b) for b in bills.values())
    outcomes: dict[str | None, int] = {}
    for a in attempts:
        outcomes[a.outcome] = outcomes.get(a.outcome, 0) + 1
    print(f"soak seed={SEED} jobs={len(jobs)} refused={soak.refused} attempts={len(attempts)} "
          f"events={soak.events} outcomes={outcomes} created={created} billed={total_billed} "
          f"uncertain_billed={uncertain_billed}")
    assert int(held) == 0
    assert int(committed) == known == total_billed - uncertain_billed
