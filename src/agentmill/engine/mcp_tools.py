"""The project's workflows as MCP tools: one tool per workflow, a call starts a run and waits.

Shared by `agentmill mcp` (stdio, the embedded store) and the server's `/mcp` endpoint
(streamable HTTP, API keys). Both build the same low-level `mcp` server with
`build_server`; they differ only in who the caller is (`Caller`: tenant, whether it may
start runs), which the transport tells us per request.

A call validates and coerces its arguments as the REST API does (`Engine.submit` ->
`spec/inputs.py`), then follows the run's events until it ends. A run that stops at an
approval gate answers at once with the run id and the step (a person decides, then the
run's outputs are read from the resource `agentmill://runs/{id}`), rather than holding the
call open for as long as the gate may wait (days).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import mcp_types as types
from mcp.server.lowlevel.server import Server
from mcp.shared.exceptions import MCPError
from mcp_types.jsonrpc import INVALID_PARAMS

from agentmill import __version__
from agentmill.errors import AgentmillError, NotFoundError, shown_error
from agentmill.spec.models import InputSpec, ProjectSpec, WorkflowSpec
from agentmill.store import DEFAULT_TENANT, EventRecord, RunRecord, RunStatus

if TYPE_CHECKING:
    from mcp.server.context import ServerRequestContext

    from agentmill.engine.engine import Engine

__all__ = [
    "APPROVAL_EVENTS",
    "RUN_URI_PREFIX",
    "Caller",
    "WorkflowTools",
    "build_server",
    "input_schema",
    "tool_name",
]

logger = logging.getLogger("agentmill.mcp")

RUN_URI_PREFIX = "agentmill://runs/"
"""A run as an MCP resource: `agentmill://runs/{run_id}` (status, outputs, error)."""

APPROVAL_EVENTS = frozenset({"approval_requested"})
"""Events after which a call answers "waiting for approval" instead of waiting on (an
approval step's gate, or a tool call's gate `STEP#CALL` with the tool's name)."""

_FINISHING_EVENTS = frozenset({"step_finished", "step_failed", "step_skipped"})
_TOOL_NAME = re.compile(r"[^A-Za-z0-9_.-]")
_MAX_TOOL_NAME = 128
_JSON_TYPES = {
    "string": "string",
    "integer": "integer",
    "number": "number",
    "boolean": "boolean",
    "list": "array",
    "object": "object",
}
_OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "run_id": {"type": "string"},
        "status": {"type": "string"},
        "outputs": {"type": "object"},
        "step": {"type": "string"},
        "prompt": {"type": "string"},
        "tool": {"type": "string"},
    },
    "required": ["run_id", "status"],
}

Report = Callable[[float, float | None, str | None], Awaitable[None]]
"""Sends a progress notification: (steps done, steps in all, message)."""


@dataclass(frozen=True, kw_only=True)
class Caller:
    """Who calls: the tenant runs belong to, and whether the caller may start them."""

    tenant: str = DEFAULT_TENANT
    may_start: bool = True
    refusal: str = ""
    """Why a call is refused when `may_start` is false (e.g. the key's role)."""
    api_key_id: str | None = None
    trigger: dict[str, Any] = field(default_factory=lambda: {"source": "mcp"})


def tool_name(workflow: str) -> str:
    """The MCP tool name of a workflow: characters MCP does not allow become `_`."""
    return _TOOL_NAME.sub("_", workflow)[:_MAX_TOOL_NAME]


def input_schema(workflow: WorkflowSpec) -> dict[str, Any]:
    """The workflow's inputs as a JSON Schema object: types, defaults, descriptions, required."""
    properties = {name: _property(spec) for name, spec in workflow.inputs.items()}
    required = [name for name, spec in workflow.inputs.items() if spec.required]
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required
    return schema


def _property(spec: InputSpec) -> dict[str, Any]:
    kind = _JSON_TYPES[spec.type]
    found: dict[str, Any] = {"type": kind}
    if not spec.required:
        found["default"] = spec.default
        if spec.default is None:
            found["type"] = [kind, "null"]
    if spec.description:
        found["description"] = spec.description
    return found


