"""Query parameters a ``/v1`` route does not take are refused (``422 invalid_request``), not
ignored: a filter misspelt or not offered (``GET /v1/jobs?kind=video``) would otherwise be
answered as if it had not been asked, and a client would act on the wrong jobs. So is a
parameter given twice that is not a list (``?status=queued&status=failed``): one of the two
would be used and the other dropped without a word."""

from __future__ import annotations

import types
from collections.abc import Sequence, Set
from typing import Annotated, Any, Union, get_args, get_origin

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from orchestrator.errors import InvalidRequest


async def known_query(request: Request) -> None:
    """A dependency of every ``/v1`` route: raise for the first query parameter the matched
    route (its own parameters and its dependencies') does not take. (async: FastAPI runs a
    plain function dependency in its thread pool, a thread hop on every request.)"""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not request.query_params:
        return
    takes = _query_names(route.dependant)  # a few short lists: not worth a cache
    unknown = next((k for k in request.query_params if k not in takes), None)
    if unknown is not None:
        offered = ", ".join(sorted(takes)) or "none"
        raise InvalidRequest(f"query: unknown parameter {unknown[:60]!r} (this route takes: "
                             f"{offered})", field=f"query.{unknown[:60]}")
    repeated = next((k for k in request.query_params
                     if not takes[k] and len(request.query_params.getlist(k)) > 1), None)
    if repeated is not None:
        raise InvalidRequest(f"query.{repeated}: given more than once (it takes one value)",
                             field=f"query.{repeated}")


def _query_names(dependant: Dependant) -> dict[str, bool]:
    """The query parameters a route takes, its own and its dependencies', by their names in
    the URL: whether each is a list (may be repeated)."""
    names = {p.alias: _several(p.field_info.annotation) for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def _several(annotation: Any) -> bool:
    """Whether a parameter so annotated takes several values (``list[str]``, ``set[int] |
    None``), as FastAPI reads a repeated query parameter into one: by the annotation, not
    with FastAPI's private helper, which a release may move."""
    origin = get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        return any(_several(a) for a in get_args(annotation))
    if origin is Annotated:
        return _several(get_args(annotation)[0])
    kind = origin or annotation
    return (isinstance(kind, type) and issubclass(kind, Sequence | Set)
            and not issubclass(kind, str | bytes))
