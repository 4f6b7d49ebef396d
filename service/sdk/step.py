"""Steps: plain functions whose calls, inside a pipeline function, wire a DAG."""

from __future__ import annotations

import inspect
import threading
import typing
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from service.errors import PipelineDefinitionError

if TYPE_CHECKING:
    from service.sdk.pipeline import Tracer

P = ParamSpec("P")
R = TypeVar("R")

# Set only while a pipeline function is being traced, so that a step called outside
# of tracing (in a unit test, say) simply runs its function.
active_tracer: ContextVar[Tracer | None] = ContextVar("pipeserve_tracer", default=None)

EMPTY: Any = inspect.Parameter.empty


@dataclass(frozen=True, slots=True)
class StepContext:
    """What a step sees of its invocation: declare a parameter of this type to get it.

    `state` is what the pipeline's `on_init` returned: one object shared by every
    invocation in the process, so steps must only read it (or guard it themselves).
    Everything else is private to this invocation.
    """

    state: Any
    run_id: str
    step_name: str
    pipeline_name: str
    parameters: Mapping[str, Any]
    _cancel_event: threading.Event = field(repr=False, compare=False)

    def cancelled(self) -> bool:
        """True once the invocation was cancelled or timed out: long steps may stop early."""
        return self._cancel_event.is_set()


@dataclass(frozen=True, slots=True)
class StepInput:
    name: str
    annotation: Any
    default: Any = EMPTY

    @property
    def has_default(self) -> bool:
        return self.default is not EMPTY


def _output_names(step_name: str, return_annotation: Any) -> tuple[str, ...]:
    """Names from `Annotated[T, "name"]`, or a tuple of those; the step's name otherwise."""

    def annotated_name(annotation: Any) -> str | None:
        if typing.get_origin(annotation) is typing.Annotated:
            for meta in annotation.__metadata__:
                if isinstance(meta, str):
                    return meta
        return None

    single = annotated_name(return_annotation)
    if single is not None:
        return (single,)
    if typing.get_origin(return_annotation) is tuple:
        args = typing.get_args(return_annotation)
        names = [annotated_name(arg) for arg in args]
        if args and Ellipsis not in args and all(name is not None for name in names):
            found = [name for name in names if name is not None]
            duplicated = sorted({name for name in found if found.count(name) > 1})
            if duplicated:
                raise PipelineDefinitionError(
                    f"step '{step_name}' names the output(s) {duplicated} more than once"
                )
            return tuple(found)
    return (step_name,)


class Step(Generic[P, R]):
    """A pipeline step; made by the `@step` decorator."""

    def __init__(self, func: Callable[P, R], name: str | None = None) -> None:
        self.func = func
        self.name = name or func.__name__
        self.is_async = inspect.iscoroutinefunction(func)
        try:
            hints = typing.get_type_hints(func, include_extras=True)
        except Exception as exc:  # a forward reference that cannot be resolved
            raise PipelineDefinitionError(
                f"step '{self.name}': cannot resolve its type hints: {exc}"
            ) from exc
        self.signature = inspect.signature(func)
        self.inputs: dict[str, StepInput] = {}
        self.context_parameter: str | None = None
        for param in self.signature.parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise PipelineDefinitionError(
                    f"step '{self.name}': *args and **kwargs are not supported "
                    f"(parameter '{param.name}')"
                )
            annotation = hints.get(param.name, Any)
            if annotation is StepContext:
                self.context_parameter = param.name
                continue
            self.inputs[param.name] = StepInput(param.name, annotation, param.default)
        self.output_names = _output_names(self.name, hints.get("return", Any))

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        tracer = active_tracer.get()
        if tracer is None:
            return self.func(*args, **kwargs)
        return tracer.add_call(self, args, dict(kwargs))  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"<Step {self.name}>"


@overload
def step(func: Callable[P, R], /) -> Step[P, R]: ...


@overload
def step(*, name: str | None = None) -> Callable[[Callable[P, R]], Step[P, R]]: ...


def step(
    func: Callable[P, R] | None = None, /, *, name: str | None = None
) -> Step[P, R] | Callable[[Callable[P, R]], Step[P, R]]:
    """Make a function (`def` or `async def`) a pipeline step.

    Parameters with defaults can be overridden per request; the return value is the
    step's output, named with `Annotated[T, "name"]`, or several outputs with a tuple
    of those.
    """

    def wrap(f: Callable[P, R]) -> Step[P, R]:
        return Step(f, name=name)

    if func is not None:
        return wrap(func)
    return wrap
