"""What a job the result cache could not serve is charged when it runs itself and the provider
answers without a bill (a review's money finding): a hit admitted on a hold (and estimate) of
0 whose result the retention sweeper dropped, and a follower whose leader failed or was
cancelled. The charge is the catalogue's price of the work, the worst case a fresh job of the
same request is charged, never 0, and calibration learns nothing from a $0 bill. Real Celery
workers, the simulator over HTTP, real PostgreSQL and Redis."""

from __future__ import annotations

from sqlalchemy import text

from orchestrator.domain.calibration import Sample
from orchestrator.domain.jobs import JobSpec
from orchestrator.domain.pricing import estimate_micros
from orchestrator.service.calibration import read_samples

from .e2e_support import Rig
from .test_cache_e2e import TENANT, committed, crig, entries, submit, video  # noqa: F401
from .test_cache_review_e2e import serve_after_expiry


def worst_on(r: Rig, backend: str, spec: JobSpec) -> int:
    """What ``backend``'s work for ``spec`` is worth by the catalogue's price."""
    return estimate_micros(r.container.catalogue().get(backend), spec)


def fresh_estimate(r: Rig, spec: JobSpec) -> int:
    """The estimate (and hold) a fresh submission of ``spec`` is admitted with."""
    return r.container.submitter.quote(spec).worst_case_micros


def test_a_hit_that_runs_itself_unbilled_is_charged_the_worst_case_not_zero(
        crig: Rig) -> None:  # noqa: F811
    spec = video()
    price = worst_on(crig, "vid-cheap", spec)
    assert price == 360_000  # 8 s x $0.03 x 1.5
    crig.control("vid-cheap", duration_ms=100)
    crig.start_worker()
    first = submit(crig, spec)
    crig.wait_final([first])
    # the provider now answers without usage or cost (billed all the same)
    crig.control("vid-cheap", duration_ms=100, report_usage=False)
    serve_after_expiry(crig)
    hit, created = crig.container.submitter.submit(TENANT, spec)
    assert created and hit.estimated_cost_micros == 0  # admitted as a hit
    (job,) = crig.wait_final([hit.id], timeout=30)
    assert job.status == "succeeded" and job.result is not None and job.cached_from is None
    assert crig.counters("vid-cheap")["submissions"] == 2  # a real, paid provider call
    # charged the work's worst case, and it runs as a fresh job would, on that job's estimate
    (attempt,) = crig.attempts(hit.id)
    assert attempt.cost_micros == attempt.possible_cost_micros == price
    assert job.cost_micros == price
    assert job.estimated_cost_micros == fresh_estimate(crig, spec) == 840_000
    held = entries(crig, hit.id)
    assert held[:2] == [("hold", 0, 0), ("hold", 840_000, 0)]
    assert held[2] == ("settle", -840_000, price) and len(held) == 3
    assert committed(crig) == 2 * price
    # calibration: both runs are samples of what vid-cheap's work costs; none a $0 bill
    samples = read_samples(crig.engine, ["vid-cheap"], 50)
    assert samples == [Sample("vid-cheap", "per_second", price, price)] * 2


def text_spec() -> JobSpec:
    return JobSpec.model_validate({
        "kind": "text", "input": {"prompt": "name three lighthouses", "max_tokens": 200}})


def test_a_text_hit_that_runs_itself_unbilled_on_a_synchronous_backend_is_charged(
        crig: Rig) -> None:  # noqa: F811
    """A synchronous provider's answer is priced in the very step that unlinked the hit:
    the charge must not read the job as it was before its estimate was raised."""
    spec = text_spec()
    price = worst_on(crig, "txt-one", spec)
    assert price > 0
    crig.start_worker()
    first = submit(crig, spec)
    (done,) = crig.wait_final([first])
    assert done.status == "succeeded" and done.cost_micros
    crig.control("txt-one", report_usage=False)
    serve_after_expiry(crig)
    hit, created = crig.container.submitter.submit(TENANT, spec)
    assert created and hit.estimated_cost_micros == 0
    (job,) = crig.wait_final([hit.id], timeout=30)
    assert job.status == "succeeded" and job.result is not None and job.cached_from is None
    assert crig.counters("txt-one")["submissions"] == 2
    (attempt,) = crig.attempts(hit.id)
    assert attempt.cost_micros == attempt.possible_cost_micros == price
    assert job.cost_micros == price
    assert job.estimated_cost_micros == fresh_estimate(crig, spec)
    assert committed(crig) == done.cost_micros + price
    samples = read_samples(crig.engine, ["txt-one"], 50)
    assert len(samples) == 2 and all(s.actual_micros > 0 for s in samples)


def test_a_follower_that_runs_itself_unbilled_after_its_leader_is_cancelled_is_charged(
        crig: Rig) -> None:  # noqa: F811
    """The neighbouring path: a follower was admitted on its own worst case, so when it must
    run itself (its leader cancelled) an unbilled answer is charged the work's worst case."""
    spec = video()
    price = worst_on(crig, "vid-cheap", spec)
    crig.control("vid-cheap", duration_ms=3000)
    crig.start_worker()
    leader = submit(crig, spec)
    follower = submit(crig, spec)
    with crig.engine.connect() as conn:
        linked = conn.execute(text("SELECT cache_leader FROM jobs WHERE id = :j"),
                              {"j": follower}).scalar_one()
    assert linked == leader
    crig.wait_for("the leader to reach the provider",
                  lambda: crig.counters("vid-cheap")["submissions"] == 1)
    cancelled = crig.container.runner.cancel(leader, TENANT)
    assert cancelled is not None and cancelled.status == "cancelled"
    crig.control("vid-cheap", duration_ms=200, report_usage=False)
    (job,) = crig.wait_final([follower], timeout=60)
    assert job.status == "succeeded" and job.cached_from is None and job.cache_leader is None
    assert job.estimated_cost_micros == fresh_estimate(crig, spec) == 840_000
    (attempt,) = crig.attempts(follower)
    assert attempt.cost_micros == attempt.possible_cost_micros == price
    assert job.cost_micros == price
    assert entries(crig, follower) == [("hold", 840_000, 0), ("settle", -840_000, price)]
    samples = read_samples(crig.engine, ["vid-cheap"], 50)
    assert samples == [Sample("vid-cheap", "per_second", price, price)]
