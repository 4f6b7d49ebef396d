"""Find a pipeline from a `MODULE:ATTRIBUTE` spec, with one clear line when it cannot."""

from __future__ import annotations

import importlib

from service.errors import PipelineDefinitionError, PipeserveError
from service.sdk.pipeline import Pipeline


class PipelineLoadError(PipeserveError):
    """The spec names no loadable pipeline; the message is one line for the user."""


def load_pipeline(spec: str) -> Pipeline:
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise PipelineLoadError(
            f"'{spec}' is not a pipeline spec: write MODULE:PIPELINE, "
            "e.g. pipelines.training:training_pipeline"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise PipelineLoadError(
                f"cannot import module '{module_name}': no such module"
            ) from exc
        raise PipelineLoadError(f"cannot import module '{module_name}': {exc}") from exc
    except PipelineDefinitionError as exc:
        raise PipelineLoadError(f"pipeline in '{module_name}' is invalid: {exc}") from exc
    except Exception as exc:
        raise PipelineLoadError(
            f"importing module '{module_name}' failed: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        found = getattr(module, attribute)
    except AttributeError:
        raise PipelineLoadError(f"module '{module_name}' has no attribute '{attribute}'") from None
    if not isinstance(found, Pipeline):
        raise PipelineLoadError(
            f"'{spec}' is a {type(found).__name__}, not a pipeline: decorate it with @pipeline"
        )
    return found
