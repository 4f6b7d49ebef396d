"""Tracing: a pipeline function called once, at load time, with stand-ins for its
parameters; each step call it makes is recorded, and returns handles to its outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pydantic

from service.errors import PipelineDefinitionError
from service.sdk.step import Step


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


@dataclass(slots=True)
class PendingCall:
    step: Step[Any]
    name: str
    arguments: dict[str, Any]
    after: list[str | OutputHandle]


@dataclass
class Tracer:
    """Records the step calls of one pipeline function call."""

    pipeline_name: str
    calls: list[PendingCall] = field(default_factory=list)
    names: dict[str, int] = field(default_factory=dict)
    step_objects: dict[str, Step[Any]] = field(default_factory=dict)

    def add_call(
        self, step: Step[Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> OutputHandle | tuple[OutputHandle, ...]:
        call_id = kwargs.pop("id", None) if "id" not in step.inputs else None
        after = kwargs.pop("after", None) if "after" not in step.inputs else None
        name = self._name_for(step, call_id)
        if step.context_parameter in kwargs:
            raise PipelineDefinitionError(
                f"step '{name}': '{step.context_parameter}' is the StepContext; "
                "pipeserve passes it, the pipeline must not"
            )
        try:
            # Without the StepContext: the pipeline passes the other inputs, by position
            # or by name, as the step's type (`Step.__call__`) says.
            bound = step.call_signature.bind_partial(*args, **kwargs)
        except TypeError as exc:
            raise PipelineDefinitionError(f"step '{name}': {exc}") from exc
        for arg_name, value in bound.arguments.items():
            if not isinstance(value, (OutputHandle, PipelineParameter)) and _holds_handle(value):
                raise PipelineDefinitionError(
                    f"step '{name}': argument '{arg_name}' nests a step output inside a "
                    "container; pass each step output as its own argument"
                )
        missing = [
            p.name for p in step.inputs.values() if p.required and p.name not in bound.arguments
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
        self.calls.append(PendingCall(step, name, dict(bound.arguments), after_list))
        self.names[name] = index
        handles = tuple(
            OutputHandle(index, i, name, output) for i, output in enumerate(step.output_names)
        )
        return handles[0] if len(handles) == 1 else handles

    def upstream(self) -> list[set[int]]:
        """Each call's upstream calls: those whose outputs it takes, and its `after=`."""
        names = [call.name for call in self.calls]
        upstream: list[set[int]] = []
        for call in self.calls:
            ups = {v.step_index for v in call.arguments.values() if isinstance(v, OutputHandle)}
            for dep in call.after:
                if isinstance(dep, OutputHandle):
                    ups.add(dep.step_index)
                elif isinstance(dep, str) and dep in self.names:
                    ups.add(self.names[dep])
                else:
                    raise PipelineDefinitionError(
                        f"step '{call.name}': after={dep!r} names no step of pipeline "
                        f"'{self.pipeline_name}' (its steps: {names})"
                    )
            upstream.append(ups)
        return upstream

    def _name_for(self, step: Step[Any], call_id: Any) -> str:
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


def check_json_type(annotation: Any, what: str) -> None:
    try:
        pydantic.TypeAdapter(annotation).json_schema()
    except Exception as exc:
        shown = getattr(annotation, "__name__", None) or repr(annotation)
        raise PipelineDefinitionError(
            f"{what} has the type {shown}, which JSON cannot carry; use a JSON type "
            "(str, int, float, bool, list, dict, a pydantic model) or pass it from a step"
        ) from exc


def toposort(names: list[str], upstream: list[set[int]], pipeline_name: str) -> list[int]:
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
