"""``JobJSONResponse``: job resources rendered by pydantic-core, without a second validation.

A route with a ``response_model`` has FastAPI validate the returned dict against the model
and then serialize the model. The job resources (``orchestrator.service.views``) are built
from our own rows into exactly the documented shape, so that validation only re-checks our
output, and for a page of jobs (each with its route's candidates and reasons) it was a
third of the API's CPU for the request: sampled with ``py-spy --gil`` under
``bench/api_cpu.py``'s ``list50``, validation 13 % and serialization 16.5 % of the samples.
Returning a response skips both; the route keeps its ``response_model`` for the OpenAPI
document, and the contract tests (schemathesis) check the answers against it.

pydantic-core's ``to_json`` renders in Rust, with the same output as ``json.dumps`` for these
values (UTF-8, no spaces); a NaN or infinity, which JSON cannot carry, becomes ``null``.
"""

from __future__ import annotations

from typing import Any

import pydantic_core
from fastapi.responses import JSONResponse


class JobJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return pydantic_core.to_json(content, inf_nan_mode="null")
