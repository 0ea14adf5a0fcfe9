"""Routing leaves out a backend that does not accept the job's input, with the reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orchestrator.domain.catalogue import load_catalogue, parse_catalogue
from orchestrator.domain.jobs import JobSpec
from orchestrator.domain.routing import ExclusionCode, RoutePlan, plan_route

NOW = 1_000_000.0
SHIPPED = load_catalogue(Path(__file__).resolve().parents[2] / "config" / "backends.yaml", env={})


def video(tier: str = "standard", backend: str | None = None, **inp: Any) -> JobSpec:
    return JobSpec.model_validate({
        "kind": "video", "tier": tier, "backend": backend,
        "input": {"prompt": "top secret prompt", "duration_s": 8, **inp}})


def reasons(plan: RoutePlan) -> dict[str, tuple[str, str]]:
    return {e.backend: (e.code.value, e.reason) for e in plan.excluded}


def test_a_field_only_some_backends_declare_leaves_the_others_out() -> None:
    plan = plan_route(video(seed=42), SHIPPED, {}, now=NOW)
    assert plan.backends == ("vid-premium",)
    got = reasons(plan)
    assert got["vid-standard"] == ("input_not_accepted", "does not accept input.seed")
    assert got["vid-standard-b"] == ("input_not_accepted", "does not accept input.seed")
    assert got["vid-draft"][0] == "tier_too_low"  # the earlier filter speaks first
    assert got["img-fast"][0] == "wrong_kind"


def test_a_declared_range_that_refuses_the_value_says_so() -> None:
    plan = plan_route(video("draft", resolution="1080p"), SHIPPED, {}, now=NOW)
    assert "vid-draft" not in plan.backends and plan.backends[0] == "vid-standard"
    assert reasons(plan)["vid-draft"] == ("input_refused",
                                          "input.resolution 1080p not in [480p, 720p]")
    plan = plan_route(video("draft", duration_s=90), SHIPPED, {}, now=NOW)
    assert reasons(plan)["vid-draft"][1] == "input.duration_s 90 not in [1, 60]"
    plan = plan_route(video("premium", seed="42"), SHIPPED, {}, now=NOW)
    assert reasons(plan)["vid-premium"][1] == (
        'input.seed is "42", expected an integer in [0, 4294967295]')
    plan = plan_route(video("premium", seed=-1), SHIPPED, {}, now=NOW)
    assert reasons(plan)["vid-premium"][1] == "input.seed -1 not in [0, 4294967295]"


def test_a_long_prompt_is_refused_without_being_shown() -> None:
    plan = plan_route(video(prompt="secret " * 400), SHIPPED, {}, now=NOW)
    assert plan.backends == ()
    assert reasons(plan)["vid-standard"] == ("input_refused",
                                             "input.prompt is longer than 2000 characters")
    assert "secret" not in json.dumps(plan.to_quote())


def test_a_required_field_the_job_leaves_out() -> None:
    cat = parse_catalogue({"backends": [
        {"name": f"vid-{x}", "protocol": "predictions", "base_url": "http://127.0.0.1:1",
         "kinds": ["video"], "tier": "draft",
         "price": {"model": "per_second", "usd_per_second": 0.1},
         "params": {"seed": {"type": "integer", "required": x == "a"}}} for x in "ab"]})
    plan = plan_route(video("draft"), cat, {}, now=NOW)
    assert plan.backends == ("vid-b",)
    assert reasons(plan)["vid-a"] == ("input_missing", "requires input.seed")
    assert plan_route(video("draft", seed=1), cat, {}, now=NOW).backends == ("vid-a", "vid-b")


def test_a_pinned_backend_is_held_to_its_params_too() -> None:
    plan = plan_route(video(backend="vid-standard", seed=1), SHIPPED, {}, now=NOW)
    assert plan.backends == () and reasons(plan)["vid-standard"][0] == "input_not_accepted"


def test_the_reasons_survive_the_stored_quote() -> None:
    plan = plan_route(video("draft", resolution="1080p", seed=3), SHIPPED, {}, now=NOW)
    back = RoutePlan.from_quote(json.loads(json.dumps(plan.to_quote())))
    assert [(e.backend, e.code, e.reason) for e in back.excluded] == [
        (e.backend, e.code, e.reason) for e in plan.excluded]
    assert {e.code for e in back.excluded} >= {ExclusionCode.INPUT_REFUSED,
                                               ExclusionCode.INPUT_NOT_ACCEPTED}
