"""The API's docs page at ``/docs``: Swagger UI over ``/openapi.json``, from files installed
with the project (the ``fastapi-offline`` package's Swagger UI bundle), never a CDN.

FastAPI's own ``/docs`` loads Swagger UI from cdn.jsdelivr.net and starts it with an inline
script, which the console's Content-Security-Policy forbids. This page is our HTML, our
start-up script (``swagger-init.js`` beside this file) and the package's JavaScript and CSS,
each served from this origin with the console's security headers (scripts, styles and API
calls from this origin only, no inline script, no framing). ReDoc (``/redoc``) is not served:
its bundle needs inline styles and blob: workers.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse
from starlette.staticfiles import StaticFiles

PATH = "/docs"
ASSETS_PATH = "/docs/assets"
HERE = Path(__file__).resolve().parent
# the installed package's Swagger UI bundle (swagger-ui-bundle.js, swagger-ui.css)
BUNDLE_DIR = Path(str(files("fastapi_offline") / "static"))

PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>orchestrator API</title>
<link rel="stylesheet" href="{ASSETS_PATH}/swagger-ui.css">
<link rel="icon" href="{ASSETS_PATH}/favicon.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{ASSETS_PATH}/swagger-ui-bundle.js"></script>
<script src="{PATH}/swagger-init.js"></script>
</body>
</html>
"""


def mount(app: FastAPI) -> None:
    """Serve ``/docs`` (the page), ``/docs/swagger-init.js`` and ``/docs/assets/…``; the app
    gives every answer under ``/docs`` the console's strict headers (``PathHeaders``)."""

    @app.get(PATH, include_in_schema=False)
    def docs_page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    @app.get(f"{PATH}/swagger-init.js", include_in_schema=False)
    def docs_init() -> FileResponse:
        return FileResponse(HERE / "swagger-init.js", media_type="text/javascript")

    app.mount(ASSETS_PATH, StaticFiles(directory=BUNDLE_DIR), name="docs-assets")
