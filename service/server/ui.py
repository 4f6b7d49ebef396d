"""The browser side: the run dashboard at `/` and interactive API docs at `/docs`.

Both are static pages that read the JSON API; their assets, and Swagger UI's, are served
by the app itself under `/ui/` (never from a CDN: many clusters have no internet). Pages
and assets are public so that a browser can load them before it asks for the key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from service.server.middleware import PUBLIC_PREFIX

STATIC = Path(__file__).parent / "static"
_PAGE_HEADERS = {"Cache-Control": "no-cache"}


class _Revalidated(StaticFiles):
    """Static files a browser checks (a 304 when unchanged) before each use: after an
    upgrade, a page never runs with the scripts of the version before."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.setdefault("Cache-Control", "no-cache")
        return response


def _page(name: str) -> Callable[[Request], Awaitable[Response]]:
    path = STATIC / name

    async def endpoint(request: Request) -> Response:
        return FileResponse(path, media_type="text/html", headers=_PAGE_HEADERS)

    return endpoint


def ui_routes() -> list[BaseRoute]:
    """The dashboard, the docs and their assets, to append to the app's routes."""
    prefix = PUBLIC_PREFIX.rstrip("/")
    return [
        Route("/", _page("dashboard.html"), methods=["GET"]),
        Route("/docs", _page("docs.html"), methods=["GET"]),
        Mount(f"{prefix}/swagger", _Revalidated(directory=str(swagger_ui_path))),
        Mount(prefix, _Revalidated(directory=STATIC)),
    ]
