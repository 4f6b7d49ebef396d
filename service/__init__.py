"""pipeserve: serve a pipeline of Python steps as a production HTTP service.

The public API is `__all__`. Its names are imported on first use, so that importing a
light part of the package (`service.client`, `service.sdk`) does not load the server's
dependencies (Starlette, uvicorn, SQLAlchemy, prometheus-client).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The one version source: pyproject.toml reads it from here (`tool.setuptools.dynamic`).
__version__ = "0.1.0"

if TYPE_CHECKING:
    from service.errors import PipelineDefinitionError, PipeserveError, ServiceError
    from service.sdk.pipeline import Pipeline, pipeline
    from service.sdk.runner import run_pipeline
    from service.sdk.step import Step, StepContext, step
    from service.server.app import create_app
    from service.server.lifecycle import ProcessHooks
    from service.settings import Settings

# Each public name, and the module that defines it.
_EXPORTS = {
    "Pipeline": "service.sdk.pipeline",
    "PipelineDefinitionError": "service.errors",
    "PipeserveError": "service.errors",
    "ProcessHooks": "service.server.lifecycle",
    "ServiceError": "service.errors",
    "Settings": "service.settings",
    "Step": "service.sdk.step",
    "StepContext": "service.sdk.step",
    "create_app": "service.server.app",
    "pipeline": "service.sdk.pipeline",
    "run_pipeline": "service.sdk.runner",
    "step": "service.sdk.step",
}

__all__ = [
    "Pipeline",
    "PipelineDefinitionError",
    "PipeserveError",
    "ProcessHooks",
    "ServiceError",
    "Settings",
    "Step",
    "StepContext",
    "__version__",
    "create_app",
    "pipeline",
    "run_pipeline",
    "step",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'service' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
