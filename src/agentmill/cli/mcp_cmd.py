"""`agentmill mcp`: the config's workflows as MCP tools over stdio, for editors and agents.

Claude Code, Cursor and other MCP clients start this command and speak MCP on its stdin
and stdout. Runs execute in this process on the embedded store (as `agentmill run` does),
in the default tenant; stdout carries only the protocol: logs and messages go to stderr
(the `mcp` stdio transport also points file descriptor 1 at stderr while it serves, so
even a child process's stray output cannot corrupt the stream).
"""

from __future__ import annotations

from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentmill.cli.exits import EXIT_OK, err
from agentmill.settings import Settings

if TYPE_CHECKING:
    from mcp.server.context import ServerRequestContext

    from agentmill.engine.mcp_tools import Caller
    from agentmill.spec.loader import LoadedProject

__all__ = ["serve_mcp"]


def serve_mcp(config: Path) -> Coroutine[Any, Any, int]:
    """Check the config file (a broken one exits 2 before any protocol), then serve."""
    from agentmill.engine.project import load_checked

    settings = Settings()
    loaded = load_checked(config)
    return _serve(settings, loaded, config.resolve())


async def _serve(settings: Settings, loaded: LoadedProject, config: Path) -> int:
    from mcp.server.stdio import stdio_server

    from agentmill.cli.client import open_engine
    from agentmill.engine.mcp_tools import Caller, WorkflowTools, build_server

    local = Caller(trigger={"source": "mcp"})

    def caller_of(ctx: ServerRequestContext[Any, Any]) -> Caller:
        return local

    async with stdio_server() as (read, write), open_engine(settings, workers=True) as engine:
        tools = WorkflowTools(engine, loaded.spec, config_path=str(config))
        server = build_server(tools, caller_of)
        count = len(tools.workflows)
        err().print(f"agentmill mcp: serving {count} workflow(s) of {config} over stdio")
        await server.run(read, write, server.create_initialization_options())
    return EXIT_OK
