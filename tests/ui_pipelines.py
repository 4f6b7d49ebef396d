"""A pipeline the dashboard and client tests serve: every kind of parameter, a diamond DAG."""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

from service import pipeline, step


class Colour(enum.Enum):
    RED = "red"
    GREEN = "green"


@step
def prepare(
    text: str,
    repeat: int = 2,
    scale: float = 1.5,
    shout: bool = False,
    mode: Literal["fast", "careful"] = "fast",
    colour: Colour = Colour.GREEN,
    tags: list[str] = ["a", "b"],  # noqa: B006
    extra: dict[str, int] = {},  # noqa: B006
    note: str | None = None,
) -> Annotated[dict[str, Any], "echo"]:
    if text == "fail":
        raise ValueError("asked to fail")
    word = text.upper() if shout else text
    return {
        "text": " ".join([word] * repeat),
        "scale": scale,
        "mode": mode,
        "colour": colour.value,
        "tags": tags,
        "extra": extra,
        "note": note,
    }


@step
def measure(echo: dict[str, Any]) -> Annotated[int, "length"]:
    return len(echo["text"])


@step
async def label(echo: dict[str, Any]) -> Annotated[str, "label"]:
    return f"{echo['mode']}:{echo['colour']}"


@step
def combine(length: int, label: str) -> Annotated[str, "summary"]:
    return f"{label}/{length}"


@pipeline
def showcase(
    text: str,
    repeat: int = 2,
    scale: float = 1.5,
    shout: bool = False,
    mode: Literal["fast", "careful"] = "fast",
    colour: Colour = Colour.GREEN,
    tags: list[str] = ["a", "b"],  # noqa: B006
    extra: dict[str, int] = {},  # noqa: B006
    note: str | None = None,
) -> Any:
    """Every kind of parameter, a diamond DAG, and a failure on demand (text="fail")."""
    echo = prepare(text, repeat, scale, shout, mode, colour, tags, extra, note)
    return {"echo": echo, "summary": combine(measure(echo), label(echo))}
