"""pipeserve: serve a pipeline of Python steps as a production HTTP service."""

__version__ = "0.1.0"

from .app import create_app
from .errors import PipelineDefinitionError, ServiceError
from .pipeline import Pipeline, pipeline
from .runner import run_pipeline
from .settings import Settings
from .step import Step, StepContext, step

__all__ = [
    "Pipeline",
    "PipelineDefinitionError",
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
