"""The public API is what `service.__all__` exports: this pins it."""

import service


def test_public_api_is_pinned() -> None:
    assert sorted(service.__all__) == [
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
    for name in service.__all__:
        assert hasattr(service, name)
