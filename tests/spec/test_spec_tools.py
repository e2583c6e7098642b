"""Tools and MCP servers in the config: the format, its file:line errors, and the checks of
this machine (function tools that import, MCP programs on PATH) run by validate and run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import TypeAdapter

from agentmill.engine.project import tool_problems
from agentmill.errors import ConfigError, ConfigProblem
from agentmill.spec.loader import load_project
from agentmill.spec.models import McpServerSpec, ToolSpec

ROOT = Path(__file__).resolve().parents[2]

VALID = """\
mcp:
  git:
    command: [python, -m, mcp_server_git, --repository, .]
    env: [GIT_AUTHOR_NAME]
    timeout: 30s
    approve: [git_commit, "git_add*"]
  search:
    url: https://mcp.example.com/mcp
    headers: {Authorization: "Bearer ${SEARCH_TOKEN}"}
agents:
  summarizer:
    instructions: Summarise a text.
  reviewer:
    workdir: .
    max_turns: 5
    max_tool_calls: 12
    tools:
      - read_file
      - builtin: http_request
        allow: [api.github.com, "*.example.com"]
      - {builtin: run_command, allow: [pytest, git], timeout: 2m}
      - mcp: git
        include: ["git_*"]
        exclude: [git_reset]
        prefix: repo_
        approve: [git_commit]
      - mcp: search
      - function: project_tools:lookup_ticket
        approve: true
      - agent: summarizer
        description: Summarise a text
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agentmill.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def found(tmp_path: Path, text: str, *, checked: bool = False) -> list[tuple[int | None, str]]:
    """(line, message) of every problem; `checked` adds the checks of this machine."""
    return [(p.line, p.message) for p in problems_of(tmp_path, text, checked=checked)]


def problems_of(tmp_path: Path, text: str, *, checked: bool = False) -> list[ConfigProblem]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_project(path, checks=tool_problems if checked else None)
    return info.value.problems


def test_a_file_with_every_kind_of_tool_loads(tmp_path: Path) -> None:
    spec = load_project(write(tmp_path, VALID)).spec
    git, search = spec.mcp["git"], spec.mcp["search"]
    assert git.command == ["python", "-m", "mcp_server_git", "--repository", "."]
    assert (git.timeout, git.env, git.url) == (30.0, ["GIT_AUTHOR_NAME"], None)
    assert git.approve == ["git_commit", "git_add*"]
    assert search.headers == {"Authorization": "Bearer ${SEARCH_TOKEN}"}
    assert search.timeout == 60.0
    assert search.approve is False
    reviewer = spec.agents["reviewer"]
    assert (reviewer.max_turns, reviewer.max_tool_calls, reviewer.workdir) == (5, 12, ".")
    read, http, command, repo, _, function, agent = reviewer.tools
    assert read == ToolSpec(builtin="read_file")
    assert http.allow == ["api.github.com", "*.example.com"]
    assert command.timeout == 120.0
    assert (repo.mcp, repo.include, repo.exclude, repo.prefix) == (
        "git",
        ["git_*"],
        ["git_reset"],
        "repo_",
    )
    assert function.function == "project_tools:lookup_ticket"
    assert function.approve is True
    assert read.approve is None  # no rule of its own: the server's, else no approval
    assert (agent.agent, agent.description) == ("summarizer", "Summarise a text")


def test_entries_survive_a_round_trip_through_json(tmp_path: Path) -> None:
    """Run snapshots store the spec as JSON: what loaded must load again, however dumped."""
    spec = load_project(write(tmp_path, VALID)).spec
    for agent in spec.agents.values():
        for tool in agent.tools:
            assert ToolSpec.model_validate(tool.model_dump(mode="json")) == tool
            assert ToolSpec.model_validate(tool.model_dump(exclude_unset=True)) == tool
    for server in spec.mcp.values():
        assert McpServerSpec.model_validate(server.model_dump(mode="json")) == server


def test_defaults_of_an_llm_agent(tmp_path: Path) -> None:
    agent = load_project(write(tmp_path, "agents: {a: {}}\n")).spec.agents["a"]
    assert agent.tools == []
    assert (agent.max_turns, agent.max_tool_calls, agent.workdir) == (20, 50, None)


