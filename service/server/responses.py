"""The JSON response of every route, serialized with orjson (see `serialize`)."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from service.sdk.serialize import dumps


class JSONBody(Response):
    """A JSON response; `content` may be bytes serialized already."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return content if isinstance(content, bytes) else dumps(content)
