"""The declarative format: pydantic models of a project file (models, agents, workflows).

Pure data. Loading with file:line errors lives in `loader`; cross-reference checks in
`validate`. The whole format is documented in docs/config.md.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from agentmill.spec._base import Strict
from agentmill.spec.durations import Duration
from agentmill.spec.presets import PresetSpec
from agentmill.spec.sizes import Size
from agentmill.spec.tools import McpServerSpec, ToolSpec

__all__ = [
    "DEFAULT_APPROVAL_TIMEOUT",
    "DEFAULT_MAX_TOOL_CALLS",
    "DEFAULT_MAX_TURNS",
    "DEFAULT_MODEL",
    "AgentSpec",
    "ApprovalSpec",
    "BreakerSpec",
    "BudgetSpec",
    "BudgetsSpec",
    "CacheSpec",
    "CliLimits",
    "ConcurrencySpec",
    "GithubTrigger",
    "GuardSpec",
    "InputSpec",
    "McpServerSpec",
    "ModelEndpoint",
    "ModelPrice",
    "PeriodBudgets",
    "ProjectSpec",
    "RateLimitSpec",
    "StepSpec",
    "ToolSpec",
    "TriggerSpec",
    "WorkflowSpec",
]

DEFAULT_MODEL = "local:smollm2"
"""The model used when an agent names none and the project defines no `default` alias."""

DEFAULT_APPROVAL_TIMEOUT = 7 * 86400.0

MAX_BUDGET_TOKENS = 10**15
"""Far past any real budget; below 2**53, so the bound is exact as a JSON number (the OpenAPI
document and JavaScript clients hold numbers as doubles) and a 64-bit column can add to it."""

STEP_ID_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]*$"


class ModelPrice(Strict):
    """The price of a model the `genai-prices` table does not know, per million tokens."""

    input: float = Field(ge=0, description="US dollars per million input tokens")
    output: float = Field(ge=0, description="US dollars per million output tokens")


class ModelEndpoint(Strict):
    """A model served by a provider at an explicit endpoint (e.g. Ollama, vLLM, OpenRouter)."""

    provider: Literal["openai", "anthropic", "google"] = "openai"
    name: str = Field(min_length=1, description="Model name as the server knows it")
    base_url: str | None = Field(default=None, description="OpenAI-compatible base URL")
    api_key_env: str | None = Field(
        default=None, description="Environment variable holding the key (none for local servers)"
    )
    price: ModelPrice | None = Field(
        default=None, description="Price when `genai-prices` does not list the model"
    )


BUDGET_LIMITS = ("usd", "tokens")
"""A budget sets at least one of these; the validator and the JSON schema both read this."""


def _at_least_one_limit(schema: dict[str, Any]) -> None:
    """The JSON schema's half of `BudgetSpec._some_limit`, so the API's OpenAPI document
    refuses what validation refuses (`{}`, all limits null)."""
    schema["anyOf"] = [
        {"required": [name], "properties": {name: {"not": {"type": "null"}}}}
        for name in BUDGET_LIMITS
    ]


class BudgetSpec(Strict):
    """A spending limit in US dollars, tokens (input + output), or both."""

    model_config = ConfigDict(json_schema_extra=_at_least_one_limit)

    usd: float | None = Field(default=None, gt=0, le=1e12, allow_inf_nan=False)
    tokens: int | None = Field(default=None, gt=0, le=MAX_BUDGET_TOKENS)

    @model_validator(mode="after")
    def _some_limit(self) -> BudgetSpec:
        if all(getattr(self, name) is None for name in BUDGET_LIMITS):
            raise ValueError("a budget needs `usd`, `tokens` or both")
        return self


class PeriodBudgets(Strict):
    """Limits per calendar day and per calendar month (UTC)."""

    day: BudgetSpec | None = None
    month: BudgetSpec | None = None


class BudgetsSpec(Strict):
    """Budgets beyond one run: per tenant, per day or month."""

    tenants: dict[str, PeriodBudgets] = Field(default_factory=dict)


class CacheSpec(Strict):
    """Exact-match response cache for an agent (needs AGENTMILL_CACHE_SECRET)."""

    ttl: Duration = Field(default=3600.0, description="How long an entry may be reused")


class RateLimitSpec(Strict):
    """A provider's limits, shared by every worker on the database."""

    rpm: int | None = Field(default=None, gt=0, description="Requests per minute")
    tpm: int | None = Field(default=None, gt=0, description="Tokens per minute (estimated)")
    concurrency: int | None = Field(default=None, gt=0, description="Requests in flight")


class BreakerSpec(Strict):
    """Circuit breaker per provider: open after `failures` in a row, probe after `reset`."""

    failures: int = Field(default=5, gt=0)
    reset: Duration = Field(default=30.0, description="Seconds open before a probe")