def test_the_json_schema_accepts_the_short_form_and_refuses_a_typo() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    schema = TypeAdapter(list[ToolSpec]).json_schema()
    tools = yaml.safe_load(VALID)["agents"]["reviewer"]["tools"]
    tools[2].pop("timeout")  # durations ("2m") are numbers in the schema, as everywhere
    jsonschema.validate(tools, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([*tools, {"bultin": "read_file"}], schema)


def test_models_refuse_what_the_file_would(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one of"):
        ToolSpec.model_validate({"builtin": "read_file", "mcp": "git"})
    with pytest.raises(ValueError, match="needs one of `command` and `url`"):
        McpServerSpec.model_validate({})


SCHEMA_CASES = [
    pytest.param(
        "tools: [{allow: [x]}]",
        "tool '#1' of agent 'a': a tool is exactly one of `builtin`, `mcp`, `function` or "
        "`agent`, this one has none of them",
        "use one entry per tool, e.g. `- read_file` or `- mcp: git`",
        id="no-kind",
    ),
    pytest.param(
        "tools: [{builtin: read_file, agent: b}]",
        "tool 'read_file' of agent 'a': a tool is exactly one of `builtin`, `mcp`, `function` "
        "or `agent`, this one has `builtin` and `agent`",
        "use one entry per tool, e.g. `- read_file` or `- mcp: git`",
        id="two-kinds",
    ),
    pytest.param(
        "tools: [http_request]",
        "tool 'http_request' of agent 'a': http_request needs `allow`, the hosts it may reach",
        "use e.g. `{builtin: http_request, allow: [api.github.com, '*.example.com']}`",
        id="http-without-allow",
    ),
    pytest.param(
        "tools: [{builtin: run_command, allow: []}]",
        "tool 'run_command' of agent 'a': run_command needs `allow`, the programs it may run",
        "use e.g. `{builtin: run_command, allow: [pytest]}`",
        id="command-with-empty-allow",
    ),
    pytest.param(
        "tools: [{builtin: http_request, allow: ['https://api.github.com']}]",
        "tool 'http_request' of agent 'a': `allow` of http_request lists host names, not "
        "addresses ('https://api.github.com')",
        "use e.g. api.github.com or '*.example.com'",
        id="url-in-allow",
    ),
    pytest.param(
        "tools: [{builtin: read_file, allow: [x]}]",
        "tool 'read_file' of agent 'a': `allow` only applies to http_request and run_command: "
        "remove it",
        None,
        id="allow-on-a-file-tool",
    ),
    pytest.param(
        "tools: [{builtin: read_file, prefix: x_, include: [a]}]",
        "tool 'read_file' of agent 'a': `include`, `prefix` only apply to MCP servers "
        "(`mcp:` entries): remove them",
        None,
        id="mcp-options-on-a-builtin",
    ),
    pytest.param(
        "tools: [{builtin: read_file, description: x}]",
        "tool 'read_file' of agent 'a': `description` only applies to `function:` and "
        "`agent:` tools: remove it",
        None,
        id="description-on-a-builtin",
    ),
    pytest.param(
        "tools: [{function: 'm:f', approve: [f]}]",
        "tool 'function: m:f' of agent 'a': a list of globs in `approve` picks tools of an MCP "
        "server",
        "use `approve: true` for this tool",
        id="approve-globs-on-a-function",
    ),
    pytest.param(
        "tools: [3]",
        "tool '#1' of agent 'a': a tool is a built-in's name or a mapping, got int",
        "use e.g. `- read_file`, `- mcp: git` or `- function: module:function`",
        id="not-a-tool",
    ),
    pytest.param(
        "{runtime: cli, command: [x], tools: [read_file]}",
        "agent 'a': 'tools' only apply to agents with runtime: llm",
        None,
        id="tools-on-a-cli-agent",
    ),
    pytest.param(
        "max_tool_calls: 0",
        "'max_tool_calls' in agent 'a' must be greater than 0, got 0",
        None,
        id="no-tool-calls",
    ),
]


@pytest.mark.parametrize(("agent", "message", "hint"), SCHEMA_CASES)
def test_tool_entry_errors(tmp_path: Path, agent: str, message: str, hint: str | None) -> None:
    inline = agent.startswith("{")
    body = f" {agent}" if inline else f"\n    {agent}"
    [problem] = problems_of(tmp_path, f"agents:\n  b: {{}}\n  a:{body}\n")
    line = 3 if inline else 4
    assert (problem.line, problem.message, problem.hint) == (line, message, hint)


SERVER_CASES = [
    pytest.param(
        "{}",
        "MCP server 's': an MCP server needs one of `command` and `url`",
        "use `command: [program, arg, ...]` for a local server over stdio, or `url: https://...` "
        "for streamable HTTP",
        id="neither",
    ),
    pytest.param(
        "{command: [x], url: 'http://h/mcp'}",
        "MCP server 's': an MCP server has both `command` and `url`",
        "use `command: [program, arg, ...]` for a local server over stdio, or `url: https://...` "
        "for streamable HTTP",
        id="both",
    ),
    pytest.param(
        "{command: [x], headers: {A: b}}",
        "MCP server 's': `headers` only apply to servers with a `url`",
        "use `env` to pass variables to a stdio server",
        id="headers-on-stdio",
    ),
    pytest.param(
        "{url: 'http://h/mcp', env: [TOKEN], cwd: .}",
        "MCP server 's': `env` and `cwd` only apply to servers with a `command`",
        "use `headers` to pass values to an HTTP server",
        id="env-on-http",
    ),
    pytest.param(
        "{url: 'ftp://h/mcp'}",
        "MCP server 's': the url 'ftp://h/mcp' is not an http(s) address",
        "use http://host:port/path or https://...",
        id="not-http",
    ),
    pytest.param(
        "{command: [x], env: ['A-B']}",
        "MCP server 's': 'A-B' in `env` is not a variable name",
        "use names like GITHUB_TOKEN",
        id="bad-env-name",
    ),
    pytest.param(
        "{command: []}",
        "'command' in MCP server 's' must not be empty",
        None,
        id="empty-command",
    ),
]


@pytest.mark.parametrize(("server", "message", "hint"), SERVER_CASES)
def test_server_errors(tmp_path: Path, server: str, message: str, hint: str | None) -> None:
    [problem] = problems_of(tmp_path, f"version: 1\nmcp:\n  s: {server}\n")
    assert (problem.line, problem.message, problem.hint) == (3, message, hint)


def test_cross_references_are_all_reported_at_their_lines(tmp_path: Path) -> None:
    text = """\
    mcp:
      github: {url: 'https://api.example.com/mcp'}
    agents:
      coder: {runtime: cli, command: [x]}
      a:
        tools:
          - read_fil
          - mcp: gitub
          - agent: coder
          - agent: nobody
          - agent: a
          - function: not-a-module
          - read_file
          - {builtin: read_file}
    """
    problems = problems_of(tmp_path, text)
    assert [(p.line, p.message, p.hint) for p in problems] == [
        (
            7,
            "agent 'a' uses unknown built-in tool 'read_fil'",
            "did you mean 'read_file'? built-in tools: read_file, list_files, search_files, "
            "write_file, http_request, run_command",
        ),
        (
            8,
            "agent 'a' uses unknown MCP server 'gitub'",
            "did you mean 'github'? declared servers: github",
        ),
        (
            9,
            "agent 'a' uses command-line agent 'coder' as a tool",
            "only llm agents can be tools; run a command-line agent in a step of its own",
        ),
        (
            10,
            "agent 'a' uses unknown agent 'nobody' as a tool",
            "known agents: coder, a",
        ),
        (
            11,
            "agent 'a' delegates to itself",
            "an agent cannot be its own tool; delegate to another agent",
        ),
        (
            12,
            "agent 'a': 'not-a-module' is not a module:function reference",
            "write module:function, e.g. project_tools:lookup_ticket (a module importable from "
            "the config file's directory)",
        ),
        (
            14,
            "agent 'a' lists tool 'read_file' twice",
            "list it once (the first is at line 13)",
        ),
    ]


def test_unknown_server_without_any_declared_says_how_to_declare(tmp_path: Path) -> None:
    [problem] = problems_of(tmp_path, "agents:\n  a:\n    tools: [{mcp: git}]\n")
    assert problem.hint == "declare it at the top level: mcp: {git: {command: [program, ...]}}"


def test_a_delegation_cycle_is_named(tmp_path: Path) -> None:
    text = """\
    agents:
      a: {tools: [{agent: b}]}
      b: {tools: [{agent: c}]}
      c: {tools: [read_file, {agent: a}]}
    """
    assert found(tmp_path, text) == [
        (2, "agents delegate to each other in a cycle: a -> b -> c -> a"),
    ]


def test_the_same_server_twice_needs_its_own_prefix(tmp_path: Path) -> None:
    text = """\
    mcp: {git: {command: [x]}}
    agents:
      a:
        tools:
          - {mcp: git, include: [git_log]}
          - {mcp: git, include: [git_diff]}
          - {mcp: git, prefix: other_}
    """
    [problem] = problems_of(tmp_path, text)
    assert (problem.line, problem.message) == (6, "agent 'a' lists tool 'mcp: git' twice")
    assert (
        problem.hint == "list it once (the first is at line 5), or give each entry its own `prefix`"
    )


def test_a_bad_entry_does_not_hide_the_problems_of_the_others(tmp_path: Path) -> None:
    text = """\
    agents:
      a:
        tools:
          - {builtin: http_request}
          - serch_files
    """
    assert [line for line, _ in found(tmp_path, text)] == [4, 5]


def test_header_placeholders_must_name_a_variable(tmp_path: Path) -> None:
    text = """\
    mcp:
      s:
        url: https://h/mcp
        headers:
          Authorization: "Bearer ${TOKEN"
          X-Key: "${}"
    """
    assert found(tmp_path, text) == [
        (5, "MCP server 's': header 'Authorization' has a bad placeholder '${TOKEN'"),
        (6, "MCP server 's': header 'X-Key' has a bad placeholder '${}'"),
    ]


def test_workdir_of_an_llm_agent_without_tools_is_flagged(tmp_path: Path) -> None:
    [problem] = problems_of(tmp_path, "agents:\n  a:\n    workdir: src\n")
    assert (problem.line, problem.message) == (
        3,
        "agent 'a' sets `workdir` but has no tools that would use it",
    )


# The checks of this machine (in load_checked: `agentmill validate`, `run`, `serve`).

TOOLS_MODULE = '''\
import asyncio
import socket
from os.path import join

NOT_A_FUNCTION = 3


def lookup_ticket(ticket: int) -> str:
    """Fetch a ticket by number."""
    return f"ticket {ticket}"


async def slow(text: str) -> str:
    """Echo after a pause."""
    await asyncio.sleep(0)
    return text


def takes_a_socket(s: socket.socket) -> str:
    """Unusable: no schema for a socket."""
    return ""
'''


def with_tools(tmp_path: Path, *targets: str) -> str:
    (tmp_path / "project_tools.py").write_text(TOOLS_MODULE, encoding="utf-8")
    (tmp_path / "broken_tools.py").write_text("raise RuntimeError('no config here')\n")
    (tmp_path / "exiting_tools.py").write_text("import sys\nsys.exit(3)\n")
    entries = "".join(f"      - function: {target}\n" for target in targets)
    return f"agents:\n  a:\n    tools:\n{entries}"


def test_importable_functions_pass_and_sys_path_is_restored(tmp_path: Path) -> None:
    before = list(sys.path)
    text = with_tools(tmp_path, "project_tools:lookup_ticket", "project_tools:slow")
    loaded = load_project(write(tmp_path, text), checks=tool_problems)
    assert [tool.function for tool in loaded.spec.agents["a"].tools] == [
        "project_tools:lookup_ticket",
        "project_tools:slow",
    ]
    assert sys.path == before
    assert "project_tools" not in sys.modules  # a later check imports the file afresh


def test_function_tools_that_cannot_work_are_reported(tmp_path: Path) -> None:
    text = with_tools(
        tmp_path,
        "missing_module:f",
        "project_tools:lookup",
        "project_tools:NOT_A_FUNCTION",
        "broken_tools:f",
        "project_tools:takes_a_socket",
        "exiting_tools:f",
    )
    problems = problems_of(tmp_path, text, checked=True)
    assert [(p.line, p.message) for p in problems] == [
        (4, "agent 'a': function tool 'missing_module:f': no module named 'missing_module'"),
        (5, "agent 'a': function tool 'project_tools:lookup': module 'project_tools' has no "
            "'lookup'"),
        (6, "agent 'a': function tool 'project_tools:NOT_A_FUNCTION': 'NOT_A_FUNCTION' is not a "
            "function (int)"),
        (7, "agent 'a': function tool 'broken_tools:f': importing 'broken_tools' failed: "
            "RuntimeError: no config here"),
        (8, "agent 'a': function tool 'project_tools:takes_a_socket': no tool schema can be "
            "built from it: Unable to generate pydantic-core schema for <class "
            "'socket.socket'>. Set `arbitrary_types_allowed=True` in the model_config to "
            "ignore this error or implement `__get_pydantic_core_schema__` on your type to "
            "fully support it."),
        (9, "agent 'a': function tool 'exiting_tools:f': importing 'exiting_tools' failed: "
            "SystemExit: 3"),
    ]  # fmt: skip
    hints = [p.hint or "" for p in problems]
    assert hints[0].startswith(f"put missing_module.py next to the config file ({tmp_path})")
    assert hints[1] == "functions in project_tools: lookup_ticket, slow, takes_a_socket"
    assert hints[3] == "run `python -c 'import broken_tools'` to see why"
    assert "docstring" in hints[4]


def test_a_missing_server_program_is_reported(tmp_path: Path) -> None:
    (tmp_path / "server.sh").write_text("#!/bin/sh\n")  # not executable
    text = """\
    mcp:
      gone: {command: [no-such-mcp-server-xyz, --stdio]}
      local: {command: [./server.sh]}
      nowhere: {command: [python], cwd: missing}
      fine: {command: [python, -m, mcp_server_time]}
    """
    problems = problems_of(tmp_path, text, checked=True)
    assert [(p.line, p.message, p.hint) for p in problems] == [
        (
            2,
            "MCP server 'gone': program 'no-such-mcp-server-xyz' is not on PATH",
            "install no-such-mcp-server-xyz, or give its full path as the first item of `command`",
        ),
        (
            3,
            f"MCP server 'local': program {tmp_path / 'server.sh'} is not an executable file",
            "fix the first item of `command`",
        ),
        (
            4,
            f"MCP server 'nowhere': cwd {tmp_path / 'missing'} is not a directory",
            "create it or fix `cwd`",
        ),
    ]


def test_an_unset_header_variable_is_reported_without_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AM_TEST_SET_TOKEN", "s3cret-value")
    monkeypatch.delenv("AM_TEST_UNSET_TOKEN", raising=False)
    text = """\
    mcp:
      s:
        url: https://h/mcp
        headers: {A: "${AM_TEST_SET_TOKEN}", B: "Bearer ${AM_TEST_UNSET_TOKEN}"}
    """
    [problem] = problems_of(tmp_path, text, checked=True)
    assert (problem.line, problem.message, problem.hint) == (
        4,
        "MCP server 's': header 'B' reads ${AM_TEST_UNSET_TOKEN}, which is not set",
        "set AM_TEST_UNSET_TOKEN in the environment agentmill runs in",
    )


def test_the_workspace_of_file_tools_must_exist(tmp_path: Path) -> None:
    text = """\
    agents:
      a: {workdir: nowhere, tools: [read_file]}
      b: {workdir: worktree, repo: ., tools: [{builtin: run_command, allow: [git]}]}
      c: {workdir: worktree, tools: [{builtin: http_request, allow: [h]}]}
    """
    assert found(tmp_path, text, checked=True) == [
        (2, f"agent 'a': workdir {tmp_path / 'nowhere'} is not a directory"),
        (3, f"agent 'b': worktrees need a git repository, and {tmp_path} is not one"),
    ]


def agentmill(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMILL_")}
    env |= {"AGENTMILL_HOME": str(tmp_path / ".agentmill"), "PYTHONPATH": str(ROOT)}
    env["COLUMNS"] = "300"
    return subprocess.run(
        [sys.executable, "-m", "agentmill", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_validate_command_reports_tool_problems_with_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, with_tools(tmp_path, "project_tools:nope"))
    result = agentmill(tmp_path, "validate", str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{path}:4: agent 'a': function tool 'project_tools:nope'" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_fails_before_starting_on_a_tool_problem(tmp_path: Path) -> None:
    text = with_tools(tmp_path, "project_tools:lookup_ticket")
    text += "mcp:\n  gone: {command: [no-such-mcp-server-xyz]}\n"
    text += "workflows:\n  w:\n    steps: [{id: s, agent: a, prompt: hi}]\n"
    path = write(tmp_path, text)
    result = agentmill(tmp_path, "run", str(path), "w")
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{path}:6: MCP server 'gone': program 'no-such-mcp-server-xyz' is not on PATH" in (
        result.stderr
    )
    assert not (tmp_path / ".agentmill").exists()  # no store opened, no run recorded


def test_doctor_lists_tool_problems_with_file_and_line(tmp_path: Path) -> None:
    text = with_tools(tmp_path, "project_tools:nope")
    text += "mcp:\n  gone: {command: [no-such-mcp-server-xyz]}\n"
    path = write(tmp_path, text)
    result = agentmill(tmp_path, "doctor", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{path}:4" in result.stdout
    assert "function tool 'project_tools:nope': module 'project_tools' has no 'nope'" in (
        result.stdout
    )
    assert f"{path}:6" in result.stdout
    assert "program 'no-such-mcp-server-xyz' is not on PATH" in result.stdout
