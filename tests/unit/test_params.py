"""Declared input parameters: the catalogue's ``params`` (valid, defaults per kind, each bad
declaration named by file, backend and field)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.domain.catalogue import load_catalogue, parse_catalogue
from orchestrator.domain.jobs import Kind
from orchestrator.domain.params import ParamType
from orchestrator.errors import ConfigurationError

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "backends.yaml"


def catalogue_doc() -> dict[str, Any]:
    return {"backends": [
        {"name": "vid-a", "protocol": "predictions", "base_url": "http://127.0.0.1:1/a",
         "kinds": ["video"], "tier": "draft",
         "price": {"model": "per_second", "usd_per_second": 0.05, "max_duration_s": 120,
                   "resolution_multipliers": {"480p": 1, "720p": 1.5, "1080p": 2}},
         "params": {
             "prompt": {"type": "string", "required": True, "max_length": 500},
             "resolution": {"type": "enum", "choices": ["480p", "720p"], "priced": True},
             "seed": {"type": "integer", "min": 0, "max": 99},
             "loop": {"type": "boolean", "default": False},
             "guidance": {"type": "number", "min": 0.5, "max": 20},
         }},
        {"name": "vid-b", "protocol": "predictions", "base_url": "http://127.0.0.1:1/b",
         "kinds": ["video"], "tier": "draft",
         "price": {"model": "per_second", "usd_per_second": 0.07}},
        {"name": "txt-a", "protocol": "openai", "base_url": "http://127.0.0.1:1/t",
         "kinds": ["text"], "tier": "standard",
         "price": {"model": "per_token", "usd_per_1k_input": 0.001, "usd_per_1k_output": 0.002},
         "params": {"temperature": {"type": "number", "min": 0, "max": 2},
                    "style": {"type": "enum", "choices": ["terse", "chatty"],
                              "required": True}}},
        {"name": "any-a", "protocol": "predictions", "base_url": "http://127.0.0.1:1/x",
         "kinds": ["video", "image", "text"], "tier": "standard",
         "price": {"model": "per_request", "usd_per_request": 0.5},
         "params": {"n": {"type": "integer", "min": 1, "max": 2}}},
    ]}


CAT = parse_catalogue(catalogue_doc())


def test_declared_params_merge_with_the_kinds_standard_ones() -> None:
    a = CAT.get("vid-a").accepts[Kind.VIDEO]
    assert list(a) == ["prompt", "duration_s", "resolution", "seed", "loop", "guidance"]
    assert a["prompt"].max_length == 500 and a["prompt"].required and not a["prompt"].priced
    # duration_s not declared: the job spec's range, narrowed by max_duration_s; priced
    assert (a["duration_s"].min, a["duration_s"].max, a["duration_s"].priced) == (1, 120, True)
    assert a["resolution"].choices == ("480p", "720p") and a["resolution"].default == "720p"
    assert a["seed"].expected == "an integer in [0, 99]" and a["seed"].priced is False
    assert a["loop"].default is False and a["guidance"].expected == "a number in [0.5, 20]"
    txt = CAT.get("txt-a").accepts[Kind.TEXT]
    assert {n for n, p in txt.items() if p.priced} == {"prompt", "max_tokens"}


def test_defaults_per_kind_follow_the_price() -> None:
    b = CAT.get("vid-b").accepts[Kind.VIDEO]
    assert list(b) == ["prompt", "duration_s", "resolution"]
    assert b["resolution"].choices == ("480p", "720p", "1080p")  # the default multipliers
    assert (b["duration_s"].min, b["duration_s"].max) == (1, 600)
    # per_request prices anything: nothing is priced; a standard param belongs to its kind
    anyb = CAT.get("any-a").accepts
    assert list(anyb[Kind.IMAGE]) == ["prompt", "n", "size"]
    assert anyb[Kind.IMAGE]["n"].max == 2 and anyb[Kind.IMAGE]["size"].type is ParamType.STRING
    assert "n" not in anyb[Kind.VIDEO] and "n" not in anyb[Kind.TEXT]
    assert not any(p.priced for t in anyb.values() for p in t.values())
    img = parse_catalogue({"backends": [
        {"name": "img", "protocol": "openai", "base_url": "http://x", "kinds": ["image"],
         "tier": "draft", "price": {"model": "per_image", "usd_per_image": {"512x512": 0.01}}},
    ]}).get("img").accepts[Kind.IMAGE]
    assert img["size"].type is ParamType.ENUM and img["size"].choices == ("512x512",)
    assert img["n"].expected == "an integer in [1, 10]" and img["n"].default == 1


def test_shipped_catalogue_declares_params_consistent_with_prices() -> None:
    cat = load_catalogue(SHIPPED, env={})
    for b in cat:
        assert b.params, b.name  # declared explicitly, not left to the defaults
    assert "seed" in cat.get("vid-premium").accepts[Kind.VIDEO]
    assert "seed" not in cat.get("vid-standard").accepts[Kind.VIDEO]
    assert cat.get("vid-draft").accepts[Kind.VIDEO]["resolution"].choices == ("480p", "720p")
    assert "1080p" in cat.get("vid-premium").accepts[Kind.VIDEO]["resolution"].choices or ()
    for name in ("txt-small", "txt-large"):
        assert cat.get(name).accepts[Kind.TEXT]["temperature"].expected == "a number in [0, 2]"


def _error(tmp_path: Path, backend: int, params: Any) -> ConfigurationError:
    doc = catalogue_doc()
    doc["backends"][backend]["params"] = params
    p = tmp_path / "backends.yaml"
    p.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigurationError) as info:
        load_catalogue(p, env={})
    err = info.value
    assert "\n" not in err.message and err.message.startswith(f"{p}: backend ")
    return err


@pytest.mark.parametrize(
    ("backend", "params", "field", "words"),
    [
        (0, {"seed": {"type": "uuid"}}, "params.seed.type", "'string', 'integer'"),
        (0, {"seed": {"type": "integer", "colour": 1}}, "params.seed.colour", "not permitted"),
        (0, {"seed": {"type": "integer", "min": 5, "max": 1}}, "params.seed.max",
         "1 is below min 5"),
        (0, {"seed": {"type": "integer", "max": 2.5}}, "params.seed.max", "must be an integer"),
        (0, {"seed": {"type": "number", "max": float("inf")}}, "params.seed.max", "finite"),
        (0, {"seed": {"type": "string", "min": 1}}, "params.seed.min", "only integer and number"),
        (0, {"seed": {"type": "integer", "max_length": 3}}, "params.seed.max_length",
         "only string"),
        (0, {"mood": {"type": "enum"}}, "params.mood.choices", "lists its choices"),
        (0, {"mood": {"type": "string", "choices": ["a"]}}, "params.mood.choices", "only enum"),
        (0, {"mood": {"type": "enum", "choices": ["a", "a"]}}, "params.mood.choices", "repeat"),
        (0, {"mood": {"type": "enum", "choices": [1, 2]}}, "params.mood.choices.0", "string"),
        (0, {"seed": {"type": "integer", "default": "7"}}, "params.seed.default",
         "'7' is not an integer"),
        (0, {"seed": {"type": "integer", "max": 9, "default": 10}}, "params.seed.default",
         "10 is not an integer <= 9"),
        (0, {"seed": {"type": "integer", "required": True, "default": 1}},
         "params.seed.default", "a required parameter has no default"),
        (0, {"bad-name": {"type": "integer"}}, "params.bad-name", "a parameter name"),
        (0, {"seed": {"type": "integer", "priced": True}}, "params.seed.priced",
         "the per_second price does not depend on seed"),
        (0, {"duration_s": {"type": "number", "priced": False}}, "params.duration_s.priced",
         "the per_second price depends on duration_s"),
        (0, {"duration_s": {"type": "integer"}}, "params.duration_s.type", "duration_s is number"),
        (0, {"duration_s": {"type": "number", "max": 121}}, "params.duration_s.max",
         "121 is above 120"),
        (0, {"duration_s": {"type": "number", "required": False}}, "params.duration_s.required",
         "the job spec makes duration_s required"),
        (0, {"resolution": {"type": "enum", "choices": ["720p", "4k"]}},
         "params.resolution.choices", "4k is not one of 480p, 720p, 1080p"),
        (0, {"resolution": {"type": "enum", "choices": ["480p", "720p"], "default": "480p"}},
         "params.resolution.default", "the job spec gives resolution the default 720p"),
        (0, {"prompt": {"type": "string", "max_length": 200_000}}, "params.prompt.max_length",
         "above 100000"),
        # YAML's true is an int to pydantic: it loaded as a max_length of 1
        (0, {"prompt": {"type": "string", "max_length": True}}, "params.prompt.max_length",
         "valid integer"),
        (0, {"n": {"type": "integer"}}, "params.n", "this backend runs no image jobs"),
        (2, {"stream": {"type": "boolean"}}, "params.stream", "the openai adapter sets stream"),
        (2, {"prompt": {"type": "string", "priced": False}}, "params.prompt.priced",
         "the per_token price depends on prompt"),
        (0, ["seed"], "params", "dictionary"),
    ],
)
def test_a_bad_declaration_is_one_line_naming_file_backend_and_field(
    tmp_path: Path, backend: int, params: Any, field: str, words: str
) -> None:
    err = _error(tmp_path, backend, params)
    name = catalogue_doc()["backends"][backend]["name"]
    assert err.details["backend"] == name and err.details["field"] == field, err.message
    assert f"backend {name!r}: {field}: " in err.message and words in err.message, err.message
