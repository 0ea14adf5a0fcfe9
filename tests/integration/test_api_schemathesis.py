"""Schemathesis fuzzes every operation of /openapi.json against the live API (real HTTP, real
PostgreSQL and Redis): no 5xx, and every response matches the documented status codes, content
types, headers and schemas. Bounded: a fixed number of examples over all operations.

(``schemathesis.pytest.from_fixture`` does not run under pytest 9 yet, so the schema's own
Hypothesis strategy drives the cases here.)"""

from __future__ import annotations

from collections import Counter
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from .api_fixture import Api, api_fixture  # noqa: F401

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]


def _fuzz(api: Api, mode: GenerationMode, examples: int, key: str,
          revoking: bool | None = None, only: tuple[str, str] | None = None) -> Counter[str]:
    """``revoking``: True, only ``DELETE /v1/keys/{key_id}``; False, everything else (a key
    revoked early, maybe the fuzzer's own, would turn the rest of a run into 401s).
    ``only``: (method, path) of the one operation to fuzz."""
    # The event streams are left out: an open stream only ends when its client leaves (a
    # tenant feed) or its job ends; tests/integration/test_job_events.py covers them.
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json").exclude(
        path_regex=r"/events$")
    if revoking is not None:
        schema = (schema.include if revoking else schema.exclude)(
            method="DELETE", path="/v1/keys/{key_id}")
    if only is not None:
        schema = schema.include(method=only[0], path=only[1])
    seen: Counter[str] = Counter()

    @given(case=schema.as_strategy(mode))
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case: schemathesis.Case[Any]) -> None:
        response = case.call_and_validate(base_url=api.url, checks=CHECKS,
                                          headers={"Authorization": f"Bearer {key}"})
        seen[f"{case.method} {case.path} {response.status_code}"] += 1

    run()
    return seen


def test_fuzzed_requests_get_no_5xx_and_match_the_schema(api: Api) -> None:
    api.budget("global", 1_000_000_000)
    # A submission's input is free-form in the schema, so a valid one is rare among all the
    # operations' cases: the success path gets cases of its own, first (the later phases'
    # 401s get this client address refused for a while).
    seen = _fuzz(api, GenerationMode.POSITIVE, 40, api.keys["globex"], only=("POST", "/v1/jobs"))
    seen += _fuzz(api, GenerationMode.POSITIVE, 150, api.admin_key, revoking=False)
    seen += _fuzz(api, GenerationMode.POSITIVE, 10, api.admin_key, revoking=True)
    seen += _fuzz(api, GenerationMode.NEGATIVE, 80, api.keys["acme"])
    operations = {k.rsplit(" ", 1)[0] for k in seen}
    assert len(operations) >= 10, seen  # every route was exercised
    assert {"GET /v1/keys", "POST /v1/keys", "DELETE /v1/keys/{key_id}"} <= operations, seen
    assert any(k.startswith("POST /v1/jobs ") and k.endswith(" 202") for k in seen), seen
