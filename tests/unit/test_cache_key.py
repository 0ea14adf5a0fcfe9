"""The result cache's key (pure): what makes two jobs the same request, and what does not."""

from __future__ import annotations

from typing import Any

from orchestrator.domain.cache import cache_enabled, cache_key
from orchestrator.domain.jobs import JobSpec


def spec(**kw: Any) -> JobSpec:
    body: dict[str, Any] = {"kind": "video", "tier": "draft",
                            "input": {"prompt": "fog over the bay", "duration_s": 8}}
    inp = kw.pop("input", {})
    body["input"] = {**body["input"], **inp}
    return JobSpec.model_validate({**body, **kw})


def test_equal_after_normalisation_and_blind_to_what_does_not_change_the_result() -> None:
    base = cache_key("acme", spec())
    assert base == cache_key("acme", spec(input={"duration_s": 8.0, "resolution": "720p"}))
    assert base == cache_key("acme", spec(strategy="balanced", max_cost_usd=5, priority="high",
                                          deadline_s=60, metadata={"project": "p"},
                                          cache=True))


def test_differs_by_tenant_input_tier_and_pin() -> None:
    base = cache_key("acme", spec())
    others = {
        cache_key("globex", spec()),
        cache_key("acme", spec(input={"prompt": "fog over the bay!"})),
        cache_key("acme", spec(input={"resolution": "480p"})),
        cache_key("acme", spec(input={"seed": 7})),
        cache_key("acme", spec(tier="standard")),
        cache_key("acme", spec(backend="vid-draft")),
    }
    assert base not in others and len(others) == 6


def test_the_key_is_a_hash_not_the_prompt() -> None:
    key = cache_key("acme", spec())
    assert len(key) == 64 and int(key, 16) >= 0
    assert "fog" not in key


def test_per_request_flag_over_the_tenant_default() -> None:
    on = frozenset({"acme"})
    assert cache_enabled(spec(), "acme", on)
    assert not cache_enabled(spec(cache=False), "acme", on)
    assert not cache_enabled(spec(), "globex", on)
    assert cache_enabled(spec(cache=True), "globex", on)
    assert cache_enabled(spec(), "anyone", frozenset({"*"}))


def test_a_declared_number_agrees_in_any_json_form() -> None:
    """A backend-declared ``number`` (temperature, guidance) of 1 and 1.0 (or 1e0) is one
    value, sent to the provider as one: the same request, the same key."""
    base = cache_key("acme", spec(input={"temperature": 1, "guidance": 7}))
    for same in ({"temperature": 1.0, "guidance": 7.0}, {"temperature": 1e0, "guidance": 7}):
        assert cache_key("acme", spec(input=same)) == base
    # yet other values, and other JSON types, stay apart
    assert cache_key("acme", spec(input={"temperature": 1.5, "guidance": 7})) != base
    assert cache_key("acme", spec(input={"temperature": True, "guidance": 7})) != base
    assert cache_key("acme", spec(input={"temperature": "1", "guidance": 7})) != base


def test_text_is_taken_as_written() -> None:
    """Composed and decomposed unicode, and whitespace, are other prompts to a provider:
    never folded into one key."""
    composed, decomposed = "caf\u00e9 at dawn", "cafe\u0301 at dawn"
    keys = {cache_key("acme", spec(input={"prompt": p}))
            for p in (composed, decomposed, composed + " ", " " + composed,
                      "caf\u00e9  at dawn")}
    assert len(keys) == 5
