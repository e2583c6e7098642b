"""The FastAPI application: lifespan (engine in the same process), middleware, routers."""

from __future__ import annotations

import gc
import time
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentmill import __version__
from agentmill.engine.engine import Engine
from agentmill.server.limits import BodySizeLimit, JsonDepthLimit, RateLimiter, StreamSlots
from agentmill.server.mcp import McpEndpoint
from agentmill.server.metrics import Metrics
from agentmill.server.problems import PROBLEM_RESPONSES, install_problem_handlers
from agentmill.server.routes import (
    approvals,
    costs,
    events,
    keys,
    ops,
    runs,
    webhooks,
    workflows,
)
from agentmill.server.services import Services
from agentmill.settings import Settings
from agentmill.spec.loader import LoadedProject
from agentmill.store.keys import KeyStore
from agentmill.store.sessions import SessionStore
from agentmill.web import OneTimeToken, install_dashboard

__all__ = ["API_PREFIX", "create_app"]

API_PREFIX = "/v1"
WEBHOOKS_PREFIX = f"{API_PREFIX}/webhooks/"

_DESCRIPTION = """\
Start, watch, approve and cancel durable agent workflow runs.

Authenticate with an API key: `Authorization: Bearer amk_...` (create one with
`agentmill keys create`). Errors are RFC 9457 problem+json documents.
"""


def create_app(
    settings: Settings,
    *,
    project: LoadedProject | None,
    config_path: Path | None = None,
    workers: int | None = 1,
    ui_token: OneTimeToken | None = None,
) -> FastAPI:
    """The API and the dashboard with an engine in the same process; `workers` 0 serves
    the API only, None runs the engine embedded (`agentmill ui`: it executes the runs it
    starts, like `agentmill run`); `ui_token` is a one-time sign-in link's token."""
    mcp = McpEndpoint()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncGenerator[None]:
        engine = Engine(settings)
        await engine.start(serve_workers=workers)
        metrics = Metrics()
        engine.bus.add_listener(metrics.observe_event)
        app.state.services = Services(
            settings=settings,
            engine=engine,
            project=project,
            config_path=config_path,
            keys=KeyStore(engine.store.engine),
            sessions=SessionStore(engine.store.engine, ttl=settings.session_ttl),
            limiter=RateLimiter(rate=settings.rate_limit, burst=settings.rate_burst),
            streams=StreamSlots(settings.max_streams_per_key),
            metrics=metrics,
        )
        # What start-up allocated (modules, the config, the engine) lives as long as the
        # server: out of the collector's generations, full collections stay short (measured
        # 160-340 ms pauses of requests at 10,000 runs before, 5 ms at most after). Given
        # back at the end, so a process that serves several apps in turn (tests) leaks none.
        gc.freeze()
        try:
            async with mcp.serving(app.state.services):
                yield
        finally:
            gc.unfreeze()
            app.state.services.shutting_down.set()
            await engine.stop(grace=settings.shutdown_grace)

    # Swagger UI and ReDoc with their assets served from the fastapi-offline package (under
    # /docs/assets), not from a CDN: the docs work on a machine with no internet.
    app = FastAPIOffline(
        title="agentmill",
        version=__version__,
        description=_DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url="/redoc",
        static_url="/docs/assets",
    )
    install_problem_handlers(app)
    app.add_middleware(JsonDepthLimit, exempt=(WEBHOOKS_PREFIX,))
    app.add_middleware(
        BodySizeLimit,
        default=settings.max_request_bytes,
        per_prefix={WEBHOOKS_PREFIX: settings.webhook_max_bytes},
    )
    app.add_middleware(RequestMetrics)
    app.include_router(ops.router)
    app.router.routes.append(mcp.route())  # the workflows as MCP tools (server/mcp.py)
    for module in (workflows, runs, events, approvals, costs, webhooks, keys):
        app.include_router(module.router, prefix=API_PREFIX, responses=PROBLEM_RESPONSES)
    app.state.serve_workers = workers  # shown on the dashboard's system page
    install_dashboard(app, ui_token=ui_token)
    return app


class RequestMetrics:
    """Times every HTTP request by route template (not raw path: ids would explode labels)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            _record(scope, status, time.perf_counter() - started)


def _record(scope: Scope, status: int, seconds: float) -> None:
    state = getattr(scope.get("app"), "state", None)
    found = getattr(state, "services", None)
    route = scope.get("route")
    if not isinstance(found, Services) or route is None:
        return
    template = getattr(route, "path", "other")
    if scope["path"].startswith(API_PREFIX + "/") and not template.startswith(API_PREFIX):
        template = API_PREFIX + template  # FastAPI keeps the route as declared, unprefixed
    found.metrics.requests.labels(scope["method"], template, str(status)).observe(seconds)
