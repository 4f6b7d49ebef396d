"""The requests a pipeline accepts: pydantic models built once from its signature, and
the parsing of `/invoke`, `/runs` and Prophecy's trigger bodies into `InvokeRequestData`."""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional, Union

import pydantic
from pydantic import BaseModel, ConfigDict, Field, Strict

from service.errors import BadRequest, ValidationFailed
from service.sdk.pipeline import Pipeline
from service.sdk.validation import (
    EdgeJsonSchema,
    integral_floats_only,
    json_depth_exceeds,
    refuse_large_ints,
    validate,
    validate_json,
    validation_error,
)
from service.settings import Settings

_STRICT = ConfigDict(extra="forbid")


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


# The edge's one pass over a body (C speed): digits become b"0", brackets b"[", all else
# b" ". Counting b"[" bounds the nesting; an integer beyond 64 bits has 19 digits or more.
_SCAN = bytes(
    0x30 if 0x30 <= i <= 0x39 else 0x5B if i in (0x5B, 0x7B) else 0x20 for i in range(256)
)


_LONG_NUMBER = b"0" * 19


# Types whose validated values are plain data: JSON-native, with no model inside.
_PLAIN_TYPES = (int, float, str, bool, bytes, type(None), list, dict, tuple, set, frozenset)


_PLAIN_CONTAINERS = (list, dict, tuple, set, frozenset, Union, types.UnionType)


def _is_plain(annotation: Any) -> bool:
    """True if a value of this type, validated from JSON, holds no model or dataclass.

    `model_dump()` of such a value only copies it: the request's parameters can be taken
    as validated. Anything not known to be plain (a model, a dataclass, a custom type)
    says False and keeps `model_dump()`, which turns models into dicts.
    """
    if annotation is Any or annotation in _PLAIN_TYPES:
        return True
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _is_plain(typing.get_args(annotation)[0])
    if origin is Literal:
        return True
    if origin in _PLAIN_CONTAINERS:
        return all(_is_plain(a) for a in typing.get_args(annotation) if a is not Ellipsis)
    return False


def _webhooks_off(schema: dict[str, Any]) -> None:
    schema.clear()
    schema.update(
        type="null",
        description="Null or left out: this server has no webhook secret "
        "(PIPESERVE_WEBHOOK_SECRET) to sign webhooks with.",
    )


def _user_named_model(name: str, fields: dict[str, Any]) -> type[BaseModel]:
    """A strict model whose fields have names users chose (parameters, steps).

    A name pydantic cannot take as a field (one of BaseModel's own, like `json`, `copy` or
    `validate`, a `model_` one, or a private `_` one) gets a neutral field name and keeps
    its own as the alias: requests, schemas and dumps (`by_alias=True`) all use the alias.
    """
    defined: dict[str, Any] = {}
    for i, (field, (annotation, default)) in enumerate(fields.items()):
        if field.startswith(("_", "model_")) or hasattr(BaseModel, field):
            defined[f"renamed_{i}"] = (Annotated[annotation, Field(alias=field)], default)
        else:
            defined[field] = (annotation, default)
    return pydantic.create_model(name, __config__=_STRICT, **defined)


def _renamed(model: type[BaseModel]) -> bool:
    return any(info.alias for info in model.model_fields.values())


def _model_name(pipeline_name: str, suffix: str) -> str:
    base = "".join(part.capitalize() for part in pipeline_name.replace("-", "_").split("_"))
    return f"{base}{suffix}"


def _steps_model(pipeline: Pipeline) -> type[BaseModel]:
    """`steps`: per step, the parameters a request may override (ZenML's form)."""
    step_fields: dict[str, Any] = {}
    for node in pipeline.steps:
        overridable = node.overridable
        # Optional to send, but never null: an override replaces the value the step gets.
        override_fields: dict[str, Any] = {
            name: (annotation, Field(None, json_schema_extra=_no_default))
            for name, annotation in overridable.items()
        }
        step_param_model = _user_named_model(
            _model_name(node.name, "StepParameters"), override_fields
        )
        step_config_model = pydantic.create_model(
            _model_name(node.name, "StepConfig"),
            __config__=_STRICT,
            parameters=(step_param_model, Field(default_factory=step_param_model)),
        )
        step_fields[node.name] = (Optional[step_config_model], None)
    return _user_named_model(_model_name(pipeline.name, "Steps"), step_fields)


@dataclass(frozen=True)
class InvokeRequestData:
    """A validated invocation request, as plain data for the runner."""

    parameters: dict[str, Any]
    step_parameters: dict[str, dict[str, Any]]
    until: str | None
    timeout: float | None


