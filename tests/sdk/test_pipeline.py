"""The SDK: tracing a pipeline function, and the load-time errors that name the culprit."""

from __future__ import annotations

from typing import Annotated, Any

import pandas as pd
import pytest

from service import Pipeline, PipelineDefinitionError, StepContext, pipeline, run_pipeline, step
from service.sdk.pipeline import Constant, FromParameter, FromStep


@step
def source(n: int = 1) -> Annotated[int, "value"]:
    return n


@step
def double(value: int) -> int:
    return value * 2


@step
def pair(a: int, b: int) -> tuple[Annotated[int, "low"], Annotated[int, "high"]]:
    return min(a, b), max(a, b)


def test_tracing_wires_edges_parameters_and_literals() -> None:
    @pipeline
    def p(n: int = 5) -> Any:
        a = source(n)
        b = source(7)
        low, high = pair(a, b)
        return {"low": low, "doubled": double(high)}

    assert isinstance(p, Pipeline)
    assert [node.name for node in p.steps] == ["source", "source_2", "pair", "double"]
    assert p.steps[0].arguments["n"] == FromParameter("n")
    assert p.steps[1].arguments["n"] == Constant(7)
    assert p.steps[2].arguments == {"a": FromStep(0, 0), "b": FromStep(1, 0)}
    assert p.steps[3].arguments["value"] == FromStep(2, 1)
    assert p.outputs == {"low": FromStep(2, 0), "doubled": FromStep(3, 0)}
    assert p.edges() == [("source", "pair"), ("source_2", "pair"), ("pair", "double")]
    assert p.parameter_defaults() == {"n": 5}


def test_output_names_default_to_the_step_name_and_sinks_when_nothing_is_returned() -> None:
    @pipeline
    def p() -> None:
        double(source())

    assert p.outputs == {"double": FromStep(1, 0)}


def test_step_called_outside_a_pipeline_just_runs() -> None:
    assert double(21) == 42


def test_context_parameter_is_not_a_step_input() -> None:
    @step
    def uses_state(x: int, context: StepContext) -> int:
        return x

    assert set(uses_state.inputs) == {"x"}
    assert uses_state.context_parameter == "context"


def test_a_context_step_takes_its_inputs_by_position_or_name_but_never_the_context() -> None:
    @step
    def scaled(context: StepContext, value: int, factor: int = 1) -> int:
        return value * factor

    @pipeline
    def p(n: int = 1) -> Any:
        # As `Step.__call__` types it: the inputs after the context, by position or name.
        return {"thrice": scaled(source(n), factor=3), "twice": scaled(source(n), 2, id="two")}

    assert run_pipeline(p, {"n": 4}).outputs == {"thrice": 12, "twice": 8}
    with pytest.raises(PipelineDefinitionError, match="'context' is the StepContext"):

        @pipeline
        def passes_it() -> Any:
            return scaled(context=None, value=1)  # type: ignore[call-overload]


def test_cycle_is_named() -> None:
    with pytest.raises(
        PipelineDefinitionError, match=r"cycle among the steps \['double', 'source'\]"
    ):

        @pipeline
        def p() -> Any:
            return double(source(after="double"))


def test_after_naming_an_unknown_step() -> None:
    with pytest.raises(PipelineDefinitionError, match="after='ghost' names no step"):

        @pipeline
        def p() -> Any:
            return source(after="ghost")


def test_two_steps_with_one_name() -> None:
    other = step(name="source")(lambda n=1: n)
    with pytest.raises(PipelineDefinitionError, match="two different steps are named 'source'"):

        @pipeline
        def p() -> Any:
            return source(), other()


def test_duplicated_explicit_id() -> None:
    with pytest.raises(PipelineDefinitionError, match="the step name 'x' is used twice"):

        @pipeline
        def p() -> Any:
            return source(id="x"), source(id="x")


def test_pipeline_parameter_json_cannot_carry() -> None:
    with pytest.raises(PipelineDefinitionError, match="parameter 'frame' has the type DataFrame"):

        @pipeline
        def p(frame: pd.DataFrame) -> Any:
            return source()


def test_step_parameter_json_cannot_carry() -> None:
    @step
    def takes_frame(frame: pd.DataFrame | None = None) -> int:
        return 0

    with pytest.raises(PipelineDefinitionError, match="step 'takes_frame' parameter 'frame'"):

        @pipeline
        def p() -> Any:
            return takes_frame()


def test_clashing_output_names() -> None:
    with pytest.raises(PipelineDefinitionError, match="two outputs are named 'value'"):

        @pipeline
        def p() -> Any:
            return source(1), source(2)


def test_duplicate_names_in_a_step_tuple() -> None:
    with pytest.raises(
        PipelineDefinitionError, match=r"names the output\(s\) \['x'\] more than once"
    ):

        @step
        def twice() -> tuple[Annotated[int, "x"], Annotated[int, "x"]]:
            return 1, 2


def test_missing_step_argument() -> None:
    with pytest.raises(
        PipelineDefinitionError, match=r"step 'double': no value for the parameter\(s\) \['value'\]"
    ):

        @pipeline
        def p() -> Any:
            # The call mypy rejects: this checks the load-time error for it.
            return double()  # type: ignore[call-overload]


def test_bad_return_value() -> None:
    with pytest.raises(PipelineDefinitionError, match="returns int"):

        @pipeline
        def p() -> Any:
            source()
            return 3


def test_arithmetic_on_a_parameter_while_tracing() -> None:
    with pytest.raises(PipelineDefinitionError, match="failed while being traced"):

        @pipeline
        def p(n: int = 1) -> Any:
            return source(n + 1)


def test_handles_nested_in_containers_are_refused() -> None:
    @step
    def takes_list(values: list[int]) -> int:
        return sum(values)

    with pytest.raises(PipelineDefinitionError, match="nests a step output inside a container"):

        @pipeline
        def p() -> Any:
            return takes_list([source()])