class WorkflowTools:
    """Lists the workflows as tools and runs them for a caller."""

    def __init__(
        self,
        engine: Engine,
        project: ProjectSpec | None,
        *,
        config_path: str | None,
        stopping: asyncio.Event | None = None,
    ) -> None:
        self.engine = engine
        self.project = project
        self.config_path = config_path
        self.stopping = stopping
        """Set when the process stops: waiting calls answer with the run id at once."""
        self.workflows = _tool_names(project)
        """Tool name -> workflow name."""

    def tools(self) -> list[types.Tool]:
        if self.project is None:
            return []
        workflows = self.project.workflows
        return [
            types.Tool(
                name=name,
                description=workflows[workflow].description or f"Run the workflow {workflow!r}",
                input_schema=input_schema(workflows[workflow]),
                output_schema=_OUTPUT_SCHEMA,
            )
            for name, workflow in self.workflows.items()
        ]

    async def call(
        self, name: str, arguments: dict[str, Any] | None, caller: Caller, report: Report
    ) -> types.CallToolResult:
        """Start the workflow `name` with `arguments` and answer with how its run ended."""
        workflow = self.workflows.get(name)
        if workflow is None or self.project is None:
            known = ", ".join(sorted(self.workflows)) or "none"
            return _error(f"no tool {name!r} (tools: {known})")
        if not caller.may_start:
            return _error(caller.refusal or "this caller may not start runs")
        doing = f"the MCP tool {name!r}"
        try:
            run = await self.engine.submit(
                self.project,
                workflow,
                arguments or {},
                config_path=self.config_path,
                tenant=caller.tenant,
                trigger=caller.trigger,
                api_key_id=caller.api_key_id,
            )
        except Exception as exc:  # noqa: BLE001 - every failure becomes a tool error
            return _error(str(shown_error(exc, log=logger, doing=doing)))
        try:
            return await self._outcome(run, report)
        except Exception as exc:  # noqa: BLE001 - the run goes on; the caller learns its id
            shown = shown_error(exc, log=logger, doing=doing)
            return _error(f"run {run.id}: could not follow it to its end: {shown}")

    async def _outcome(self, run: RunRecord, report: Report) -> types.CallToolResult:
        waiting = await self._wait(run, report)
        if waiting is not None:
            return _waiting(run.id, waiting)
        final = await self.engine.store.get_run(run.id, tenant=run.tenant)
        return _ended(final)

    async def _wait(self, run: RunRecord, report: Report) -> EventRecord | None:
        """Follow the run until it ends (None) or stops at an approval (that event)."""
        follow = asyncio.ensure_future(self._follow(run, report))
        stop = asyncio.ensure_future(
            self.stopping.wait() if self.stopping else asyncio.Event().wait()
        )
        try:
            await asyncio.wait({follow, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not follow.done():
                follow.cancel()  # the process stops: answer now, the run stays
        return follow.result() if follow.done() and not follow.cancelled() else None

    async def _follow(self, run: RunRecord, report: Report) -> EventRecord | None:
        total = len(run.step_ids)
        # The run id first: a client whose call is cut off can still find the run.
        await report(0, total, f"run {run.id} started")
        finished: set[str] = set()
        async for event in self.engine.follow(run.id):
            if event.kind in APPROVAL_EVENTS:
                return event
            if event.kind in _FINISHING_EVENTS and event.step is not None:
                finished.add(event.step.partition("[")[0])
                done = min(len(finished), total)
                await report(done, total, f"{event.step}: {event.kind.removeprefix('step_')}")
        return None

    async def read_run(self, uri: str, caller: Caller) -> types.ReadResourceResult:
        """The run behind `agentmill://runs/{id}`, if it belongs to the caller's tenant."""
        run_id = uri.removeprefix(RUN_URI_PREFIX) if uri.startswith(RUN_URI_PREFIX) else ""
        try:
            if not run_id:
                raise NotFoundError(f"no resource {uri!r}: runs are {RUN_URI_PREFIX}<run id>")
            run = await self.engine.store.get_run(run_id, tenant=caller.tenant)
        except AgentmillError as exc:
            raise MCPError(INVALID_PARAMS, str(exc)) from None
        text = json.dumps(_run_json(run), default=str)
        contents = types.TextResourceContents(uri=uri, mime_type="application/json", text=text)
        return types.ReadResourceResult(contents=[contents])


def _tool_names(project: ProjectSpec | None) -> dict[str, str]:
    names: dict[str, str] = {}
    for workflow in project.workflows if project is not None else {}:
        name = tool_name(workflow)
        if name in names:
            logger.warning(
                "workflow %r is not served as an MCP tool: its tool name %r is taken by %r; "
                "rename one of them",
                workflow,
                name,
                names[name],
            )
            continue
        names[name] = workflow
    return names


def _run_json(run: RunRecord) -> dict[str, Any]:
    return {
        "run_id": run.id,
        "workflow": run.workflow,
        "status": str(run.status),
        "outputs": run.outputs,
        "error": run.error,
        "created_at": run.created_at,
        "finished_at": run.finished_at,
    }


def _result(structured: dict[str, Any], *, error: bool = False) -> types.CallToolResult:
    text = json.dumps(structured, default=str)
    return types.CallToolResult(
        content=[types.TextContent(text=text)], structured_content=structured, is_error=error
    )


def _error(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=message)], is_error=True)


