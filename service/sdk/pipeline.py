"""Pipelines: a function traced once at load time into a DAG of step calls."""

from __future__ import annotations

import hashlib
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

import pydantic

from service.errors import PipelineDefinitionError
from service.sdk.step import EMPTY, Step, active_tracer


@dataclass(frozen=True, slots=True)
class OutputHandle:
    """What a step call returns while tracing: a reference to one of its outputs."""

    step_index: int
    output_index: int
    step_name: str
    output_name: str


@dataclass(frozen=True, slots=True)
class PipelineParameter:
    """Stands in for a pipeline parameter while tracing."""

    name: str


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
    step: Step[Any, Any]
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


@dataclass(frozen=True, slots=True)
class PipelineParameterSpec:
    name: str
    annotation: Any
    default: Any = EMPTY

    @property
    def required(self) -> bool:
        return self.default is EMPTY


@dataclass(slots=True)
class _PendingCall:
    step: Step[Any, Any]
    name: str
    arguments: dict[str, Any]
    after: list[str | OutputHandle]


@dataclass
class Tracer:
    """Records the step calls of one pipeline function call."""

    pipeline_name: str
    calls: list[_PendingCall] = field(default_factory=list)
    names: dict[str, int] = field(default_factory=dict)
    step_objects: dict[str, Step[Any, Any]] = field(default_factory=dict)

    def add_call(
        self, step: Step[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> OutputHandle | tuple[OutputHandle, ...]:
        call_id = kwargs.pop("id", None) if "id" not in step.inputs else None
        after = kwargs.pop("after", None) if "after" not in step.inputs else None
        name = self._name_for(step, call_id)
        try:
            bound = step.signature.bind_partial(*args, **kwargs)
        except TypeError as exc:
            raise PipelineDefinitionError(f"step '{name}': {exc}") from exc
        if step.context_parameter in bound.arguments:
            raise PipelineDefinitionError(
                f"step '{name}': '{step.context_parameter}' is the StepContext; "
                "pipeserve passes it, the pipeline must not"
            )
        for arg_name, value in bound.arguments.items():
            if not isinstance(value, (OutputHandle, PipelineParameter)) and _holds_handle(value):
                raise PipelineDefinitionError(
                    f"step '{name}': argument '{arg_name}' nests a step output inside a "
                    "container; pass each step output as its own argument"
                )
        missing = [
            p.name
            for p in step.inputs.values()
            if not p.has_default and p.name not in bound.arguments
        ]
        if missing:
            raise PipelineDefinitionError(
                f"step '{name}': no value for the parameter(s) {missing}: pass a step "
                "output, a pipeline parameter or a literal"
            )
        after_list: list[str | OutputHandle] = []
        if after is not None:
            after_list = list(after) if isinstance(after, (list, tuple)) else [after]
        index = len(self.calls)
        self.calls.append(_PendingCall(step, name, dict(bound.arguments), after_list))
        self.names[name] = index
        handles = tuple(
            OutputHandle(index, i, name, output) for i, output in enumerate(step.output_names)
        )
        return handles[0] if len(handles) == 1 else handles

    def _name_for(self, step: Step[Any, Any], call_id: Any) -> str:
        owner = self.step_objects.get(step.name)
        if owner is not None and owner is not step:
            raise PipelineDefinitionError(
                f"pipeline '{self.pipeline_name}': two different steps are named "
                f"'{step.name}'; give one another name with @step(name=...)"
            )
        self.step_objects[step.name] = step
        if call_id is not None:
            if not isinstance(call_id, str) or not call_id:
                raise PipelineDefinitionError(f"step '{step.name}': id must be a non-empty string")
            if call_id in self.names:
                raise PipelineDefinitionError(
                    f"pipeline '{self.pipeline_name}': the step name '{call_id}' is used twice"
                )
            return call_id
        if step.name not in self.names:
            return step.name
        # The same step called again gets a numbered name, as in ZenML.
        n = 2
        while f"{step.name}_{n}" in self.names:
            n += 1
        return f"{step.name}_{n}"


def _holds_handle(value: Any) -> bool:
    if isinstance(value, (OutputHandle, PipelineParameter)):
        return True
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(_holds_handle(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_handle(v) for v in value.values())
    return False


def _check_json_type(annotation: Any, what: str) -> None:
    try:
        pydantic.TypeAdapter(annotation).json_schema()
    except Exception as exc:
        shown = getattr(annotation, "__name__", None) or repr(annotation)
        raise PipelineDefinitionError(
            f"{what} has the type {shown}, which JSON cannot carry; use a JSON type "
            "(str, int, float, bool, list, dict, a pydantic model) or pass it from a step"
        ) from exc


def _toposort(names: list[str], upstream: list[set[int]], pipeline_name: str) -> list[int]:
    remaining = [len(u) for u in upstream]
    downstream: list[list[int]] = [[] for _ in names]
    for i, ups in enumerate(upstream):
        for u in sorted(ups):
            downstream[u].append(i)
    ready = [i for i, n in enumerate(remaining) if n == 0]
    order: list[int] = []
    while ready:
        i = ready.pop(0)
        order.append(i)
        for d in downstream[i]:
            remaining[d] -= 1
            if remaining[d] == 0:
                ready.append(d)
    if len(order) != len(names):
        stuck = sorted(names[i] for i, n in enumerate(remaining) if n > 0)
        raise PipelineDefinitionError(
            f"pipeline '{pipeline_name}' has a cycle among the steps {stuck}"
        )
    return order


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
    ) -> None:
        self.func = func
        self.name = name or func.__name__
        self.on_init = on_init
        self.on_cleanup = on_cleanup
        self.retry_safe = retry_safe
        self.parameters = self._read_parameters()
        self.steps, self.outputs = self._trace()
        self.steps_by_name = {node.name: node for node in self.steps}
        self.version = version or self._code_version()
        self.description = inspect.getdoc(func) or ""

    def _read_parameters(self) -> dict[str, PipelineParameterSpec]:
        try:
            hints = typing.get_type_hints(self.func, include_extras=True)
        except Exception as exc:
            raise PipelineDefinitionError(
                f"pipeline '{self.name}': cannot resolve its type hints: {exc}"
            ) from exc
        params: dict[str, PipelineParameterSpec] = {}
        for p in inspect.signature(self.func).parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise PipelineDefinitionError(
                    f"pipeline '{self.name}': *args and **kwargs are not supported"
                )
            annotation = hints.get(p.name, Any)
            _check_json_type(annotation, f"pipeline '{self.name}' parameter '{p.name}'")
            params[p.name] = PipelineParameterSpec(p.name, annotation, p.default)
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

        names = [call.name for call in tracer.calls]
        upstream: list[set[int]] = []
        for call in tracer.calls:
            ups = {v.step_index for v in call.arguments.values() if isinstance(v, OutputHandle)}
            for dep in call.after:
                if isinstance(dep, OutputHandle):
                    ups.add(dep.step_index)
                elif isinstance(dep, str) and dep in tracer.names:
                    ups.add(tracer.names[dep])
                else:
                    raise PipelineDefinitionError(
                        f"step '{call.name}': after={dep!r} names no step of pipeline "
                        f"'{self.name}' (its steps: {names})"
                    )
            upstream.append(ups)
        order = _toposort(names, upstream, self.name)
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
                    _check_json_type(
                        spec.annotation, f"step '{call.name}' parameter '{input_name}'"
                    )
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
        outputs = self._outputs(returned, tracer, position, nodes)
        return tuple(nodes), outputs

    def _outputs(
        self,
        returned: Any,
        tracer: Tracer,
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


@typing.overload
def pipeline(func: Callable[..., Any], /) -> Pipeline: ...


@typing.overload
def pipeline(
    *,
    name: str | None = None,
    on_init: Callable[..., Any] | None = None,
    on_cleanup: Callable[..., Any] | None = None,
    version: str | None = None,
    retry_safe: bool = False,
) -> Callable[[Callable[..., Any]], Pipeline]: ...


def pipeline(
    func: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    on_init: Callable[..., Any] | None = None,
    on_cleanup: Callable[..., Any] | None = None,
    version: str | None = None,
    retry_safe: bool = False,
) -> Pipeline | Callable[[Callable[..., Any]], Pipeline]:
    """Trace a pipeline function into a servable `Pipeline`.

    `on_init()` runs once per server process before it is ready; its return value is
    the shared state that steps read through their `StepContext`. `on_cleanup()` (or
    `on_cleanup(state)`) runs at shutdown. `retry_safe=True` lets a run interrupted by a
    crash run again instead of being marked failed.
    """

    def wrap(f: Callable[..., Any]) -> Pipeline:
        return Pipeline(
            f,
            name=name,
            on_init=on_init,
            on_cleanup=on_cleanup,
            version=version,
            retry_safe=retry_safe,
        )

    if func is not None:
        return wrap(func)
    return wrap
