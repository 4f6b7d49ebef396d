"""The JSON response of every route, serialized with orjson (see `serialize`)."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from service.errors import ServiceError, error_body
from service.sdk.serialize import dumps


class JSONBody(Response):
    """A JSON response; `content` may be bytes serialized already."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return content if isinstance(content, bytes) else dumps(content)


def error_response(exc: ServiceError, **beside: Any) -> JSONBody:
    """The answer of a `ServiceError`: its status, its headers and the one error body;
    `beside` are top-level fields some callers read (see `errors.error_body`)."""
    body = error_body(exc.body(), **beside)
    return JSONBody(body, status_code=exc.status_code, headers=exc.headers)
