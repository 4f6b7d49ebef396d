"""The HTTP routes of runs: submit, follow, list, stream, cancel; and Prophecy's trigger API."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .errors import BadRequest, NotFound, ServiceError, ValidationFailed
from .records import render
from .responses import JSONBody
from .runs import RunManager
from .schema import InvokeRequestData, RequestModels, validate_json
from .serialize import dumps
from .store import ACTIVE, TERMINAL

STATUSES = (*ACTIVE, *TERMINAL)
MAX_PAGE = 500
# The longest Idempotency-Key accepted (the store's column).
MAX_KEY_LENGTH = 255
# Prophecy's run statuses: RUNNING until the end, then SUCCEEDED or ERROR.
_PROPHECY_STATUS = {
    "queued": "RUNNING",
    "running": "RUNNING",
    "succeeded": "SUCCEEDED",
    "failed": "ERROR",
    "cancelled": "ERROR",
    "timed_out": "ERROR",
}


class RunsAPI:
    def __init__(
        self, runs: RunManager, models: RequestModels, check_accepting: Callable[[], object]
    ) -> None:
        self.runs = runs
        self.models = models
        # Raises 503 while starting or draining, as for /invoke.
        self.check_accepting = check_accepting

    def routes(self) -> list[Route]:
        return [
            Route("/runs", self.submit, methods=["POST"]),
            Route("/runs", self.list, methods=["GET"]),
            Route("/runs/{run_id}", self.get, methods=["GET"], name="run"),
            Route("/runs/{run_id}/events", self.events, methods=["GET"]),
            Route("/runs/{run_id}/cancel", self.cancel, methods=["POST"]),
            Route("/api/trigger/pipeline", self.prophecy_trigger, methods=["POST"]),
            Route("/api/trigger/pipeline/{run_id}", self.prophecy_status, methods=["GET"]),
        ]

    async def submit(self, request: Request) -> Response:
        self.check_accepting()
        data, webhook_url = self.models.parse_submit(await request.body())
        key = request.headers.get("idempotency-key")
        if key is not None and not 0 < len(key) <= MAX_KEY_LENGTH:
            raise BadRequest(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters long")
        row, created = await self.runs.submit(data, webhook_url=webhook_url, idempotency_key=key)
        request.state.run_id = row["run_id"]
        status_url = str(request.url_for("run", run_id=row["run_id"]))
        headers = {"Location": status_url}
        if not created:
            headers["Idempotent-Replayed"] = "true"
        return JSONBody(
            {"run_id": row["run_id"], "status": row["status"], "status_url": status_url},
            status_code=202,
            headers=headers,
        )

    async def get(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        request.state.run_id = run_id
        return JSONBody(render(await self.runs.require(run_id)))

    async def list(self, request: Request) -> Response:
        query = request.query_params
        unknown = sorted(set(query) - {"status", "limit", "cursor"})
        if unknown:
            raise _query_error(unknown[0], "unknown query parameter", "extra_forbidden")
        status = query.get("status")
        if status is not None and status not in STATUSES:
            raise _query_error("status", f"must be one of {', '.join(STATUSES)}", "enum")
        limit = _int_param(query.get("limit"), "limit", default=50, low=1, high=MAX_PAGE)
        cursor = query.get("cursor") or None
        found, next_cursor = await self.runs.list_runs(status, limit, cursor)
        return JSONBody({"runs": found, "next_cursor": next_cursor})

    async def cancel(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        request.state.run_id = run_id
        row, done = await self.runs.cancel(run_id)
        return JSONBody(render(row), status_code=200 if done else 202)

    async def events(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        request.state.run_id = run_id
        last = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
        after = _int_param(last, "Last-Event-ID", default=0, low=0, high=None)
        await self.runs.require(run_id)  # a 404 before the stream starts

        async def stream() -> AsyncIterator[ServerSentEvent]:
            async for event in self.runs.events(run_id, after):
                yield ServerSentEvent(
                    data=dumps(event.data).decode(), event=event.kind, id=str(event.event_id)
                )

        return EventSourceResponse(stream(), ping=15, headers={"Cache-Control": "no-store"})

    # -- Prophecy's Trigger Pipeline API --------------------------------------------

    async def prophecy_trigger(self, request: Request) -> Response:
        try:
            self.check_accepting()
            trigger = validate_json(self.models.prophecy_trigger, await request.body())
            pipeline = self.runs.deployment.pipeline_name
            if trigger.pipelineName not in (pipeline, self.runs.deployment.name):
                raise NotFound(
                    f"pipeline '{trigger.pipelineName}' is not served here: this deployment "
                    f"serves '{pipeline}'"
                )
            data = InvokeRequestData(
                parameters=trigger.parameters.model_dump(),
                step_parameters={},
                until=trigger.processName,
                timeout=None,
            )
            client = {
                "system": "prophecy",
                **trigger.model_dump(include={"fabricId", "projectId", "branch", "version"},
                                     exclude_none=True),
            }  # fmt: skip
            row, _ = await self.runs.submit(data, client=client)
        except ServiceError as exc:
            return _prophecy_error(exc)
        request.state.run_id = row["run_id"]
        return JSONBody(
            {"success": True, "runId": row["run_id"], "msg": f"pipeline run {row['status']}"}
        )

    async def prophecy_status(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        request.state.run_id = run_id
        try:
            row = await self.runs.require(run_id)
        except ServiceError as exc:
            return _prophecy_error(exc)
        answer: dict[str, Any] = {
            "success": True,
            "runId": row["run_id"],
            "createdAt": _prophecy_time(row["created_at"]),
            "updatedAt": _prophecy_time(row.get("updated_at") or row["created_at"]),
            "pipelineName": row["pipeline_name"],
            "runStatus": _PROPHECY_STATUS[row["status"]],
        }
        client = row["request"].get("client") or {}
        for name in ("projectId", "fabricId"):
            if name in client:
                answer[name] = str(client[name])
        if answer["runStatus"] == "ERROR":
            error = row.get("error") or {}
            answer["errorMessage"] = error.get("message") or f"the run {row['status']}"
        return JSONBody(answer)


def _prophecy_time(ts: float) -> str:
    # Prophecy's form: ISO 8601 with microseconds, UTC, no offset.
    return datetime.fromtimestamp(ts, UTC).replace(tzinfo=None).isoformat(timespec="microseconds")


def _prophecy_error(exc: ServiceError) -> Response:
    # Prophecy's clients read `success` and `msg`; ours read `error`.
    return JSONBody(
        {"success": False, "msg": exc.message, "error": exc.body()},
        status_code=exc.status_code,
        headers=exc.headers,
    )


def _query_error(name: str, message: str, kind: str) -> ValidationFailed:
    return ValidationFailed(
        f"{name}: {message}", errors=[{"loc": ["query", name], "msg": message, "type": kind}]
    )


def _int_param(
    value: str | None, name: str, *, default: int | None, low: int, high: int | None
) -> Any:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise _query_error(name, "must be an integer", "int_parsing") from None
    if number < low or (high is not None and number > high):
        bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise _query_error(name, f"must be {bounds}", "range")
    return number
