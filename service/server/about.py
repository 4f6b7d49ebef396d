"""What a server says about itself: /health, /ready, /info, /openapi.json, /metrics."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from service import __version__
from service.runs.records import iso
from service.server.lifecycle import PipelineService
from service.server.responses import JSONBody


class About:
    """The probes and the descriptions of one app; `openapi` is its document, as JSON."""

    def __init__(self, service: PipelineService, openapi: bytes) -> None:
        self.service = service
        self.openapi = openapi

    async def health(self, request: Request) -> Response:
        if self.service.init_error is not None:
            return JSONBody({"status": "failed"}, status_code=503)
        return JSONBody({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        service = self.service
        # The run store is not on /invoke's path: its outage is told here, not a 503 that
        # would take the pod out of the Service while it can still serve invocations.
        store = "degraded" if service.runs.health.degraded else "ok"
        if service.ready:
            return JSONBody({"status": "ready", "store": store})
        if service.draining:
            status = "draining"
        elif service.init_error is not None:
            status = "failed"
        else:
            status = "starting"
        return JSONBody(
            {"status": status, "store": store}, status_code=503, headers={"Retry-After": "1"}
        )

    async def info(self, request: Request) -> Response:
        return JSONBody(self.info_document())

    def info_document(self) -> dict[str, Any]:
        service = self.service
        pipeline = service.pipeline
        steps = [
            {
                "name": node.name,
                "is_async": node.step.is_async,
                "upstream": [pipeline.steps[u].name for u in node.upstream],
                "parameters": sorted(node.overridable),
                "outputs": list(node.step.output_names),
            }
            for node in pipeline.steps
        ]
        return {
            "deployment_name": service.deployment_name,
            "deployment_id": service.deployment_id,
            "pipeline_name": pipeline.name,
            "version": pipeline.version,
            "pipeserve_version": __version__,
            "description": pipeline.description,
            "steps": steps,
            "edges": pipeline.edges(),
            "parameters_schema": service.models.parameters_schema,
            "request_schema": service.models.request_schema,
            "outputs": list(pipeline.outputs),
            "ready": service.ready,
            "started_at": iso(service.started_at),
            "uptime": round(time.time() - service.started_at, 3),
        }

    async def openapi_document(self, request: Request) -> Response:
        return JSONBody(self.openapi)

    async def metrics(self, request: Request) -> Response:
        metrics = self.service.metrics
        return Response(metrics.render(), media_type=metrics.content_type)
