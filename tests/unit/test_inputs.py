"""The check at the door: an input field no backend that could run the job accepts is
``invalid_request`` naming the field; and what an adapter may send its provider."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.domain.catalogue import Catalogue, parse_catalogue
from orchestrator.domain.inputs import check_input, provider_input
from orchestrator.domain.jobs import JobSpec, Kind
from orchestrator.errors import InvalidRequest

from .test_params import CAT, catalogue_doc


def spec(kind: str, backend: str | None = None, **inp: Any) -> JobSpec:
    base: dict[str, Any] = {"prompt": "top secret prompt"}
    if kind == "video":
        base["duration_s"] = 8
    return JobSpec.model_validate({"kind": kind, "input": {**base, **inp}, "backend": backend})


def refused(s: JobSpec, cat: Catalogue = CAT) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        check_input(s, cat)
    err = info.value
    assert err.code == "invalid_request" and "top secret" not in err.message
    assert err.details["errors"] == [{"field": err.details["field"],
                                      "message": err.message.split(": ", 1)[1]}]
    return err


def test_the_door_refuses_what_no_backend_of_the_kind_accepts() -> None:
    err = refused(spec("video", api_key="sk-123"))
    assert err.details["field"] == "input.api_key"
    assert err.message == "input.api_key: no video backend accepts this field"
    err = refused(spec("video", seed="7"))
    assert err.message == 'input.seed: expected an integer in [0, 99], got "7"'
    err = refused(spec("video", seed=7.5))
    assert err.details["field"] == "input.seed" and "got 7.5" in err.message
    err = refused(spec("video", loop=1))
    assert err.message == "input.loop: expected true or false, got 1"
    # backends disagree: each expectation with its backends
    txt = catalogue_doc()["backends"][2]
    three = parse_catalogue({"backends": [
        {**txt, "name": f"t-{i}", "params": {"temperature": {"type": "number", "min": 0,
                                                              "max": hi}}}
        for i, hi in enumerate((1, 2, 2.5))]})
    err = refused(spec("text", temperature=3), three)
    assert err.message == ("input.temperature: expected a number in [0, 1] (t-0); or a number "
                           "in [0, 2] (t-1); or a number in [0, 2.5] (t-2), got 3")
    err = refused(spec("video", prompt="x" * 600, backend="vid-a"))
    assert err.message.endswith("got a string of 600 characters")


def test_the_door_lets_through_what_some_backend_accepts() -> None:
    check_input(spec("video", seed=3, loop=True, guidance=1), CAT)  # vid-a takes them
    check_input(spec("video", resolution="1080p"), CAT)  # vid-b takes 1080p
    check_input(spec("image", n=2), CAT)
    check_input(spec("text", style="terse", temperature=0.5), CAT)
    check_input(spec("video", backend="nope"), CAT)  # routing says: unknown backend
    check_input(spec("text", backend="vid-a"), CAT)  # routing says: wrong kind


def test_a_pinned_backend_must_accept_every_field() -> None:
    err = refused(spec("video", seed=3, backend="vid-b"))
    assert err.message == "input.seed: backend vid-b does not accept this field"
    err = refused(spec("video", resolution="1080p", backend="vid-a"))
    assert err.message == 'input.resolution: expected one of 480p, 720p, got "1080p"'


def test_a_field_every_backend_requires_must_be_set() -> None:
    only_txt = parse_catalogue({"backends": [catalogue_doc()["backends"][2]]})
    err = refused(spec("text"), only_txt)
    assert err.message == "input.style: required" and err.details["field"] == "input.style"
    check_input(spec("text"), CAT)  # any-a runs text without a style
    err = refused(spec("text", backend="txt-a"))
    assert err.message == "input.style: required by backend txt-a"


def test_provider_input_is_the_declared_fields_with_declared_defaults() -> None:
    s = spec("video", seed=3, guidance=2.5, api_key="sk-123")
    assert provider_input(CAT.get("vid-a"), Kind.VIDEO, s.input) == {
        "prompt": "top secret prompt", "duration_s": 8, "resolution": "720p", "seed": 3,
        "guidance": 2.5, "loop": False}
    assert provider_input(CAT.get("vid-b"), Kind.VIDEO, s.input) == {
        "prompt": "top secret prompt", "duration_s": 8, "resolution": "720p"}
    assert provider_input(CAT.get("vid-b"), Kind.TEXT, s.input) == {}