class GuardSpec(Strict):
    """Screening of untrusted text and size limits for a workflow's agent calls."""

    injection: Literal["off", "flag", "block"] = Field(
        default="off", description="Prompt-injection screen of untrusted inputs"
    )
    max_prompt_chars: int | None = Field(default=None, gt=0)
    max_output_chars: int | None = Field(default=None, gt=0)


class CliLimits(Strict):
    """Resource limits of a command-line agent's processes (each process, except `processes`)."""

    cpu: Duration | None = Field(default=None, description="CPU time per process")
    memory: Size | None = Field(default=None, description="Address space per process")
    processes: int | None = Field(default=None, gt=0, description="Processes alive at once")
    files: int | None = Field(default=None, gt=0, description="Open files per process")


DEFAULT_MAX_TURNS = 20
DEFAULT_MAX_TOOL_CALLS = 50

WORKTREE = "worktree"
"""`workdir: worktree`: a fresh git worktree of `repo` per step, on its own branch."""

_LLM_ONLY = (
    "model",
    "instructions",
    "max_tokens",
    "temperature",
    "output",
    "budget",
    "cache",
    "fallback",
    "tools",
    "max_turns",
    "max_tool_calls",
)
_CLI_ONLY = (
    "preset",
    "command",
    "args",
    "env",
    "max_output",
    "limits",
    "stdin",
    "keep_worktree",
    "grace",
)


class AgentSpec(Strict):
    """An agent: an LLM (`runtime: llm`, the default) or a command-line tool (`runtime: cli`)."""

    runtime: Literal["llm", "cli"] = "llm"
    model: str | None = Field(
        default=None, description="A key of `models`, or a model string like openai:gpt-4o"
    )
    instructions: str = ""
    max_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    timeout: Duration | None = None
    retries: int = Field(default=0, ge=0, le=10)
    output: dict[str, Any] | None = Field(
        default=None, description="JSON schema of a structured output (an object)"
    )
    budget: BudgetSpec | None = Field(default=None, description="Limit per run for this agent")
    cache: CacheSpec | None = None
    fallback: list[str] = Field(
        default_factory=list,
        description="Models (keys of `models` or model strings) tried in order when the "
        "agent's model fails after its retries or its provider's circuit is open",
    )
    preset: str | None = Field(
        default=None, description="cli: claude, codex, gemini, aider, generic or a `presets` key"
    )
    command: list[str] | None = Field(
        default=None, min_length=1, description="cli: argument list; each item is a template"
    )
    args: list[str] = Field(
        default_factory=list, description="cli: argument templates added after the command"
    )
    env: list[str] | None = Field(
        default=None,
        description="cli: environment variables passed to the tool (default: the preset's)",
    )
    workdir: str | None = Field(
        default=None,
        description="A directory (relative to the config file) or `worktree`. cli: where the "
        "tool runs (default `worktree`); llm: the workspace of its built-in tools (default: "
        "the config file's directory)",
    )
    repo: str = Field(default=".", description="The git repository worktrees come from")
    max_output: Size = Field(default=1_000_000, description="cli: stdout bytes kept")
    limits: CliLimits = Field(default_factory=CliLimits)
    stdin: str | None = Field(default=None, description="cli: template written to stdin")
    keep_worktree: Literal["on-failure", "always", "never"] = "on-failure"
    grace: Duration = Field(default=10.0, description="cli: SIGTERM to SIGKILL on a stop")
    tools: list[ToolSpec] = Field(
        default_factory=list, description="What the agent may call: built-ins, MCP, functions"
    )
    max_turns: int = Field(
        default=DEFAULT_MAX_TURNS, gt=0, le=1000, description="Model requests per step"
    )
    max_tool_calls: int = Field(
        default=DEFAULT_MAX_TOOL_CALLS, gt=0, le=10_000, description="Tool calls per step"
    )

    @model_validator(mode="after")
    def _fields_of_its_runtime(self) -> AgentSpec:
        given = self.model_fields_set
        foreign = _LLM_ONLY if self.runtime == "cli" else _CLI_ONLY
        misplaced = [key for key in foreign if key in given]
        if misplaced:
            other = "llm" if self.runtime == "cli" else "cli"
            names = ", ".join(f"'{key}'" for key in misplaced)
            raise ValueError(f"{names} only apply to agents with runtime: {other}")
        return self


InputType = Literal["string", "integer", "number", "boolean", "list", "object"]


class InputSpec(Strict):
    """A typed workflow input; inputs without a default are required."""

    type: InputType = "string"
    default: Any = None
    description: str = ""
    untrusted: bool = Field(default=False, description="Screened by the workflow's injection guard")

    @property
    def required(self) -> bool:
        """An input is required unless the file gives it a `default` (even `null`)."""
        return "default" not in self.model_fields_set


