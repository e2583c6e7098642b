"""`/mcp`: the server's workflows as MCP tools over streamable HTTP, behind the API keys.

Every request is authenticated like a REST request (`server/auth.py`: bearer key, rate
limit): no or an invalid key answers 401 before any MCP message is read. The key decides
the caller: its tenant owns the runs a tool call starts (and is the only tenant whose runs
`agentmill://runs/{id}` shows), and its role decides what it may do: any role lists the
tools, starting a run (calling a tool) needs `operator`, as `POST /v1/runs` does.

The transport is stateless (no MCP session kept between requests): any server process
behind a load balancer can answer any request, and nothing outlives a request but the run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from agentmill.engine.mcp_tools import Caller, WorkflowTools, build_server
from agentmill.server.auth import Principal, authenticate
from agentmill.server.problems import ApiProblem, problem_response
from agentmill.store.keys import Role

if TYPE_CHECKING:
    from mcp.server.context import ServerRequestContext

    from agentmill.server.services import Services

__all__ = ["MCP_PATH", "McpEndpoint"]

MCP_PATH = "/mcp"
_PRINCIPAL = "agentmill.principal"
"""Where the authenticated key is left in the ASGI scope for the MCP handlers."""


class McpEndpoint:
    """The ASGI app at `/mcp`: authenticate, then hand over to the MCP session manager."""

    def __init__(self) -> None:
        self._manager: StreamableHTTPSessionManager | None = None

    def route(self) -> Route:
        # POST only: a stateless server has no stream for GET to open (405, as MCP allows).
        return Route(MCP_PATH, endpoint=self, methods=["POST"])

    @asynccontextmanager
    async def serving(self, services: Services) -> AsyncGenerator[None]:
        """Serve while the app runs (entered by the app's lifespan)."""
        config = str(services.config_path) if services.config_path is not None else None
        tools = WorkflowTools(
            services.engine,
            services.project.spec if services.project is not None else None,
            config_path=config,
            stopping=services.shutting_down,
        )
        server = build_server(tools, _caller_of)
        # No DNS-rebinding settings: the endpoint takes bearer keys, never cookies.
        manager = StreamableHTTPSessionManager(app=server, stateless=True)
        ready, stop = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(self._run(manager, ready, stop), name="agentmill-mcp")
        drain = _answers_before_streams_close()
        try:
            await _started(task, ready)
            yield
        finally:
            self._manager = None
            stop.set()
            await task
            drain()

    async def _run(
        self, manager: StreamableHTTPSessionManager, ready: asyncio.Event, stop: asyncio.Event
    ) -> None:
        """The manager's task group, entered and left in this one task: the app's lifespan
        may start and stop in different tasks (anyio refuses a scope left elsewhere)."""
        async with manager.run():
            self._manager = manager
            ready.set()
            await stop.wait()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            principal = await authenticate(request)
        except ApiProblem as exc:
            response = problem_response(exc.status, exc.slug, exc.detail, headers=exc.headers)
            await response(scope, receive, send)
            return
        if self._manager is None:
            response = problem_response(503, "unavailable", "the server is starting or stopping")
            await response(scope, receive, send)
            return
        scope[_PRINCIPAL] = principal
        await self._manager.handle_request(scope, receive, send)


def _answers_before_streams_close() -> Callable[[], None]:
    """Keep `sse-starlette` (the `mcp` transport's SSE) from cutting response streams at
    SIGTERM: a call waiting on its run answers with the run id when the server starts to
    stop (`Services.shutting_down`), and that answer must still reach the client. Every
    stream here ends with its answer (POST only), so none holds the shutdown open.
    Returns what restores the previous setting."""
    from sse_starlette.sse import AppStatus

    before = AppStatus.enable_automatic_graceful_drain
    AppStatus.disable_automatic_graceful_drain()

    def restore() -> None:
        AppStatus.enable_automatic_graceful_drain = before

    return restore


async def _started(task: asyncio.Task[None], ready: asyncio.Event) -> None:
    """Wait until the manager serves; raise what stopped it if it could not start."""
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if not ready.is_set():
        waiter.cancel()
        task.result()
        raise RuntimeError("the MCP session manager stopped while starting")


def _caller_of(ctx: ServerRequestContext[Any, Any]) -> Caller:
    request = ctx.request
    principal = request.scope.get(_PRINCIPAL) if isinstance(request, Request) else None
    if not isinstance(principal, Principal):
        raise RuntimeError("an MCP request reached a handler without an authenticated key")
    may_start = principal.role.allows(Role.OPERATOR)
    return Caller(
        tenant=principal.tenant,
        may_start=may_start,
        refusal=(
            f"this API key has the {principal.role} role; running a workflow needs "
            f"{Role.OPERATOR} or above (create one with `agentmill keys create --role operator`)"
        ),
        api_key_id=principal.key_id,
        trigger={"source": "mcp", "key": principal.key_id},
    )
