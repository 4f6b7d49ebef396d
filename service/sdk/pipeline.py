"""Pipelines: a function traced once at load time into a DAG of step calls."""

from __future__ import annotations

import hashlib
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Union

from service.errors import PipelineDefinitionError
from service.sdk.step import Parameter, Step, active_tracer
from service.sdk.tracing import (
    OutputHandle,
    PipelineParameter,
    Tracer,
    check_json_type,
    toposort,
)

# What a run resumed by another version of its pipeline does: fail, or start over.
VersionChange = Literal["fail", "restart"]


@dataclass(frozen=True, slots=True)
class FromStep:
    step_index: int
    output_index: int


@dataclass(frozen=True, slots=True)
class FromParameter:
    name: str


@dataclass(frozen=True, slots=True)
class Constant:
    """A literal passed in the pipeline function, or the step's own default."""

    value: Any


ArgSource = Union[FromStep, FromParameter, Constant]


@dataclass(frozen=True, slots=True)
class StepNode:
    """One call of a step in the DAG."""

    index: int
    name: str
    step: Step[Any]
    arguments: Mapping[str, ArgSource]
    upstream: tuple[int, ...]

    @property
    def overridable(self) -> dict[str, Any]:
        """Parameters a request may override, with their annotation: all not fed by a step."""
        return {
            name: self.step.inputs[name].annotation
            for name, source in self.arguments.items()
            if not isinstance(source, FromStep)
        }


class Pipeline:
    """A traced pipeline: its steps in topological order, parameters and outputs."""

    def __init__(
        self,
        func: Callable[..., Any],
        *,
        name: str | None = None,
        on_init: Callable[..., Any] | None = None,
        on_cleanup: Callable[..., Any] | None = None,
        version: str | None = None,
        retry_safe: bool = False,
        resume: bool = True,
        max_attempts: int = 3,
        on_version_change: VersionChange = "fail",
    ) -> None:
        self.func = func
        self.name = name or func.__name__
        self.on_init = on_init
        self.on_cleanup = on_cleanup
        self.retry_safe = retry_safe
        self.resume = resume
        if max_attempts < 1:
            raise PipelineDefinitionError(
                f"pipeline '{self.name}': max_attempts must be at least 1, not {max_attempts}"
            )
        self.max_attempts = max_attempts
        if on_version_change not in ("fail", "restart"):
            raise PipelineDefinitionError(
                f"pipeline '{self.name}': on_version_change is 'fail' or 'restart', "
                f"not {on_version_change!r}"
            )
        self.on_version_change = on_version_change
        self.parameters = self._read_parameters()
        self.steps, self.outputs = self._trace()
        self.steps_by_name = {node.name: node for node in self.steps}
        self.version = version or self._code_version()
        self.description = inspect.getdoc(func) or ""

    def _read_parameters(self) -> dict[str, Parameter]:
        try:
            hints = typing.get_type_hints(self.func, include_extras=True)
        except Exception as exc:
            raise PipelineDefinitionError(
                f"pipeline '{self.name}': cannot resolve its type hints: {exc}"
            ) from exc
        params: dict[str, Parameter] = {}
        for p in inspect.signature(self.func).parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise PipelineDefinitionError(
                    f"pipeline '{self.name}': *args and **kwargs are not supported"
                )
            annotation = hints.get(p.name, Any)
            check_json_type(annotation, f"pipeline '{self.name}' parameter '{p.name}'")
            params[p.name] = Parameter(p.name, annotation, p.default)
        return params

    def _trace(self) -> tuple[tuple[StepNode, ...], dict[str, FromStep]]:
        tracer = Tracer(self.name)
        token = active_tracer.set(tracer)
        try:
            returned = self.func(**{n: PipelineParameter(n) for n in self.parameters})
        except PipelineDefinitionError:
            raise
        except Exception as exc:
            raise PipelineDefinitionError(
                f"pipeline '{self.name}' failed while being traced: "
                f"{type(exc).__name__}: {exc} (the pipeline function may only call steps "
                "and pass their outputs on; it runs once, at load time)"
            ) from exc
        finally:
            active_tracer.reset(token)
        if not tracer.calls:
            raise PipelineDefinitionError(f"pipeline '{self.name}' calls no step")

        upstream = tracer.upstream()
        order = toposort([call.name for call in tracer.calls], upstream, self.name)
        position = {old: new for new, old in enumerate(order)}

        nodes: list[StepNode] = []
        for old in order:
            call = tracer.calls[old]
            arguments: dict[str, ArgSource] = {}
            for input_name, spec in call.step.inputs.items():
                value = call.arguments.get(input_name, spec.default)
                source: ArgSource
                if isinstance(value, OutputHandle):
                    source = FromStep(position[value.step_index], value.output_index)
                elif isinstance(value, PipelineParameter):
                    source = FromParameter(value.name)
                else:
                    source = Constant(value)
                    check_json_type(spec.annotation, f"step '{call.name}' parameter '{input_name}'")
                arguments[input_name] = source
            nodes.append(
                StepNode(
                    index=position[old],
                    name=call.name,
                    step=call.step,
                    arguments=arguments,
                    upstream=tuple(sorted(position[u] for u in upstream[old])),
                )
            )
        outputs = self._outputs(returned, position, nodes)
        return tuple(nodes), outputs

    def _outputs(
        self,
        returned: Any,
        position: dict[int, int],
        nodes: list[StepNode],
    ) -> dict[str, FromStep]:
        def source(handle: OutputHandle) -> FromStep:
            return FromStep(position[handle.step_index], handle.output_index)

        pairs: list[tuple[str, OutputHandle]]
        if returned is None:
            # No explicit return: every output that no other step consumes.
            consumed = {
                (s.step_index, s.output_index)
                for node in nodes
                for s in node.arguments.values()
                if isinstance(s, FromStep)
            }
            pairs = []
            for node in nodes:
                for i, output in enumerate(node.step.output_names):
                    if (node.index, i) not in consumed:
                        pairs.append((output, OutputHandle(node.index, i, node.name, output)))
            return self._unique_outputs(
                [(n, h) for n, h in pairs], lambda h: FromStep(h.step_index, h.output_index)
            )
        if isinstance(returned, OutputHandle):
            pairs = [(returned.output_name, returned)]
        elif isinstance(returned, (tuple, list)) and all(
            isinstance(h, OutputHandle) for h in returned
        ):
            pairs = [(h.output_name, h) for h in returned]
        elif isinstance(returned, dict) and all(
            isinstance(k, str) and isinstance(h, OutputHandle) for k, h in returned.items()
        ):
            pairs = list(returned.items())
        else:
            raise PipelineDefinitionError(
                f"pipeline '{self.name}' returns {type(returned).__name__}; return a step "
                "output, a tuple of step outputs, or a dict of name to step output"
            )
        return self._unique_outputs(pairs, source)

    def _unique_outputs(
        self,
        pairs: list[tuple[str, OutputHandle]],
        source: Callable[[OutputHandle], FromStep],
    ) -> dict[str, FromStep]:
        outputs: dict[str, FromStep] = {}
        for name, handle in pairs:
            if name in outputs:
                raise PipelineDefinitionError(
                    f"pipeline '{self.name}': two outputs are named '{name}'; name them "
                    'with Annotated[T, "name"] or return a dict of name to output'
                )
            outputs[name] = source(handle)
        return outputs

    def _code_version(self) -> str:
        digest = hashlib.sha256()
        for func in [self.func, *(node.step.func for node in self.steps)]:
            try:
                digest.update(inspect.getsource(func).encode())
            except (OSError, TypeError):
                digest.update(func.__qualname__.encode())
        return digest.hexdigest()[:12]

    def parameter_defaults(self) -> dict[str, Any]:
        return {n: p.default for n, p in self.parameters.items() if not p.required}

    def edges(self) -> list[tuple[str, str]]:
        return [(self.steps[u].name, node.name) for node in self.steps for u in node.upstream]

    def __call__(self, **parameters: Any) -> Any:
        raise TypeError(
            f"pipeline '{self.name}' is served, not called: run `pipeserve serve "
            "MODULE:PIPELINE`, or use service.run_pipeline() in tests"
        )

    def __repr__(self) -> str:
        return f"<Pipeline {self.name} steps={[n.name for n in self.steps]}>"


