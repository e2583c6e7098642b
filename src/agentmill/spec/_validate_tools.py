"""Cross-reference checks of agents' `tools:` and the top-level `mcp:` section.

Names that must exist (built-ins, MCP servers, agents), delegation that must end (no agent
calls itself, directly or through others), command-line agents that cannot be tools, and
`module:function` syntax. Whether the function imports and the server's program exists
depends on the machine: `agentmill.agents.tools.checks` does that.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from agentmill.errors import ConfigProblem
from agentmill.spec.models import AgentSpec, ToolSpec
from agentmill.spec.tools import BUILTIN_TOOLS, tool_label
from agentmill.spec.validate import did_you_mean, find_cycles, join_hints

if TYPE_CHECKING:
    from agentmill.spec.loader import LoadedProject

__all__ = ["tool_problems"]

_FUNCTION = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}?")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def tool_problems(loaded: LoadedProject) -> list[ConfigProblem]:
    """Every problem of the agents' tools and of the MCP servers, in file order."""
    problems = _header_problems(loaded)
    for name, agent in loaded.spec.agents.items():
        problems += _AgentTools(loaded, name, agent).run()
    return problems + _delegation_cycles(loaded)


class _AgentTools:
    """The checks of one agent's `tools:` entries."""

    def __init__(self, loaded: LoadedProject, name: str, agent: AgentSpec) -> None:
        self.loaded = loaded
        self.name = name
        self.agent = agent
        self.problems: list[ConfigProblem] = []
        self.seen: dict[tuple[str, str], int] = {}

    def run(self) -> list[ConfigProblem]:
        self._check_workspace()
        for position, tool in enumerate(self.agent.tools):
            self._check_tool(position, tool)
        return self.problems

    def _add(self, message: str, *parts: str | int, hint: str | None = None) -> None:
        where = ("agents", self.name, *parts)
        self.problems.append(self.loaded.problem(message, *where, hint=hint))

    def _check_workspace(self) -> None:
        """`workdir` and `repo` of an llm agent serve its tools only."""
        if self.agent.runtime != "llm" or self.agent.tools:
            return
        for key, default in (("workdir", None), ("repo", ".")):
            if getattr(self.agent, key) != default:
                message = f"agent '{self.name}' sets `{key}` but has no tools that would use it"
                hint = f"add `tools:` (e.g. [read_file, list_files]) or remove `{key}`"
                self._add(message, key, hint=hint)

    def _check_tool(self, position: int, tool: ToolSpec) -> None:
        at = ("tools", position)
        if tool.builtin is not None:
            self._check_builtin(tool.builtin, at)
        elif tool.mcp is not None:
            self._check_mcp(tool.mcp, at)
        elif tool.function is not None:
            self._check_function(tool.function, at)
        elif tool.agent is not None:
            self._check_agent(tool.agent, at)
        else:
            return  # an entry that did not validate: already reported
        self._check_repeat(position, tool)

    def _check_builtin(self, builtin: str, at: tuple[str, int]) -> None:
        if builtin not in BUILTIN_TOOLS:
            hint = join_hints(
                did_you_mean(builtin, BUILTIN_TOOLS), f"built-in tools: {', '.join(BUILTIN_TOOLS)}"
            )
            message = f"agent '{self.name}' uses unknown built-in tool '{builtin}'"
            self._add(message, *at, "builtin", hint=hint)

    def _check_mcp(self, server: str, at: tuple[str, int]) -> None:
        declared = self.loaded.spec.mcp
        if server in declared:
            return
        known = f"declared servers: {', '.join(declared)}" if declared else None
        declare = f"declare it at the top level: mcp: {{{server}: {{command: [program, ...]}}}}"
        hint = join_hints(did_you_mean(server, declared), known) or declare
        self._add(f"agent '{self.name}' uses unknown MCP server '{server}'", *at, "mcp", hint=hint)

    def _check_function(self, target: str, at: tuple[str, int]) -> None:
        if _FUNCTION.match(target):
            return
        message = f"agent '{self.name}': '{target}' is not a module:function reference"
        hint = "write module:function, e.g. project_tools:lookup_ticket (a module importable "
        hint += "from the config file's directory)"
        self._add(message, *at, "function", hint=hint)

    def _check_agent(self, target: str, at: tuple[str, int]) -> None:
        agents = self.loaded.spec.agents
        where = (*at, "agent")
        if target == self.name:
            hint = "an agent cannot be its own tool; delegate to another agent"
            self._add(f"agent '{self.name}' delegates to itself", *where, hint=hint)
        elif target not in agents:
            known = f"known agents: {', '.join(agents)}"
            hint = join_hints(did_you_mean(target, agents), known)
            message = f"agent '{self.name}' uses unknown agent '{target}' as a tool"
            self._add(message, *where, hint=hint)
        elif agents[target].runtime == "cli":
            message = f"agent '{self.name}' uses command-line agent '{target}' as a tool"
            hint = "only llm agents can be tools; run a command-line agent in a step of its own"
            self._add(message, *where, hint=hint)

    def _check_repeat(self, position: int, tool: ToolSpec) -> None:
        """Two entries giving the model the same tool names: pydantic-ai refuses the clash."""
        key = (tool_label(tool), tool.prefix or "")
        if key not in self.seen:
            self.seen[key] = position
            return
        first = self.loaded.line_of("agents", self.name, "tools", self.seen[key])
        label = tool_label(tool)
        hint = f"list it once (the first is at line {first})"
        if tool.mcp is not None:
            hint += ", or give each entry its own `prefix`"
        self._add(f"agent '{self.name}' lists tool '{label}' twice", "tools", position, hint=hint)


def _delegation_cycles(loaded: LoadedProject) -> list[ConfigProblem]:
    """Agents that call each other in a ring (a self-call is reported by `_check_agent`)."""
    agents = loaded.spec.agents
    graph = {
        name: [t.agent for t in agent.tools if t.agent in agents and t.agent != name]
        for name, agent in agents.items()
    }
    problems: list[ConfigProblem] = []
    for cycle in find_cycles(graph):
        first, second = cycle[0], cycle[1]
        position = next(i for i, t in enumerate(agents[first].tools) if t.agent == second)
        message = f"agents delegate to each other in a cycle: {' -> '.join(cycle)}"
        hint = "each arrow means 'has as a tool'; remove one of these `agent:` tools"
        where = ("agents", first, "tools", position, "agent")
        problems.append(loaded.problem(message, *where, hint=hint))
    return problems


def _header_problems(loaded: LoadedProject) -> list[ConfigProblem]:
    """`${NAME}` placeholders in MCP headers must name a variable and be closed."""
    problems: list[ConfigProblem] = []
    for server, spec in loaded.spec.mcp.items():
        for header, value in (spec.headers or {}).items():
            for match in _PLACEHOLDER.finditer(value):
                if match.group(0).endswith("}") and _ENV_NAME.match(match.group(1)):
                    continue
                message = f"MCP server '{server}': header '{header}' has a bad placeholder "
                message += f"'{match.group(0)}'"
                hint = "write ${NAME} with NAME an environment variable, e.g. ${GITHUB_TOKEN}"
                at = ("mcp", server, "headers", header)
                problems.append(loaded.problem(message, *at, hint=hint))
    return problems
