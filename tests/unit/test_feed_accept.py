"""Which answer ``GET /v1/events`` gives for an ``Accept`` header: one page of JSON only when
the client prefers JSON to the event stream, weights (``q``) read as RFC 9110 says."""

from __future__ import annotations

import pytest

from orchestrator.api.routes_events import _wants_json


@pytest.mark.parametrize(("accept", "json"), [
    ("application/json", True),
    ("Application/JSON", True),
    ("application/json, text/event-stream;q=0.1", True),
    ("text/event-stream;q=0, application/json", True),  # q=0: not acceptable at all
    ("application/json;q=0.9, text/event-stream;q=0.5", True),
    ("application/json, text/event-stream", False),  # a tie: the stream
    ("application/json;q=0.5, text/event-stream;q=0.5", False),
    ("application/json;q=0", False),
    ("text/event-stream", False),
    ("*/*", False),
    (None, False),
])
def test_json_only_when_preferred_to_the_stream(accept: str | None, json: bool) -> None:
    assert _wants_json(accept) is json