def downstream_of(pipeline: Pipeline, name: str) -> set[str]:
    """The step `name` and every step that depends on it, directly or not."""
    found = {pipeline.steps_by_name[name].index}
    for node in pipeline.steps:  # topological order: upstream steps come first
        if any(u in found for u in node.upstream):
            found.add(node.index)
    return {pipeline.steps[i].name for i in found}


class PipelineOptions(typing.TypedDict, total=False):
    """What `@pipeline(...)` takes: `Pipeline`'s keyword parameters, defaults there."""

    name: str | None
    on_init: Callable[..., Any] | None
    on_cleanup: Callable[..., Any] | None
    version: str | None
    retry_safe: bool
    resume: bool
    max_attempts: int
    on_version_change: VersionChange


@typing.overload
def pipeline(func: Callable[..., Any], /) -> Pipeline: ...


@typing.overload
def pipeline(
    **options: typing.Unpack[PipelineOptions],
) -> Callable[[Callable[..., Any]], Pipeline]: ...


def pipeline(
    func: Callable[..., Any] | None = None, /, **options: typing.Unpack[PipelineOptions]
) -> Pipeline | Callable[[Callable[..., Any]], Pipeline]:
    """Trace a pipeline function into a servable `Pipeline`.

    `on_init()` runs once per server process before it is ready; its return value is
    the shared state that steps read through their `StepContext`. `on_cleanup()` (or
    `on_cleanup(state)`) runs at shutdown.

    A batch run whose process died or was drained resumes: it is queued again and its
    next attempt restores the outputs of the steps that finished (their checkpoints)
    and runs the rest. `resume=False` turns that off: such a run then fails as
    `interrupted`, or with `retry_safe=True` runs again from its first step.
    `max_attempts`: a run interrupted that many times fails as `too_many_attempts`.
    `on_version_change`: a run whose checkpoints another version of the pipeline wrote
    fails as `version_changed` (`"fail"`), or runs again from its first step (`"restart"`).
    """

    def wrap(f: Callable[..., Any]) -> Pipeline:
        return Pipeline(f, **options)

    if func is not None:
        return wrap(func)
    return wrap
