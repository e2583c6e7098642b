"""The one exception hierarchy of agentmill.

Two kinds are kept apart: errors the user can fix (bad config, bad input, a missing key or
package) and failures of a run (a provider down, a timeout, a step that failed).
Third-party exceptions are mapped to these once, at the boundary where they enter agentmill.
Cancellation and interruption are control flow carried by asyncio's CancelledError: a
cancelled run is recorded as cancelled, an interrupted one stays resumable.

    AgentmillError
    ├── UserError                   -- exit code 2, HTTP 4xx; the message names the fix
    │   ├── ConfigError             -- one or more ConfigProblem (file:line, message, hint)
    │   ├── InputError              -- workflow inputs that do not fit the declared ones
    │   ├── MissingDependencyError  -- an extra to install, a binary or model file missing
    │   ├── MissingCredentialError  -- an API key env var to set (its value never shown)
    │   ├── NotFoundError           -- an unknown run, workflow or agent
    │   └── InvalidStateError       -- e.g. resuming a finished run
    └── RunFailure                  -- exit code 1; the run is recorded as failed
        ├── StepFailed              -- an agent step raised; carries step id and attempts
        ├── StepTimeout             -- an agent step went past its timeout
        ├── TemplateRenderError     -- a prompt/when/foreach template failed at run time
        ├── CliFailed               -- a command-line agent exited non-zero or hit a limit
        ├── ProviderError           -- the model provider failed (transient or not)
        ├── InternalError           -- anything unexpected: users see an id, the log the rest
        └── PolicyRefusal           -- a guard refused the call; never retried
            ├── BudgetExceeded      -- names the budget level, its limit and the spend
            ├── GuardBlocked        -- prompt-injection screen or a size limit
            └── LoopStopped         -- an agent loop past its guards (turns, tool calls)
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

__all__ = [
    "AgentmillError",
    "BudgetExceeded",
    "CliFailed",
    "ConfigError",
    "ConfigProblem",
    "GuardBlocked",
    "InputError",
    "InternalError",
    "InvalidStateError",
    "LoopStopped",
    "MissingCredentialError",
    "MissingDependencyError",
    "NotFoundError",
    "PolicyRefusal",
    "ProviderError",
    "RunFailure",
    "StepFailed",
    "StepTimeout",
    "TemplateRenderError",
    "UserError",
    "shown_error",
]


class AgentmillError(Exception):
    """Base of every error agentmill raises on purpose."""


class UserError(AgentmillError):
    """Something the user can fix; the message says how."""


@dataclass(frozen=True, kw_only=True)
class ConfigProblem:
    """One problem found in a config file, with where it is and how to fix it."""

    file: str
    line: int | None
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        text = f"{where}: {self.message}"
        return f"{text}\n    hint: {self.hint}" if self.hint else text


class ConfigError(UserError):
    """A config file that cannot be used; lists every problem found, not just the first."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        count = len(problems)
        header = f"{count} problem{'s' if count != 1 else ''} in the config"
        super().__init__(header + ":\n" + "\n".join(f"  {p}" for p in problems))


class InputError(UserError):
    """Workflow inputs that are missing, unknown or of the wrong type."""


class MissingDependencyError(UserError):
    """An optional package, binary or model file that is not installed."""


class MissingCredentialError(UserError):
    """An API key that is not set; names the environment variable, never a value."""


class NotFoundError(UserError):
    """An id or name that does not exist (or belongs to another tenant)."""


class InvalidStateError(UserError):
    """An operation that does not apply to the current state, such as resuming a finished run."""


class RunFailure(AgentmillError):
    """A run that could not complete; it is recorded as failed."""


class StepFailed(RunFailure):
    """An agent step that failed after its retries."""

    def __init__(self, step: str, message: str, *, attempts: int = 1) -> None:
        self.step = step
        self.attempts = attempts
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(f"step '{step}' failed{tries}: {message}")


class StepTimeout(RunFailure):
    """An agent step that went past its timeout."""

    def __init__(self, step: str, seconds: float) -> None:
        self.step = step
        self.seconds = seconds
        super().__init__(f"step '{step}' timed out after {seconds:g}s")


class CliFailed(RunFailure):
    """A command-line agent that exited non-zero, was killed, or went past a limit; the
    message ends with the last lines of its stderr."""

    def __init__(self, message: str, *, exit_code: int | None, limit: str | None) -> None:
        self.exit_code = exit_code
        self.limit = limit
        super().__init__(message)


class TemplateRenderError(RunFailure):
    """A template that could not be rendered with the run's values, e.g. an undefined variable."""

    def __init__(self, message: str, *, variable: str | None = None) -> None:
        self.variable = variable
        super().__init__(message)


class ProviderError(RunFailure):
    """A model provider that failed; `transient` says whether a retry may help, and
    `retry_after` how long the provider asked to wait (its Retry-After), if it said."""

    def __init__(self, message: str, *, transient: bool, retry_after: float | None = None) -> None:
        self.transient = transient
        self.retry_after = retry_after
        super().__init__(message)


class InternalError(RunFailure):
    """An exception agentmill did not raise on purpose (a bug, a database error), as users
    see it: a short message with an id. Its text never includes the original's, which may
    hold SQL, parameters or paths; the log has the whole exception under the same id."""

    def __init__(self, error_id: str, *, log: str = "worker") -> None:
        self.error_id = error_id
        super().__init__(f"internal error (id {error_id}): see the {log} log")


def shown_error(
    exc: Exception, *, log: logging.Logger, doing: str, where: str = "worker"
) -> Exception:
    """What users may see of `exc`: itself if agentmill raised it on purpose (its message
    is written for users), otherwise an `InternalError` whose id is logged with `exc`."""
    if isinstance(exc, AgentmillError):
        return exc
    error_id = uuid.uuid4().hex[:12]
    log.error("%s: unexpected error (id %s)", doing, error_id, exc_info=exc)
    internal = InternalError(error_id, log=where)
    internal.__cause__ = exc
    return internal


class PolicyRefusal(RunFailure):
    """A guard refused an agent call (budget, injection screen, size limit): the step
    fails at once; retrying would be refused again."""


class BudgetExceeded(PolicyRefusal):
    """A call whose worst-case cost does not fit a budget level."""

    def __init__(
        self, *, level: str, unit: str, limit: float, spent: float, reserved: float, needed: float
    ) -> None:
        self.level = level
        self.unit = unit
        self.limit = limit
        self.spent = spent
        self.reserved = reserved
        self.needed = needed
        super().__init__(
            f"budget exceeded: {level} allows {_amount(unit, limit)},"
            f" {_amount(unit, spent)} spent and {_amount(unit, reserved)} reserved by calls in"
            f" flight; this call may cost up to {_amount(unit, needed)}."
            " Raise the budget or lower the agent's max_tokens"
        )


def _amount(unit: str, value: float) -> str:
    return f"${value:.4f}" if unit == "usd" else f"{value:,.0f} tokens"


class GuardBlocked(PolicyRefusal):
    """A call refused by a guard: injection screen (names the pattern) or a size limit."""


class LoopStopped(PolicyRefusal):
    """An agent loop stopped by its guards: the model kept calling tools after it was told to
    answer, or a tool kept failing past its retries. The message names the guard."""