_DEFAULT_MAX_TIMEOUT: float = Settings.model_fields["max_timeout"].default


_DEFAULT_MAX_JSON_DEPTH: int = Settings.model_fields["max_json_depth"].default


class RequestModels:
    """The request models of one pipeline, built once at load time.

    `max_timeout` and `max_json_depth` are the server's limits: the models and the parsing
    of every JSON body (`/invoke`, `/runs`, Prophecy's trigger) hold to them alike.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        max_timeout: float = _DEFAULT_MAX_TIMEOUT,
        max_json_depth: int = _DEFAULT_MAX_JSON_DEPTH,
        webhooks: bool = True,
    ) -> None:
        self.pipeline = pipeline
        self.max_timeout = max_timeout
        self.max_json_depth = max_json_depth
        # Without a webhook secret a `webhook_url` is refused (422): the schema says so.
        self.webhooks = webhooks
        param_fields: dict[str, Any] = {}
        for spec in pipeline.parameters.values():
            default = ... if spec.required else spec.default
            param_fields[spec.name] = (spec.annotation, default)
        self.parameters = _user_named_model(_model_name(pipeline.name, "Parameters"), param_fields)
        # Decided once here: whether a request's validated parameters can be used as they
        # are (their fields have the parameters' names, and hold no model to dump).
        self._plain_parameters = not _renamed(self.parameters) and all(
            _is_plain(spec.annotation) for spec in pipeline.parameters.values()
        )

        self.has_required = any(spec.required for spec in pipeline.parameters.values())
        self.steps = _steps_model(pipeline)

        self.step_names = tuple(node.name for node in pipeline.steps)
        self.invoke = self._invoke_model()
        # /info shows these; pydantic builds a schema afresh at every call.
        self.parameters_schema = self.parameters.model_json_schema(schema_generator=EdgeJsonSchema)
        self.request_schema = self.invoke.model_json_schema(schema_generator=EdgeJsonSchema)
        self.submit = self._submit_model()
        self.prophecy_trigger = self._prophecy_model()

    def _invoke_model(self) -> type[BaseModel]:
        until_type: Any = Optional[Literal[self.step_names]]
        return pydantic.create_model(
            _model_name(self.pipeline.name, "InvokeRequest"),
            __config__=ConfigDict(
                extra="forbid",
                json_schema_extra={"example": {"parameters": self._example_parameters()}},
            ),
            parameters=self._parameters_field(),
            steps=(
                self.steps,
                Field(
                    default_factory=self.steps,
                    description="Per-step parameter overrides, in ZenML's form.",
                ),
            ),
            until=(
                until_type,
                Field(
                    None, description="Run only the steps this step needs, and return its outputs."
                ),
            ),
            timeout=(
                # A finite number (not a boolean, not a string), within the server's maximum.
                # Below 10 ms a deadline is shorter than a round trip: a sure 504, not a limit.
                Optional[Annotated[float, Strict(), Field(allow_inf_nan=False)]],
                Field(
                    None,
                    ge=0.01,
                    le=self.max_timeout,
                    description="Deadline in seconds, within the server's maximum.",
                ),
            ),
        )

    def _parameters_field(self) -> tuple[Any, Any]:
        # Required when the pipeline has required parameters: a clearer error when missing.
        if self.has_required:
            return self.parameters, Field(description="Pipeline parameters.")
        return self.parameters, Field(
            default_factory=self.parameters, description="Pipeline parameters."
        )

    def _submit_model(self) -> type[BaseModel]:
        # ZenML's snapshot and run template calls put steps (and parameters) here.
        optional_steps: Any = Optional[self.steps]
        optional_parameters: Any = Optional[self.parameters]
        run_configuration = pydantic.create_model(
            _model_name(self.pipeline.name, "RunConfiguration"),
            __config__=_STRICT,
            steps=(optional_steps, None),
            parameters=(optional_parameters, None),
        )
        return pydantic.create_model(
            _model_name(self.pipeline.name, "SubmitRequest"),
            __base__=self.invoke,
            webhook_url=(
                Optional[pydantic.HttpUrl],
                Field(
                    None,
                    description="POSTed the run record, signed, when the run ends.",
                    json_schema_extra=None if self.webhooks else _webhooks_off,
                ),
            ),
            run_configuration=(
                Optional[run_configuration],
                Field(None, description="ZenML's form: steps (and parameters) to run with."),
            ),
        )

    def _prophecy_model(self) -> type[BaseModel]:
        """Prophecy's Trigger Pipeline API body; its fabric, project, branch and version are
        kept on the run and echoed, since one deployment serves one pipeline."""
        identifier: Any = Optional[Union[int, str]]
        step_name: Any = Optional[Literal[self.step_names]]
        return pydantic.create_model(
            _model_name(self.pipeline.name, "ProphecyTrigger"),
            __config__=_STRICT,
            pipelineName=(str, Field(description="Must name this deployment's pipeline.")),
            fabricId=(identifier, None),
            projectId=(identifier, None),
            parameters=self._parameters_field(),
            branch=(Optional[str], None),
            version=(Optional[str], None),
            processName=(
                step_name,
                Field(None, description="Run only up to this step, as `until`."),
            ),
        )

    def _example_parameters(self) -> dict[str, Any]:
        example: dict[str, Any] = {}
        for name, default in self.pipeline.parameter_defaults().items():
            try:
                pydantic.TypeAdapter(type(default)).dump_python(default, mode="json")
            except Exception:
                continue
            example[name] = default
        return example

    def parse_invoke(self, body: bytes) -> InvokeRequestData:
        """Validate a raw `/invoke` body; raise 400 for bad JSON and 422 for a bad shape."""
        return self.from_model(self._validate_body(self.invoke, body), from_json=True)

    def _validate_body(self, model: type[BaseModel], body: bytes, strict: bool = True) -> Any:
        """A JSON body, held to the server's limits: the same on every entry point.

        400 past `max_json_depth`; 422 for the wrong shape (types as the schema says
        them, unless `strict` is off), and for an integer beyond 64 bits, which the run
        store could not keep. One pass over the body at C speed finds the candidates; only
        a body with a 19-digit run of digits has its validated values walked.
        """
        scan = body.translate(_SCAN)
        limit = self.max_json_depth
        if scan.count(b"[") > limit and json_depth_exceeds(body, limit):
            raise BadRequest(f"the JSON body nests deeper than the limit of {limit}")
        try:
            validated = validate_json(model, body, strict=strict, raw=True)
        except pydantic.ValidationError as exc:
            if not (strict and integral_floats_only(exc)):
                raise validation_error(exc) from None
            # JSON has one type of number: `6.0` is the integer 6, as the schema has it
            # (strict mode refuses it). All else was valid strictly, so lax mode converts
            # just those numbers; a float beyond 64 bits it refuses.
            validated = validate_json(model, body)
            refuse_large_ints(validated)
            return validated
        if _LONG_NUMBER in scan:
            refuse_large_ints(validated)
        return validated

    def parse_prophecy(self, body: bytes) -> Any:
        """Prophecy's trigger body. Its clients send parameters as text (`"3000007"` for an
        int), so its types are taken as pydantic's lax mode converts them."""
        return self._validate_body(self.prophecy_trigger, body, strict=False)

    def parse_invoke_object(self, data: Any) -> InvokeRequestData:
        return self.from_model(validate(self.invoke, data))

    def parse_submit(self, body: bytes) -> tuple[InvokeRequestData, str | None]:
        """A `POST /runs` body: the `/invoke` body, a `webhook_url`, or ZenML's form."""
        model = self._validate_body(self.submit, body)
        config = model.run_configuration
        if config is not None:
            # A null in run_configuration gives nothing: only a value clashes.
            given = {f for f in config.model_fields_set if getattr(config, f) is not None}
            clash = {"steps", "parameters"} & model.model_fields_set & given
            if clash:
                field = sorted(clash)[0]
                raise ValidationFailed(
                    f"{field}: given both at the top level and in run_configuration",
                    errors=[{"loc": ["run_configuration", field], "type": "conflict",
                             "msg": "given twice"}],
                )  # fmt: skip
            for field in config.model_fields_set:
                value = getattr(config, field)
                if value is not None:
                    setattr(model, field, value)
        url = str(model.webhook_url) if model.webhook_url is not None else None
        return self.from_model(model, from_json=True), url

    def from_model(self, model: Any, from_json: bool = False) -> InvokeRequestData:
        """Plain data for the runner; `from_json`: the model was validated from JSON text."""
        overrides: dict[str, dict[str, Any]] = {}
        fields = type(model.steps).model_fields
        for field in model.steps.model_fields_set:
            config = getattr(model.steps, field)
            if config is not None:
                values = config.parameters.model_dump(exclude_unset=True, by_alias=True)
                if values:
                    overrides[fields[field].alias or field] = values
        if from_json and self._plain_parameters:
            # Validation built these values afresh for this request: model_dump() would
            # only copy them again, all of a large body's nested lists included.
            parameters = dict(model.parameters.__dict__)
        else:
            parameters = model.parameters.model_dump(by_alias=True)
        return InvokeRequestData(
            parameters=parameters,
            step_parameters=overrides,
            until=model.until,
            timeout=model.timeout,
        )
