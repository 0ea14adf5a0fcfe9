"""The job spec: CONTRACT body, per-kind input validation with clear messages."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from orchestrator.domain.jobs import JobSpec, Kind, Priority, Strategy, Tier, VideoInput


def test_contract_body_round_trips() -> None:
    body = {"kind": "video", "input": {"prompt": "a cat", "duration_s": 8, "resolution": "720p"},
            "tier": "standard", "strategy": "cheapest", "max_cost_usd": 2.5, "backend": None,
            "deadline_s": 900, "priority": "normal", "webhook_url": None,
            "webhook_events": None, "cache": False, "metadata": {"project": "p1"}}
    spec = JobSpec.model_validate(body)
    assert spec.kind is Kind.VIDEO and spec.tier is Tier.STANDARD
    assert spec.webhook_events == ("job.succeeded", "job.failed", "job.cancelled")
    assert spec.max_cost_micros == 2_500_000 and spec.project == "p1"
    assert isinstance(spec.typed_input(), VideoInput)
    assert JobSpec.model_validate_json(spec.model_dump_json()) == spec


def test_null_means_the_default_for_fields_that_have_one() -> None:
    nulls = {f: None for f in ("tier", "strategy", "deadline_s", "priority", "webhook_events",
                               "metadata", "backend", "webhook_url", "max_cost_usd", "cache")}
    spec = JobSpec.model_validate({"kind": "text", "input": {"prompt": "hi"}, **nulls})
    assert spec == JobSpec(kind=Kind.TEXT, input={"prompt": "hi"})
    with pytest.raises(ValidationError, match="kind"):
        JobSpec.model_validate({"kind": None, "input": {"prompt": "hi"}})


def test_defaults_filled_in() -> None:
    spec = JobSpec(kind=Kind.TEXT, input={"prompt": "hi", "temperature": 0.2})
    assert spec.input == {"prompt": "hi", "max_tokens": 512, "temperature": 0.2}
    assert (spec.tier, spec.strategy, spec.priority) == (
        Tier.STANDARD, Strategy.CHEAPEST, Priority.NORMAL)
    assert spec.deadline_s == 900 and spec.max_cost_micros is None and spec.backend is None
    img = JobSpec(kind=Kind.IMAGE, input={"prompt": "x"})
    assert (img.input["n"], img.input["size"]) == (1, "1024x1024")
    vid = JobSpec(kind=Kind.VIDEO, input={"prompt": "x", "duration_s": 4})
    assert vid.input["duration_s"] == 4 and vid.input["resolution"] == "720p"


@pytest.mark.parametrize(("field", "value"), [
    ("input.duration_s", "4"), ("input.duration_s", True), ("input.n", "2"),
    ("input.n", 2.0), ("input.max_tokens", "10"), ("max_cost_usd", "0.5"),
    ("max_cost_usd", True), ("deadline_s", "60"), ("cache", "yes"), ("cache", 1),
])
def test_values_are_taken_by_their_json_type_not_coerced(field: str, value: object) -> None:
    # coerced, "4" would be priced and held as 4 s, and true as 1 s
    kind = {"n": "image", "max_tokens": "text"}.get(field.split(".")[-1], "video")
    body: dict[str, object] = {"kind": kind, "input": {"prompt": "x"}}
    if kind == "video":
        body["input"] = {"prompt": "x", "duration_s": 4}
    where, _, name = field.rpartition(".")
    (body["input"] if where else body)[name] = value  # type: ignore[index]
    with pytest.raises(ValidationError, match=field.replace(".", r"\.")):
        JobSpec.model_validate(body)
    ok = {"input.duration_s": 4.5, "input.n": 2, "input.max_tokens": 10,
          "max_cost_usd": 1, "deadline_s": 60, "cache": True}[field]
    (body["input"] if where else body)[name] = ok  # type: ignore[index]
    JobSpec.model_validate(body)  # a number may be an integer; the right type passes


def test_tier_order() -> None:
    assert Tier.DRAFT.rank < Tier.STANDARD.rank < Tier.PREMIUM.rank


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"kind": "video", "input": {"prompt": "x"}}, "input.duration_s: Field required"),
        ({"kind": "video", "input": {"prompt": "x", "duration_s": 0}}, "input.duration_s"),
        ({"kind": "video", "input": {"prompt": "x", "duration_s": 601}}, "less than or equal"),
        ({"kind": "video", "input": {"prompt": "x", "duration_s": 5, "resolution": "4k"}},
         "resolution must be one of 480p, 720p, 1080p"),
        ({"kind": "video", "input": {"duration_s": 5}}, "input.prompt"),
        ({"kind": "text", "input": {"prompt": "   "}}, "prompt must not be blank"),
        ({"kind": "text", "input": {"prompt": "x", "max_tokens": 0}}, "input.max_tokens"),
        ({"kind": "image", "input": {"prompt": "x", "size": "big"}}, "size must look like"),
        ({"kind": "image", "input": {"prompt": "x", "n": 11}}, "input.n"),
        ({"kind": "audio", "input": {"prompt": "x"}}, "kind"),
        ({"kind": "text", "input": {"prompt": "x"}, "tier": "gold"}, "tier"),
        ({"kind": "text", "input": {"prompt": "x"}, "max_cost_usd": 0}, "max_cost_usd"),
        ({"kind": "text", "input": {"prompt": "x"}, "backend": "Not A Name"}, "backend"),
        ({"kind": "text", "input": {"prompt": "x"}, "webhook_url": "ftp://x"}, "webhook_url"),
        ({"kind": "text", "input": {"prompt": "x"}, "metadata": {"project": "a b"}},
         "metadata.project"),
        ({"kind": "text", "input": {"prompt": "x"}, "colour": "red"}, "colour"),
    ],
)
def test_invalid_specs_say_why(body: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(body)
    assert words in str(info.value)
