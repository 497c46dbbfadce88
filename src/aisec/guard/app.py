"""The guard over HTTP (Starlette, served by uvicorn): `POST /v1/predict`, `GET /healthz`, `GET /metrics`.

A request is answered in the event loop (the guard's steps and a small model take well under a millisecond);
large models want more workers, each a process with its own copy of the model, sharing limits and monitor state
through Redis. If the audit log cannot record a request, the client gets 503 and never the model's answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from aisec.guard.config import load_config
from aisec.guard.pipeline import Guard
from aisec.guard.service import build_guard

CONFIG_ENV = "AISEC_GUARD_CONFIG"
WORKERS_ENV = "AISEC_GUARD_WORKERS"
log = logging.getLogger("aisec.guard")


def create_app(guard: Guard) -> Starlette:
    """The ASGI application over a built guard."""

    async def predict(request: Request) -> Response:
        body = await request.body()
        try:
            given = request.headers.getlist("authorization")
            reply = guard.predict(given[0] if len(given) == 1 else None, body)  # two keys: neither is taken
        except Exception:  # the audit log could not record the request: nothing is released
            log.exception("guard: could not record a request in the audit log")
            return JSONResponse({"error": "the guard cannot record requests; try again later"}, 503)
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        return Response(
            json.dumps(reply.body, separators=(",", ":")),
            reply.status,
            headers=reply.headers,
            media_type="application/json",
        )

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": guard.model.source})

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(guard.metrics.text(), media_type="text/plain; version=0.0.4")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        guard.close()

    return Starlette(
        routes=[
            Route("/v1/predict", predict, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def app_from_environment() -> Starlette:
    """The application uvicorn's workers build (`aisec guard serve` sets the configuration's path)."""
    config = load_config(os.environ[CONFIG_ENV])
    return create_app(build_guard(config, workers=int(os.environ.get(WORKERS_ENV, "1"))))
