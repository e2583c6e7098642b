"""The built-in run_command tool: allowlisted programs in the workspace, no shell.

A command runs through the same contained runner as command-line agents
(`agents/cli/process.py`): its own session, the resource limits given, stdout capped, and on
its timeout the whole session killed (SIGTERM, a grace period, SIGKILL) and reaped.

The program must be on the allowlist: a bare name (`pytest`) is looked up on PATH, whose
relative entries (`.`, empty) are dropped so a file the model wrote into the workspace can
never pass for an allowed program; a name with a `/` runs only if it is listed exactly. The
child's environment is PATH, HOME and LANG, and `AGENTMILL_IDEMPOTENCY_KEY` (the call's key,
the same when a crash repeats the call: a script can record what it did under it).

Allowing a program grants whatever that program can do with arguments the model chooses:
`python` or `bash` run any code, `git -c core.pager=...` runs a command. List programs
accordingly.
"""

from __future__ import annotations

import os
import shutil
import signal
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic_ai import ModelRetry

from agentmill.agents.cli.process import Limits, ProcessResult, ProcessSpec, run_process
from agentmill.agents.tools.builtin_files import workspace_for_tool
from agentmill.agents.tools.context import current_call
from agentmill.errors import UserError
from agentmill.settings import granted_environment

__all__ = ["run_command_tool"]

_PASSED_VARIABLES = ("PATH", "HOME", "LANG")
_KEY_VARIABLE = "AGENTMILL_IDEMPOTENCY_KEY"
_GRACE = 2.0  # seconds between SIGTERM and SIGKILL at the timeout


def run_command_tool(
    workspace: Path | None,
    allow: Sequence[str],
    max_output: int,
    timeout: float,
    limits: Limits,
) -> Callable[..., Any]:
    programs = tuple(allow)

    async def run_command(argv: list[str], stdin: str | None = None) -> str:
        """Run a program in the workspace and return its exit code, output and errors.

        There is no shell: pipes, redirections, '&&', '*' globs and $VARIABLES do not work.
        Give the program and each argument as separate items. Programs that may be run:
        {programs}.

        Args:
            argv: The program and its arguments, e.g. ["pytest", "-q", "tests/test_app.py"].
            stdin: Text passed to the program on its standard input.
        """
        if not argv or not argv[0]:
            raise ModelRetry("argv is empty: give the program to run, then its arguments")
        root = workspace_for_tool(workspace).root
        env = _environment()
        program = _program(argv[0], programs, env["PATH"])
        spec = ProcessSpec(
            argv=(program, *argv[1:]),
            env=env,
            cwd=str(root),
            stdin=None if stdin is None else stdin.encode(),
            timeout=timeout,
            max_output=max_output,
            grace=_GRACE,
            limits=limits,
            identity=_KEY_VARIABLE,
        )
        try:
            result = await run_process(spec)
        except UserError as exc:  # not installed, not executable, arguments too long
            raise ModelRetry(f"{argv[0]} could not be started: {exc}") from None
        return _report(result, timeout, max_output)

    run_command.__doc__ = (run_command.__doc__ or "").replace("{programs}", ", ".join(programs))
    return run_command


def _environment() -> dict[str, str]:
    """PATH (absolute entries only), HOME, LANG and the call's idempotency key."""
    env = granted_environment(_PASSED_VARIABLES)
    entries = env.get("PATH", os.defpath).split(os.pathsep)
    env["PATH"] = os.pathsep.join(entry for entry in entries if os.path.isabs(entry))
    call = current_call()
    env[_KEY_VARIABLE] = call.idempotency_key if call is not None else uuid.uuid4().hex
    return env


def _program(name: str, allow: Sequence[str], path: str) -> str:
    """The program to exec for `name`, if the allowlist lets it run."""
    listed = ", ".join(allow)
    if "/" in name:
        if name not in allow:
            raise ModelRetry(
                f"{name}: a program given by path runs only if listed exactly; this agent may"
                f" run: {listed}"
            )
        return name
    if name not in allow:
        raise ModelRetry(f"program {name!r} is not allowed: this agent may run only {listed}")
    found = shutil.which(name, path=path)
    if found is None:
        raise ModelRetry(f"program {name!r} is allowed but not installed on this machine")
    return os.path.abspath(found)


def _report(result: ProcessResult, timeout: float, max_output: int) -> str:
    """What the model reads: how the program ended, its stdout, the end of its stderr."""
    lines = [_ending(result, timeout), "--- stdout ---", result.stdout.rstrip("\n") or "(none)"]
    errors = "\n".join(result.stderr_tail)
    if errors.strip():
        if len(errors) > max_output // 4:
            errors = "[...]" + errors[-(max_output // 4) :]
        lines += ["--- stderr (last lines) ---", errors]
    return "\n".join(lines)


def _ending(result: ProcessResult, timeout: float) -> str:
    if result.limit_hit == "timeout":
        return f"killed: still running after the {timeout:g}s timeout (output so far below)"
    if result.limit_hit is not None:
        return f"killed: went past its {result.limit_hit} limit"
    code = result.exit_code
    if code is not None and code < 0:
        return f"killed by signal {_signal_name(-code)}"
    return f"exit code: {code}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)