def _waiting(run_id: str, event: EventRecord) -> types.CallToolResult:
    step = str(event.data.get("gate") or event.step or "")
    prompt = str(event.data.get("prompt", ""))
    structured: dict[str, Any] = {
        "run_id": run_id,
        "status": "waiting_for_approval",
        "step": step,
        "prompt": prompt,
        "next": (
            f"approve with `agentmill approve {run_id} {step}` (or the API), then read "
            f"{RUN_URI_PREFIX}{run_id} for the outputs"
        ),
    }
    if "tool" in event.data:
        structured["tool"] = str(event.data["tool"])
    return _result(structured)


def _ended(run: RunRecord) -> types.CallToolResult:
    if run.status is RunStatus.SUCCEEDED:
        return _result({"run_id": run.id, "status": str(run.status), "outputs": run.outputs or {}})
    if run.status is RunStatus.FAILED:
        return _error(f"run {run.id} failed: {run.error or 'no error recorded'}")
    if run.status is RunStatus.CANCELLED:
        return _error(f"run {run.id} was cancelled")
    if run.status is RunStatus.INTERRUPTED:
        return _error(
            f"run {run.id} was interrupted (its process stopped); "
            f"continue it with `agentmill runs resume {run.id}`"
        )
    return _result(
        {
            "run_id": run.id,
            "status": str(run.status),
            "next": f"the run continues; read {RUN_URI_PREFIX}{run.id} for its outputs later",
        }
    )


CallerOf = Callable[["ServerRequestContext[Any, Any]"], Caller]


def build_server(tools: WorkflowTools, caller_of: CallerOf) -> Server[Any]:
    """A low-level MCP server over `tools`; `caller_of` names the caller of each request."""

    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools.tools())

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        async def report(done: float, total: float | None, message: str | None) -> None:
            await ctx.session.report_progress(done, total, message)

        return await tools.call(params.name, params.arguments, caller_of(ctx), report)

    async def list_resources(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=[])

    async def list_templates(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        template = types.ResourceTemplate(
            name="run",
            uri_template=RUN_URI_PREFIX + "{run_id}",
            description="A run started by a tool: its status, outputs and error",
            mime_type="application/json",
        )
        return types.ListResourceTemplatesResult(resource_templates=[template])

    async def read_resource(
        ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        return await tools.read_run(params.uri, caller_of(ctx))

    return Server(
        "agentmill",
        version=__version__,
        instructions="Each tool runs one agentmill workflow and answers with its outputs.",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_templates,
        on_read_resource=read_resource,
    )
