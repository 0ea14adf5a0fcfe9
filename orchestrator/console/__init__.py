"""The web console: static HTML, CSS and vanilla JavaScript served by the API at ``/console``.

No build step and nothing fetched from elsewhere: the files under ``static/`` ship in the
package and are served as they are. The console signs in with an API key (kept in the
browser's ``sessionStorage``, never in a URL) and calls only the public ``/v1`` API, so it
sees exactly what that key may see, and anything it shows can be scripted.

Every answer carries a strict Content-Security-Policy (scripts, styles and API calls from
this origin only; no inline script; no framing), so an injected string in a job's metadata
can neither run nor send a key elsewhere.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"
PATH = "/console"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # revalidated on every load: a new release's files are seen at once (ETag: 304 if same)
    "Cache-Control": "no-cache",
}


def mount(app: FastAPI) -> None:
    """Serve the console at ``/console/`` (``/console`` redirects there)."""

    @app.get(PATH, include_in_schema=False)
    def console_root() -> RedirectResponse:
        return RedirectResponse(PATH + "/", status_code=308)

    app.mount(PATH, StaticFiles(directory=STATIC_DIR, html=True), name="console")
    # every answer under /console, errors and middlewares' refusals too: the app adds
    # ``PathHeaders(PATH, fixed=SECURITY_HEADERS)`` outside its middlewares
