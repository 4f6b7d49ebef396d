"""The floor: bare Starlette apps doing each benchmark's work with nothing around it.

Each parses the same JSON body, calls the same step functions (`def` ones in Starlette's
threadpool, as Starlette runs sync code), and answers the same response shape as
pipeserve's /invoke (`success`, `outputs`, `execution_time`, `metadata` with `run_id`,
`run_name`, per-step records..., `error: null`). It uses orjson both ways, like pipeserve:
a floor with the stdlib json would be slower, and so a softer target.

    python -m bench.floor echo-def --port 8001
"""

from __future__ import annotations

import argparse
import asyncio
import time
import types
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import pipelines as bp

# A step's record: its name, when it started (epoch seconds) and how long it took.
StepRecord = tuple[str, float, float]
Handler = Callable[[dict[str, Any], Any], Awaitable[tuple[dict[str, Any], list[StepRecord]]]]

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def timed(name: str, func: Callable[..., Any], *args: Any) -> tuple[Any, StepRecord]:
    started = time.time()
    t0 = time.perf_counter()
    result = func(*args)
    return result, (name, started, time.perf_counter() - t0)


async def timed_async(
    name: str, func: Callable[..., Awaitable[Any]], *args: Any
) -> tuple[Any, StepRecord]:
    started = time.time()
    t0 = time.perf_counter()
    result = await func(*args)
    return result, (name, started, time.perf_counter() - t0)


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class Floor:
    """One workload's endpoint: `handler` maps (parameters, state) to (outputs, step records)."""

    def __init__(
        self,
        name: str,
        defaults: dict[str, Any],
        handler: Handler,
        on_init: Callable[[], Any] | None = None,
    ) -> None:
        self.name = name
        self.defaults = defaults
        self.handler = handler
        self.on_init = on_init
        self.state: Any = None
        self.deployment_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"floor:{name}"))

    async def invoke(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        parameters = {**self.defaults, **body.get("parameters", {})}
        run_id = str(uuid.uuid4())
        started = time.time()
        t0 = time.perf_counter()
        outputs, records = await self.handler(parameters, self.state)
        execution_time = time.perf_counter() - t0
        started_at = _utc(started)
        document = {
            "success": True,
            "outputs": outputs,
            "execution_time": execution_time,
            "metadata": {
                "deployment_name": self.name,
                "deployment_id": self.deployment_id,
                "pipeline_name": self.name,
                "pipeline_version": "000000000000",
                "run_id": run_id,
                "run_name": f"{self.name}-{started_at:%Y_%m_%d-%H_%M_%S_%f}",
                "status": "succeeded",
                "parameters_used": parameters,
                "started_at": started_at,
                "finished_at": _utc(time.time()),
                "steps": {
                    name: {
                        "status": "completed",
                        "started_at": _utc(at),
                        "duration": duration,
                        "tries": 1,
                    }
                    for name, at, duration in records
                },
            },
            "error": None,
        }
        return Response(orjson.dumps(document, option=_OPTIONS), media_type="application/json")

    async def ready(self, request: Request) -> Response:
        return Response(b'{"status":"ready"}', media_type="application/json")

    def app(self) -> Starlette:
        @asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            if self.on_init is not None:
                self.state = self.on_init()
            yield

        return Starlette(
            routes=[
                Route("/invoke", self.invoke, methods=["POST"]),
                Route("/ready", self.ready, methods=["GET"]),
            ],
            lifespan=lifespan,
        )


# -- the workloads' handlers -------------------------------------------------------------


def _add_ones(names: Iterable[str], x: int) -> tuple[int, list[StepRecord]]:
    records = []
    for name in names:
        x, record = timed(name, bp.add_one.func, x)
        records.append(record)
    return x, records


async def echo_def(parameters: dict[str, Any], state: Any) -> tuple[dict[str, Any], list[Any]]:
    y, records = await run_in_threadpool(_add_ones, ("add_one",), parameters["x"])
    return {"y": y}, records


async def echo_async(parameters: dict[str, Any], state: Any) -> tuple[dict[str, Any], list[Any]]:
    y, record = await timed_async("add_one", bp.add_one_async.func, parameters["x"])
    return {"y": y}, [record]


_CHAIN_NAMES = tuple(node.name for node in bp.chain20.steps)


async def chain20(parameters: dict[str, Any], state: Any) -> tuple[dict[str, Any], list[Any]]:
    y, records = await run_in_threadpool(_add_ones, _CHAIN_NAMES, parameters["x"])
    return {"y": y}, records


async def fanout(parameters: dict[str, Any], state: Any) -> tuple[dict[str, Any], list[Any]]:
    results = await asyncio.gather(
        *(
            timed_async(f"nap_{i}", bp.nap.func, parameters["x"], bp.NAP_SECONDS)
            for i in range(1, bp.FAN_OUT + 1)
        )
    )
    return {f"y{i}": y for i, (y, _) in enumerate(results, 1)}, [r for _, r in results]


def _score(rows: list[list[float]], model: Any) -> tuple[dict[str, Any], list[StepRecord]]:
    from pipelines import inference

    # The steps read only `context.state`; a bare namespace carries it.
    context = types.SimpleNamespace(state=model)
    batch, validated = timed("validate", inference.validate.func, rows, context)
    (labels, probabilities), predicted = timed("predict", inference.predict.func, batch, context)
    return {"labels": labels, "probabilities": probabilities}, [validated, predicted]


async def inference(parameters: dict[str, Any], state: Any) -> tuple[dict[str, Any], list[Any]]:
    return await run_in_threadpool(_score, parameters["rows"], state)


def _load_model() -> Any:
    from pipelines import inference

    return inference.load_model()


def _inference_defaults() -> dict[str, Any]:
    from pipelines import inference

    return inference.inference_pipeline.parameter_defaults()


FLOORS: dict[str, Callable[[], Floor]] = {
    "echo-def": lambda: Floor("echo", {"x": 0}, echo_def),
    "echo-async": lambda: Floor("echo", {"x": 0}, echo_async),
    "chain20": lambda: Floor("chain20", {"x": 0}, chain20),
    "fanout": lambda: Floor("fanout", {"x": 0}, fanout),
    "inference": lambda: Floor(
        "inference_pipeline", _inference_defaults(), inference, on_init=_load_model
    ),
}


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Serve a benchmark's floor app.")
    parser.add_argument("floor", choices=sorted(FLOORS))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    app = FLOORS[args.floor]().app()
    # pipeserve's own uvicorn settings (service/cli/server.py run_server), so only the app differs:
    # loop and http "auto" pick uvloop and httptools when installed, for both.
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level="info",
        log_config=None,
        access_log=False,
        lifespan="on",
        loop="auto",
        http="auto",
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
