"""What the API's edges know of its routes: the event streams' paths, and the routes
themselves under FastAPI's included routers."""

from __future__ import annotations

import re
from collections.abc import Iterable

from starlette.routing import BaseRoute, Mount

# event streams never end on their own: HEAD is not answered there (middleware.HeadAsGet)
STREAM_PATHS = re.compile(r"/v1/events/?|/v1/jobs/[^/]+/events/?")


def flat_routes(routes: Iterable[BaseRoute]) -> list[BaseRoute]:
    """The routes themselves: an included router (FastAPI keeps ``include_router``'s routers
    as one entry that matches for all of them) is replaced by its own routes."""
    out: list[BaseRoute] = []
    for route in routes:
        inner = getattr(getattr(route, "original_router", None), "routes", None)
        if isinstance(route, Mount) or inner is None:
            out.append(route)
        else:
            out.extend(flat_routes(inner))
    return out
