"""The response models of the HTTP API: they define the documented schema (OpenAPI)."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from service.status import RunKind, RunStatus, StepStatus, WebhookStatus


class StepCheckpointInfo(BaseModel):
    formats: list[str] = Field(
        description="One per output: json, npy, parquet or pickle (see the README)."
    )
    bytes: int = Field(description="The checkpoint's size; its bytes are never shown.")


class StepRunInfo(BaseModel):
    status: StepStatus
    started_at: Optional[str] = None
    duration: Optional[float] = Field(None, description="Seconds, retries included.")
    tries: int = Field(0, description="Calls of the step: more than 1 after retries.")
    restored_from: Optional[int] = Field(
        None, description="A restored step: the attempt whose checkpoint it took."
    )
    checkpoint: Optional[StepCheckpointInfo] = None


class RunMetadata(BaseModel):
    deployment_name: str
    deployment_id: str
    pipeline_name: str
    pipeline_version: str
    run_id: str
    run_name: str
    parameters_used: dict[str, Any]
    started_at: str
    finished_at: str
    steps: dict[str, StepRunInfo]


class ErrorInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    message: str
    step: Optional[str] = None


class InvokeResponse(BaseModel):
    success: Literal[True]
    outputs: dict[str, Any]
    execution_time: float = Field(description="Seconds.")
    metadata: RunMetadata
    error: None = None


class InvokeFailure(BaseModel):
    success: Literal[False]
    outputs: None = None
    execution_time: Optional[float] = None
    metadata: Optional[RunMetadata] = None
    error: ErrorInfo


class ErrorResponse(BaseModel):
    success: Literal[False] = False
    error: ErrorInfo


class StepInfo(BaseModel):
    name: str
    is_async: bool
    upstream: list[str]
    parameters: list[str]
    outputs: list[str]


class PipelineInfo(BaseModel):
    deployment_name: str
    deployment_id: str
    pipeline_name: str
    version: str
    pipeserve_version: str
    description: str
    steps: list[StepInfo]
    edges: list[tuple[str, str]]
    parameters_schema: dict[str, Any]
    request_schema: dict[str, Any]
    outputs: list[str]
    ready: bool
    started_at: str
    uptime: float = Field(description="Seconds since the server process started.")


class HealthResponse(BaseModel):
    status: str
    store: Optional[Literal["ok", "degraded"]] = Field(
        None, description="/ready: `degraded` while the run store is out of reach."
    )


class WebhookAttempt(BaseModel):
    attempt: int
    at: str
    duration: float = Field(description="Seconds.")
    status_code: Optional[int] = None
    error: Optional[str] = None


class WebhookInfo(BaseModel):
    url: str
    status: Optional[WebhookStatus] = None
    attempts: list[WebhookAttempt]


class RunRecord(BaseModel):
    """A run, batch or `/invoke`; listings leave `outputs` out."""

    run_id: str
    kind: RunKind
    deployment_name: str
    pipeline_name: str
    pipeline_version: str
    status: RunStatus
    created_at: str
    started_at: Optional[str] = None
    updated_at: str
    finished_at: Optional[str] = None
    duration: Optional[float] = Field(None, description="Seconds.")
    attempt: int = Field(
        description="1 for the first execution; more after its process died or drained."
    )
    interrupted_attempts: list[dict[str, Any]] = Field(
        default_factory=list,
        description="The attempts that ended without the run ending: attempt, owner, "
        "started_at, ended_at, reason (lease_expired or drained).",
    )
    parameters_used: dict[str, Any]
    steps: dict[str, StepRunInfo]
    error: Optional[ErrorInfo] = None
    cancel_requested: bool
    webhook: Optional[WebhookInfo] = None
    outputs: Optional[dict[str, Any]] = Field(None, description="When the run succeeded.")
    outputs_omitted: bool = Field(False, description="Outputs too large to keep in the store.")


class RunList(BaseModel):
    runs: list[RunRecord]
    next_cursor: Optional[str] = Field(None, description="Pass as `cursor` for the next page.")


class RunAccepted(BaseModel):
    run_id: str
    status: RunStatus
    status_url: str


class RunRetried(RunAccepted):
    retry_of: str = Field(description="The run this one retries.")


class ProphecyTriggered(BaseModel):
    success: bool
    runId: Optional[str] = None
    msg: Optional[str] = None
    error: Optional[ErrorInfo] = None


class ProphecyRunStatus(BaseModel):
    success: bool
    runId: Optional[str] = None
    createdAt: Optional[str] = None
    updatedAt: Optional[str] = None
    pipelineName: Optional[str] = None
    runStatus: Optional[Literal["RUNNING", "SUCCEEDED", "ERROR"]] = None
    errorMessage: Optional[str] = None
    projectId: Optional[str] = None
    fabricId: Optional[str] = None
    msg: Optional[str] = None
    error: Optional[ErrorInfo] = None