class ApprovalSpec(Strict):
    """A gate: the run waits (durably) until a person approves or rejects, or it expires."""

    prompt: str = Field(default="", description="Template shown to the approver")
    timeout: Duration = DEFAULT_APPROVAL_TIMEOUT
    on_timeout: Literal["reject", "fail"] = Field(
        default="reject",
        description="reject: the gate counts as rejected; fail: the step (and run) fail",
    )


class StepSpec(Strict):
    """One step: an agent call with a templated prompt, or an approval gate.

    A step runs when everything it `needs` is done.
    """

    id: str = Field(pattern=STEP_ID_PATTERN)
    agent: str | None = None
    prompt: str = ""
    approval: ApprovalSpec | None = None
    needs: list[str] = Field(default_factory=list)
    when: str | None = Field(default=None, description="Template; the step runs if it is truthy")
    foreach: str | None = Field(
        default=None, description="Template expression yielding a list; one call per item"
    )
    concurrency: int | None = Field(default=None, gt=0, description="Cap for foreach calls")
    timeout: Duration | None = None
    retries: int | None = Field(default=None, ge=0, le=10)
    backoff: Duration = Field(default=1.0, description="First retry delay; doubles, with jitter")

    @model_validator(mode="after")
    def _one_kind(self) -> StepSpec:
        if self.approval is None and self.agent is None:
            raise ValueError("a step needs either `agent` (with a prompt) or `approval`")
        if self.approval is not None and self.agent is not None:
            raise ValueError("a step is either an agent step or an approval gate, not both")
        if self.approval is not None and self.foreach is not None:
            raise ValueError("an approval gate cannot use foreach")
        return self


class WorkflowSpec(Strict):
    """A DAG of steps with typed inputs."""

    description: str = ""
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    steps: list[StepSpec] = Field(min_length=1)
    concurrency: int | None = Field(
        default=None, gt=0, description="Cap on agent calls in flight for one run"
    )
    outputs: dict[str, str] | None = Field(
        default=None, description="Named output templates; default: the final steps' outputs"
    )
    budget: BudgetSpec | None = Field(default=None, description="Limit per run")
    guard: GuardSpec = Field(default_factory=GuardSpec)


DEFAULT_CONCURRENCY_KEY = (
    "{{ payload.repository.full_name }}"
    "#{{ payload.pull_request.number if payload.pull_request is defined"
    " else payload.issue.number if payload.issue is defined"
    " else payload.ref | default(delivery) }}"
)
"""Repository and PR (or issue number, or git ref): one active run per pull request or branch.
Events with none of these get the delivery id, so they never supersede or queue."""


class ConcurrencySpec(Strict):
    """Runs sharing a key: a new one supersedes (cancels) or queues behind the active one."""

    key: str = Field(default=DEFAULT_CONCURRENCY_KEY, description="Template over the event")
    mode: Literal["supersede", "queue", "allow"] = "supersede"


class GithubTrigger(Strict):
    """Start a workflow on GitHub webhook events."""

    events: list[str] = Field(
        min_length=1, description="`pull_request`, or with an action: `pull_request.opened`"
    )
    workflow: str
    inputs: dict[str, str] = Field(
        default_factory=dict, description="Templates over `event`, `action`, `payload`"
    )
    concurrency: ConcurrencySpec = Field(default_factory=ConcurrencySpec)


class TriggerSpec(Strict):
    """What starts a workflow besides a person: today, GitHub webhooks."""

    github: GithubTrigger


class ProjectSpec(Strict):
    """A whole config file."""

    version: Literal[1] = 1
    models: dict[str, str | ModelEndpoint] = Field(default_factory=dict)
    agents: dict[str, AgentSpec] = Field(default_factory=dict)
    workflows: dict[str, WorkflowSpec] = Field(default_factory=dict)
    triggers: list[TriggerSpec] = Field(default_factory=list)
    budgets: BudgetsSpec = Field(default_factory=BudgetsSpec)
    limits: dict[str, RateLimitSpec] = Field(
        default_factory=dict, description="Keyed by provider (`openai`) or model (`openai:gpt-4o`)"
    )
    breaker: BreakerSpec = Field(default_factory=BreakerSpec)
    presets: dict[str, PresetSpec] = Field(
        default_factory=dict,
        description="Command-line tools: new presets, or fields changed in a built-in one",
    )
    mcp: dict[str, McpServerSpec] = Field(
        default_factory=dict, description="MCP servers the agents' `tools:` may name"
    )

    def model_for(self, agent: AgentSpec) -> str | ModelEndpoint:
        """The resolved model of an agent: alias lookup, then `default`, then the local model."""
        name = agent.model or "default"
        if name in self.models:
            return self.models[name]
        if agent.model is None:
            return DEFAULT_MODEL
        return name

    def fallbacks_for(self, agent: AgentSpec) -> list[str | ModelEndpoint]:
        """The resolved fallback models of an agent, in order."""
        return [self.models.get(name, name) for name in agent.fallback]
