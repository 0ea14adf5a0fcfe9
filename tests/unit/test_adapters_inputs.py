"""Only declared inputs reach a provider: the request bodies the adapters build, seen through
their transport seam (an httpx.MockTransport)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from orchestrator.backends import make_adapter
from orchestrator.domain.catalogue import parse_catalogue
from orchestrator.domain.jobs import JobSpec

CATALOGUE = parse_catalogue({"backends": [
    {"name": "vid", "protocol": "predictions", "kinds": ["video"], "tier": "draft",
     "base_url": "http://provider.test/vid",
     "price": {"model": "per_second", "usd_per_second": 0.1},
     "params": {"seed": {"type": "integer", "min": 0},
                "fps": {"type": "integer", "min": 8, "max": 60, "default": 24}}},
    {"name": "vid-plain", "protocol": "predictions", "kinds": ["video"], "tier": "draft",
     "base_url": "http://provider.test/vid-plain",
     "price": {"model": "per_second", "usd_per_second": 0.1}},
    {"name": "txt", "protocol": "openai", "kinds": ["text"], "tier": "standard",
     "base_url": "http://provider.test/txt",
     "price": {"model": "per_token", "usd_per_1k_input": 0.001, "usd_per_1k_output": 0.002},
     "params": {"temperature": {"type": "number", "min": 0, "max": 2}}},
    {"name": "txt-plain", "protocol": "openai", "kinds": ["text"], "tier": "standard",
     "base_url": "http://provider.test/txt-plain",
     "price": {"model": "per_token", "usd_per_1k_input": 0.001, "usd_per_1k_output": 0.002}},
    {"name": "img", "protocol": "openai", "kinds": ["image"], "tier": "standard",
     "base_url": "http://provider.test/img",
     "price": {"model": "per_image", "usd_per_image": {"512x512": 0.01}},
     "params": {"style": {"type": "enum", "choices": ["vivid", "natural"]}}},
]})
JUNK = {"api_key": "sk-live-123", "callback": "http://evil.test", "model": "gpt-x"}
CHAT = {"id": "c1", "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2}}
IMAGES = {"data": [{"url": "http://x/1.png"}]}
CREATED = {"id": "p1", "status": "starting"}


def sent(backend: str, job: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """The JSON body ``backend``'s adapter sends for ``job``."""
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(201 if "status" in answer else 200, json=answer)

    spec = JobSpec.model_validate(job)
    make_adapter(CATALOGUE.get(backend), httpx.MockTransport(handler)).submit(spec, "k1")
    assert len(bodies) == 1
    return bodies[0]


def video(**inp: Any) -> dict[str, Any]:
    return {"kind": "video", "input": {"prompt": "a kite", "duration_s": 4, **inp, **JUNK}}


def test_predictions_send_the_declared_inputs_only_with_declared_defaults() -> None:
    assert sent("vid", video(seed=7), CREATED) == {"input": {
        "prompt": "a kite", "duration_s": 4, "resolution": "720p", "seed": 7, "fps": 24}}
    assert sent("vid", video(fps=30), CREATED)["input"]["fps"] == 30
    # a backend without params: the kind's standard parameters, nothing else
    assert sent("vid-plain", video(seed=7), CREATED) == {"input": {
        "prompt": "a kite", "duration_s": 4, "resolution": "720p"}}


@pytest.mark.parametrize(("backend", "extra"), [("txt", {"temperature": 0.3}),
                                                  ("txt-plain", {})])
def test_chat_maps_declared_inputs_into_the_body(backend: str, extra: dict[str, Any]) -> None:
    job = {"kind": "text", "input": {"prompt": "hi", "max_tokens": 9, "temperature": 0.3,
                                     **JUNK}}
    assert sent(backend, job, CHAT) == {
        "model": backend, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9,
        **extra}


def test_images_map_declared_inputs_into_the_body() -> None:
    job = {"kind": "image", "input": {"prompt": "a cat", "size": "512x512", "style": "vivid",
                                      "quality": "hd", **JUNK}}
    assert sent("img", job, IMAGES) == {"model": "img", "prompt": "a cat", "n": 1,
                                        "size": "512x512", "style": "vivid"}
