"""A pipeline for tests/test_connections.py, served as `tests.connection_pipelines:fragile`."""

from __future__ import annotations

from typing import Annotated, Any

import pydantic

from service import pipeline, step


def _check(value: int) -> int:
    # Not a ValueError: pydantic lets other exceptions through, so the app sees an
    # unexpected one while it parses the request (a bug, as far as the server knows).
    if value == 13:
        raise RuntimeError("thirteen is unlucky")
    return value


Fragile = Annotated[int, pydantic.AfterValidator(_check)]


@step
def passthrough(x: Fragile = 0) -> Annotated[int, "y"]:
    return x


@pipeline
def fragile(x: Fragile = 0) -> Any:
    return passthrough(x)
