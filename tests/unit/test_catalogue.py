"""Catalogue schema: the shipped file is valid and matches CONTRACT; a bad one names the file,
the backend and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.domain.catalogue import load_catalogue, parse_catalogue
from orchestrator.domain.jobs import Kind, Tier
from orchestrator.errors import ConfigurationError

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "backends.yaml"


def _good() -> dict[str, Any]:
    return {
        "defaults": {"timeouts": {"connect_s": 2.0, "read_s": 30.0}, "max_concurrency": 7},
        "backends": [
            {
                "name": "vid-a", "protocol": "predictions", "base_url": "${SIM}/vid-a",
                "kinds": ["video"], "tier": "draft",
                "price": {"model": "per_second", "usd_per_second": 0.05,
                          "resolution_multipliers": {"480p": 1, "720p": 1.5}},
                "timeouts": {"read_s": 10},
            },
            {
                "name": "txt-a", "protocol": "openai", "base_url": "http://127.0.0.1:1/t",
                "api_key_env": "TXT_KEY", "kinds": ["text"], "tier": "premium",
                "price": {"model": "per_token", "usd_per_1k_input": 0.001,
                          "usd_per_1k_output": 0.002},
                "max_concurrency": 3,
            },
        ],
    }


def _write(tmp_path: Path, doc: Any) -> Path:
    p = tmp_path / "backends.yaml"
    p.write_text(yaml.safe_dump(doc) if not isinstance(doc, str) else doc)
    return p


def _error(tmp_path: Path, doc: Any) -> ConfigurationError:
    p = _write(tmp_path, doc)
    with pytest.raises(ConfigurationError) as info:
        load_catalogue(p, env={"SIM": "http://127.0.0.1:9"})
    assert str(p) in str(info.value)
    assert info.value.details["file"] == str(p)
    return info.value


def test_shipped_catalogue_matches_contract() -> None:
    cat = load_catalogue(SHIPPED, env={})
    video = cat.for_kind(Kind.VIDEO)
    assert len(video) >= 3
    assert {b.tier for b in video} == set(Tier)
    by_tier = {t: [b for b in video if b.tier is t] for t in Tier}
    # a higher tier is dearer: compare the per-second rates
    cheapest = {t: min(b.price.usd_per_second for b in bs) for t, bs in by_tier.items()}  # type: ignore[union-attr]
    assert cheapest[Tier.DRAFT] < cheapest[Tier.STANDARD] < cheapest[Tier.PREMIUM]
    assert len(cat.for_kind(Kind.IMAGE)) == 2 and len(cat.for_kind(Kind.TEXT)) == 2
    std, std_b = cat.get("vid-standard"), cat.get("vid-standard-b")
    assert std.price.usd_per_second < std_b.price.usd_per_second  # type: ignore[union-attr]
    assert all(b.base_url.startswith("http://127.0.0.1:8100/") for b in cat)
    assert {b.protocol.value for b in cat.for_kind(Kind.TEXT)} == {"openai"}


def test_env_expansion_defaults_and_merge(tmp_path: Path) -> None:
    cat = load_catalogue(_write(tmp_path, _good()), env={"SIM": "http://127.0.0.1:9/"})
    vid = cat.get("vid-a")
    # ${SIM} ends in "/": the empty path segment it makes is dropped (a router would 404)
    assert vid.base_url == "http://127.0.0.1:9/vid-a"
    assert (vid.timeouts.connect_s, vid.timeouts.read_s) == (2.0, 10.0)
    assert vid.max_concurrency == 7  # from defaults
    assert cat.get("txt-a").max_concurrency == 3
    assert cat.get("txt-a").api_key({"TXT_KEY": "k"}) == "k"
    assert "vid-a" in cat and "nope" not in cat
    with pytest.raises(KeyError, match="nope"):
        cat.get("nope")
    shipped = load_catalogue(SHIPPED, env={"ORCH_SIMULATOR_URL": "http://127.0.0.1:7777"})
    assert shipped.get("img-pro").base_url == "http://127.0.0.1:7777/img-pro"


@pytest.mark.parametrize(
    ("mutate", "backend", "field", "words"),
    [
        (lambda d: d["backends"][0]["price"].update(usd_per_second=-1), "vid-a",
         "price.usd_per_second", "greater than or equal to 0"),
        (lambda d: d["backends"][1].update(tier="gold"), "txt-a", "tier", "draft"),
        (lambda d: d["backends"][1].update(kinds=["text", "video"]), "txt-a", "price",
         "cannot price video"),
        (lambda d: d["backends"][0].update(protocol="grpc"), "vid-a", "protocol", "predictions"),
        (lambda d: d["backends"][0]["timeouts"].update(read_s=0), "vid-a", "timeouts.read_s",
         "greater than 0"),
        (lambda d: d["backends"][1].update(max_concurrency=0), "txt-a", "max_concurrency",
         "greater than or equal to 1"),
        # YAML's true is an int to pydantic: it loaded as 1
        (lambda d: d["backends"][1].update(max_concurrency=True), "txt-a", "max_concurrency",
         "valid integer"),
        # and to a float: "read_s: true" loaded as a one-second timeout
        (lambda d: d["backends"][0]["timeouts"].update(read_s=True), "vid-a",
         "timeouts.read_s", "not true or false"),
        (lambda d: d["backends"][1].update(expected_latency_ms=False), "txt-a",
         "expected_latency_ms", "not true or false"),
        (lambda d: d["backends"][1].pop("base_url"), "txt-a", "base_url", "required"),
        (lambda d: d["backends"][1].update(base_url="ftp://x"), "txt-a", "base_url", "http"),
        (lambda d: d["backends"][0].update(base_url="${MISSING}/x"), "vid-a", "base_url",
         "MISSING is not set"),
        # URLs the HTTP client cannot send to: they loaded, and failed every call
        (lambda d: d["backends"][1].update(base_url="http:///v1"), "txt-a", "base_url",
         "with a host"),
        (lambda d: d["backends"][1].update(base_url="https://api.x:443x/v1"), "txt-a",
         "base_url", "port is not a number"),
        (lambda d: d["backends"][1].update(base_url="https://api.x:99999/v1"), "txt-a",
         "base_url", "port is not a number"),
        (lambda d: d["backends"][1].update(base_url="https://api.x/v1 beta"), "txt-a",
         "base_url", "without spaces"),
        # .inf loaded, then the simulator stopped on it with a traceback
        (lambda d: d["backends"][1].update(expected_latency_ms=float("inf")), "txt-a",
         "expected_latency_ms", "finite"),
        (lambda d: d["backends"][0]["price"].update(model="per_gram"), "vid-a", "price",
         "per_second"),
        (lambda d: d["backends"][0]["price"]["resolution_multipliers"].update({"4k": 3}),
         "vid-a", "price.resolution_multipliers", "4k"),
        (lambda d: d["backends"][1].update(name="Bad Name"), "Bad Name", "name", "pattern"),
        (lambda d: d["backends"][1].update(name="vid-a"), "vid-a", "name", "duplicate"),
        (lambda d: d["backends"][0].update(colour="red"), "vid-a", "colour", "not permitted"),
        (lambda d: d["backends"][1]["price"].update(usd_per_1k_input=1e-13), "txt-a", "price",
         "12 decimal places"),
    ],
)
def test_bad_backend_names_file_backend_and_field(
    tmp_path: Path, mutate: Any, backend: str, field: str, words: str
) -> None:
    doc = _good()
    mutate(doc)
    err = _error(tmp_path, doc)
    assert err.details["backend"] == backend
    assert err.details["field"] == field
    assert f"backend {backend!r}" in err.message and field in err.message
    assert words in err.message


def test_the_configuration_docs_example_error_is_the_real_message(tmp_path: Path) -> None:
    doc = _good()
    doc["backends"][0]["price"]["usd_per_second"] = -1
    err = _error(tmp_path, doc)
    shown = err.message.split(": ", 1)[1]  # past the file name
    docs = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    example = shown.replace("'vid-a'", "'vid-draft'")
    assert f"`config/backends.yaml: {example}`" in docs, example
    doc["backends"][0]["price"]["usd_per_second"] = 0  # free is a price
    parse_catalogue(doc, env={"SIM": "http://127.0.0.1:9"})


@pytest.mark.parametrize(("given", "read"), [
    ("${SIM}/vid-a", "http://127.0.0.1:9/vid-a"),  # SIM ends in "/"
    ("http://g:1/proxy/https://api.x//v1/", "http://g:1/proxy/https://api.x/v1"),
    ("http://h:1/a?u=http://x//y", "http://h:1/a?u=http://x//y"),
    ("http://h:1?x=1//y", "http://h:1?x=1//y"),
    ("http://[::1]:8080/v1", "http://[::1]:8080/v1"),
    ("https://user:pw@api.x/v1", "https://user:pw@api.x/v1"),
])
def test_base_url_loses_empty_path_segments_only(tmp_path: Path, given: str, read: str) -> None:
    doc = _good()
    doc["backends"][0]["base_url"] = given
    cat = load_catalogue(_write(tmp_path, doc), env={"SIM": "http://127.0.0.1:9/"})
    assert cat.get("vid-a").base_url == read


def test_a_bad_base_url_is_not_echoed_it_may_hold_an_expanded_key(tmp_path: Path) -> None:
    doc = _good()
    doc["backends"][0]["base_url"] = "${SIM}"
    p = _write(tmp_path, doc)
    with pytest.raises(ConfigurationError) as info:
        load_catalogue(p, env={"SIM": "api.example.com/v1?key=sk-live-SECRET"})
    assert "base_url" in info.value.message and "api.example.com" in info.value.message
    assert "SECRET" not in str(info.value) and "SECRET" not in str(info.value.details)
    # a bare key where the URL should be: nothing of it is shown
    with pytest.raises(ConfigurationError) as info:
        load_catalogue(p, env={"SIM": "sk-proj-SECRET0123456789abcdefghijkl"})
    assert "base_url" in info.value.message and "SECRET" not in str(info.value)


def test_bad_documents(tmp_path: Path) -> None:
    assert "not valid YAML at line" in _error(tmp_path, "backends:\n  - [unclosed\n").message
    assert _error(tmp_path, {"backends": []}).details["field"] == "backends"
    assert _error(tmp_path, {"backend": []}).details["field"] == "backend"
    doc = _good()
    doc["defaults"]["timeouts"]["connect_s"] = -1
    assert _error(tmp_path, doc).details["field"] == "defaults.timeouts.connect_s"
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_catalogue(tmp_path / "missing.yaml")
    with pytest.raises(ConfigurationError, match="mapping"):
        parse_catalogue(["x"], source="inline")


@pytest.mark.parametrize(("key", "value", "words"), [
    ("max_concurrency", 0, "greater than or equal to 1"),
    ("max_concurrency", 1_000_001, "less than or equal to 1000000"),
    ("max_concurrency", True, "valid integer"),
    ("idempotency", "always", "'inflight'"),
])
def test_a_bad_default_is_refused_though_every_backend_sets_its_own(
    tmp_path: Path, key: str, value: Any, words: str
) -> None:
    # it loaded, and met the first backend added without the key
    doc = _good()
    for backend in doc["backends"]:
        backend.setdefault(key, 5 if key == "max_concurrency" else "none")
    doc["defaults"][key] = value
    err = _error(tmp_path, doc)
    assert err.details["backend"] is None and err.details["field"] == f"defaults.{key}"
    assert err.message.startswith(f"{tmp_path / 'backends.yaml'}: defaults.{key}: ")
    assert words in err.message


@pytest.mark.parametrize("cap", ["inf", "nan"])
def test_an_infinite_max_duration_is_refused_at_load(tmp_path: Path, cap: str) -> None:
    """``max_duration_s: .inf`` loaded, then made every video unpriceable there (the exact
    comparison of a fractional maximum takes no infinity): no limit is said by leaving the
    key out."""
    doc = _good()
    doc["backends"][0]["price"]["max_duration_s"] = float(cap)
    assert f"max_duration_s: .{cap}" in yaml.safe_dump(doc)
    error = _error(tmp_path, doc)
    assert error.details["field"] == "price.max_duration_s"
    assert error.details["backend"] == "vid-a"
