"""Steps: plain functions whose calls, inside a pipeline function, wire a DAG."""

from __future__ import annotations

import inspect
import threading
import typing
from collections.abc import Callable, Coroutine, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar, Unpack, overload

from service.errors import PipelineDefinitionError
from service.sdk.retries import RetryOptions, StepRetries

if TYPE_CHECKING:
    from service.sdk.tracing import Tracer

F = TypeVar("F", bound=Callable[..., Any])
# What a `Step.__call__` overload reads off the step's function: the parameters a pipeline
# passes (P), the output (T), and the inputs before a StepContext parameter (A1, A2).
P = ParamSpec("P")
T = TypeVar("T")
A1 = TypeVar("A1")
A2 = TypeVar("A2")
# A coroutine function's return: the runner awaits it, so a pipeline sees the `T` inside.
Async = Coroutine[Any, Any, T]

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
class Parameter:
    """A parameter of a step or a pipeline: its name, its type, its default (if any)."""

    name: str
    annotation: Any
    default: Any = EMPTY

    @property
    def required(self) -> bool:
        return self.default is EMPTY


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


class Step(Generic[F]):
    """A pipeline step; made by the `@step` decorator.

    `F` is the type of the function, kept whole: the overloads of `__call__` read from it
    what a pipeline passes and gets back. (They match `self` against it; matching against
    a ParamSpec type argument instead is lax in mypy, which would drop parameters from
    steps that have no StepContext.)
    """

    def __init__(
        self,
        func: F,
        name: str | None = None,
        *,
        checkpoint: bool = True,
        **retry: Unpack[RetryOptions],
    ) -> None:
        self.func = func
        self.name = name or func.__name__
        # Whether a batch run stores this step's outputs, to restore them on resume.
        self.checkpoint = checkpoint
        self.retry = StepRetries(**retry)
        self.retry.check(self.name)
        self.is_async = inspect.iscoroutinefunction(func)
        try:
            hints = typing.get_type_hints(func, include_extras=True)
        except Exception as exc:  # a forward reference that cannot be resolved
            raise PipelineDefinitionError(
                f"step '{self.name}': cannot resolve its type hints: {exc}"
            ) from exc
        self.signature = inspect.signature(func)
        self.inputs: dict[str, Parameter] = {}
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
            self.inputs[param.name] = Parameter(param.name, annotation, param.default)
        self.output_names = _output_names(self.name, hints.get("return", Any))
        # What a pipeline passes: every parameter but the StepContext, which the runner does.
        self.call_signature = self.signature.replace(
            parameters=[p for p in self.signature.parameters.values() if p.name in self.inputs]
        )

    # Inside a pipeline function a call returns a handle on the step's output(s), which the
    # pipeline can only pass on to other steps or return. It is typed as the output it
    # stands for (awaited, for an `async def`), as a pipeline's parameters are typed as the
    # values they stand for: so passing it where that value is expected checks, and
    # unpacking a tuple of `Annotated` outputs gives one handle per output.
    #
    # A StepContext parameter is the runner's to pass: first, second or third, it is left
    # out of what a pipeline passes. The inputs before it can then only be passed by
    # position (a ParamSpec cannot keep their names); those after it, either way. A first
    # parameter typed `Any` or `object` matches a StepContext too: such a step may also be
    # called without it.
    #
    # (The inputs before it are spelled `__a1`, positional-only in the pre-PEP 570 way: with
    # `/`, mypy finds the implementation below unable to take those overloads.)
    #
    # Outside a pipeline the call runs the function: what a sync step returns is typed
    # right; an async step returns its coroutine, so await `step.func(...)` instead there.
    @overload
    def __call__(
        self: Step[Callable[Concatenate[StepContext, P], Async[T]]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T: ...

    @overload
    def __call__(
        self: Step[Callable[Concatenate[StepContext, P], T]], *args: P.args, **kwargs: P.kwargs
    ) -> T: ...

    @overload
    def __call__(
        self: Step[Callable[Concatenate[A1, StepContext, P], Async[T]]],
        __a1: A1,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T: ...

    @overload
    def __call__(
        self: Step[Callable[Concatenate[A1, StepContext, P], T]],
        __a1: A1,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T: ...

    @overload
    def __call__(
        self: Step[Callable[Concatenate[A1, A2, StepContext, P], Async[T]]],
        __a1: A1,
        __a2: A2,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T: ...

    @overload
    def __call__(
        self: Step[Callable[Concatenate[A1, A2, StepContext, P], T]],
        __a1: A1,
        __a2: A2,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T: ...

    @overload
    def __call__(self: Step[Callable[P, Async[T]]], *args: P.args, **kwargs: P.kwargs) -> T: ...

    @overload
    def __call__(self: Step[Callable[P, T]], *args: P.args, **kwargs: P.kwargs) -> T: ...

    # `id=` and `after=` are the tracer's, not the function's, and a ParamSpec cannot gain
    # keyword parameters: a call that passes one is checked for them and its result only.
    # `after` is a step's name, a step's output (typed as that output: any type), or a list
    # or tuple of those.
    @overload
    def __call__(
        self: Step[Callable[..., Async[T]]], *args: Any, id: str, after: object = ..., **kwargs: Any
    ) -> T: ...

    @overload
    def __call__(
        self: Step[Callable[..., T]], *args: Any, id: str, after: object = ..., **kwargs: Any
    ) -> T: ...

    @overload
    def __call__(
        self: Step[Callable[..., Async[T]]], *args: Any, after: object, **kwargs: Any
    ) -> T: ...

    @overload
    def __call__(self: Step[Callable[..., T]], *args: Any, after: object, **kwargs: Any) -> T: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        tracer = active_tracer.get()
        if tracer is None:
            return self.func(*args, **kwargs)
        return tracer.add_call(self, args, dict(kwargs))

    def __repr__(self) -> str:
        return f"<Step {self.name}>"


class StepOptions(RetryOptions, total=False):
    """What `@step(...)` takes: a name, `checkpoint`, and a retry policy's fields."""

    name: str | None
    checkpoint: bool


@overload
def step(func: F, /) -> Step[F]: ...


@overload
def step(**options: Unpack[StepOptions]) -> Callable[[F], Step[F]]: ...


def step(
    func: F | None = None, /, **options: Unpack[StepOptions]
) -> Step[F] | Callable[[F], Step[F]]:
    """Make a function (`def` or `async def`) a pipeline step.

    Parameters with defaults can be overridden per request; the return value is the
    step's output, named with `Annotated[T, "name"]`, or several outputs with a tuple
    of those. A parameter typed `StepContext` is pipeserve's to pass, not the pipeline's:
    put it first, second or third (for the type checker), and pass the parameters after
    it by keyword.

    `retries=N`: a step that raises one of `retry_on` (by default `ConnectionError` and
    `TimeoutError`) runs again, up to N more times, after `retry_delay` seconds growing
    by `backoff` a retry (at most `max_delay`, jittered down by up to `jitter`), and
    never past its run's deadline. `checkpoint=False`: a batch run does not store this
    step's outputs (say, a value too large or not to be pickled), so a resumed run runs
    the step again.
    """

    def wrap(f: F) -> Step[F]:
        return Step(f, **options)

    if func is not None:
        return wrap(func)
    return wrap
