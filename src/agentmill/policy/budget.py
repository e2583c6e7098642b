"""Budgets: reserve a call's worst case in the database before it runs, settle after.

Levels (each `{usd, tokens}`; a call must fit all that apply):
- the run: the budget given at start, else the workflow's `budget` (per run);
- the agent's `budget` (per run, for that agent's calls);
- the tenant's `budgets.tenants.<t>.day|month` (UTC calendar day / month);
- the starting API key's daily and monthly limits.

The worst case of a call is its estimated input (`estimate_input_tokens`) plus its
`max_tokens` of output, priced with the model's price; structured output allows for one
more request (pydantic-ai asks again when the output does not fit the schema). After the
call, what it actually used is charged and the rest released. A call the provider answered
with an error is charged nothing; a call cut off by a timeout, a cancel or a shutdown is
charged its worst case (the provider may bill it). See docs/budgets.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from agentmill.agents.base import (
    Agent,
    StepContext,
    StepRequest,
    StepResult,
    Usage,
    estimate_input_tokens,
)
from agentmill.agents.pricing import cost_usd
from agentmill.errors import UserError
from agentmill.spec.models import AgentSpec, BudgetSpec, PeriodBudgets
from agentmill.store.budgets import BudgetStore, Hold, Limit
from agentmill.store.keys import KeyStore

if TYPE_CHECKING:
    from agentmill.agents.llm import LLMAgent
    from agentmill.engine.plan import RunPlan
    from agentmill.policy.chain import RunScope
    from agentmill.store import Store

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "BudgetedAgent",
    "budgeted",
    "estimate_input_tokens",
    "max_tokens_under_budget",
    "release_run_holds",
]

logger = logging.getLogger("agentmill.policy")

DEFAULT_MAX_TOKENS = 4096
"""The output cap of an agent without `max_tokens` when a budget may apply, so that its
worst case is bounded."""

_MAX_HOLD_ID = 400


def max_tokens_under_budget(spec: AgentSpec, *, plan: RunPlan, scope: RunScope) -> int | None:
    """The agent's `max_tokens`, or `DEFAULT_MAX_TOKENS` when it has none and a budget
    may apply (the starting API key's limits are only known at the call)."""
    if spec.max_tokens is not None or not _may_apply(spec, plan=plan, scope=scope):
        return spec.max_tokens
    return DEFAULT_MAX_TOKENS


def budgeted(
    inner: Agent, *, llm: LLMAgent, plan: RunPlan, scope: RunScope, agent_name: str, store: Store
) -> Agent:
    """`inner` (calls of one model) behind the budgets that may apply to it."""
    if not _may_apply(plan.agents[agent_name], plan=plan, scope=scope):
        return inner
    return BudgetedAgent(inner, llm=llm, levels=_RunLevels.of(plan, scope, agent_name), store=store)


def _may_apply(spec: AgentSpec, *, plan: RunPlan, scope: RunScope) -> bool:
    tenant = plan.budgets.tenants.get(scope.tenant)
    return bool(
        spec.budget
        or scope.budget
        or plan.workflow.budget
        or (tenant is not None and (tenant.day or tenant.month))
        or scope.api_key_id
    )


class _RunLevels:
    """The budget levels of one agent's calls in one run; periods resolved per call."""

    def __init__(
        self,
        *,
        run_id: str,
        tenant: str,
        fixed: list[Limit],
        tenant_periods: PeriodBudgets | None,
        api_key_id: str | None,
    ) -> None:
        self.run_id = run_id
        self.tenant = tenant
        self._fixed = fixed
        self._tenant_periods = tenant_periods
        self._api_key_id = api_key_id
        self._key_periods: PeriodBudgets | None = None
        self._key_loaded = api_key_id is None

    @classmethod
    def of(cls, plan: RunPlan, scope: RunScope, agent_name: str) -> _RunLevels:
        fixed: list[Limit] = []
        run_scope = f"run:{scope.run_id}"
        if scope.budget:
            spec = BudgetSpec.model_validate(scope.budget)
            fixed.append(_limit(run_scope, f"run {scope.run_id} budget (given at start)", spec))
        elif plan.workflow.budget is not None:
            name = f"workflow '{scope.workflow}' per-run budget"
            fixed.append(_limit(run_scope, name, plan.workflow.budget))
        agent_budget = plan.agents[agent_name].budget
        if agent_budget is not None:
            name = f"agent '{agent_name}' per-run budget"
            fixed.append(_limit(f"{run_scope}/agent:{agent_name}", name, agent_budget))
        return cls(
            run_id=scope.run_id,
            tenant=scope.tenant,
            fixed=fixed,
            tenant_periods=plan.budgets.tenants.get(scope.tenant),
            api_key_id=scope.api_key_id,
        )

    async def limits(self, keys: KeyStore, now: datetime) -> list[Limit]:
        """Every level that applies to a call made at `now` (UTC)."""
        if not self._key_loaded:
            assert self._api_key_id is not None
            budget = await keys.budget(self._api_key_id)
            self._key_periods = None if not budget else PeriodBudgets.model_validate(budget)
            self._key_loaded = True
        found = list(self._fixed)
        found += _periods(
            f"tenant:{self.tenant}", f"tenant '{self.tenant}'", self._tenant_periods, now
        )
        found += _periods(
            f"key:{self._api_key_id}", f"API key {self._api_key_id}", self._key_periods, now
        )
        return found


def _limit(scope: str, name: str, spec: BudgetSpec) -> Limit:
    return Limit(scope=scope, name=name, usd=spec.usd, tokens=spec.tokens)


def _periods(base: str, owner: str, spec: PeriodBudgets | None, now: datetime) -> list[Limit]:
    if spec is None:
        return []
    found: list[Limit] = []
    if spec.day is not None:
        scope = f"{base}/day:{now:%Y-%m-%d}"
        found.append(_limit(scope, f"{owner} daily budget", spec.day))
    if spec.month is not None:
        scope = f"{base}/month:{now:%Y-%m}"
        found.append(_limit(scope, f"{owner} monthly budget", spec.month))
    return found


class BudgetedAgent(Agent):
    """Reserves the worst case of each call of one model on every level, then settles."""

    def __init__(self, inner: Agent, *, llm: LLMAgent, levels: _RunLevels, store: Store) -> None:
        self._inner = inner
        self._llm = llm
        self._levels = levels
        self._budgets = BudgetStore(store.sync_engine)
        self._keys = KeyStore(store.engine)
        self._seen: dict[str, set[str]] = {}
        """Hold ids per call key, for calls whose earlier holds were looked up."""

    async def run(self, request: StepRequest, context: StepContext) -> StepResult:
        limits = await self._levels.limits(self._keys, datetime.now(UTC))
        if not limits:
            return await self._inner.run(request, context)
        hold = await self._reserve(request, limits)
        try:
            result = await self._inner.run(request, context)
        except asyncio.CancelledError:
            # Cut off by a timeout, a cancel or a shutdown after the request may have gone
            # out: the provider may bill it, so a hard budget counts its worst case.
            await self._settle(hold, usd=hold.usd, tokens=hold.tokens)
            raise
        except BaseException:
            await self._release(hold)  # the provider answered with an error: not billed
            raise
        usage = result.usage
        spent_usd = result.cost_usd
        if spent_usd is None:
            spent_usd = cost_usd(self._llm.label, usage, self._llm.price) or 0.0
        await self._settle(hold, usd=spent_usd, tokens=usage.input_tokens + usage.output_tokens)
        reserved = {"usd": round(hold.usd, 6), "tokens": hold.tokens}
        budget = {"levels": [limit.name for limit in limits], "reserved": reserved}
        return replace(result, details={**result.details, "budget": budget})

    async def _reserve(self, request: StepRequest, limits: list[Limit]) -> Hold:
        usd, tokens = self.worst_case(request.prompt)
        if usd is None:
            priced = [limit.name for limit in limits if limit.usd is not None]
            if priced:
                raise _unknown_price(self._llm.label, priced[0])
        taken = self._seen.get(request.key)
        if taken is None and request.attempt > 1:
            # An earlier attempt may have been cut off by a crash with its hold still held.
            taken = self._seen[request.key] = await self._budgets.release_call(
                request.run_id, request.key
            )
        hold = self._hold(request, limits, usd or 0.0, tokens, taken or set())
        if not await self._budgets.reserve(hold, limits):
            # The same attempt was reserved before a crash: release it, take a new id.
            taken = self._seen[request.key] = await self._budgets.release_call(
                request.run_id, request.key
            )
            hold = self._hold(request, limits, usd or 0.0, tokens, taken)
            if not await self._budgets.reserve(hold, limits):
                raise RuntimeError(f"budget hold {hold.id} exists twice")
        self._seen.setdefault(request.key, set()).add(hold.id)
        return hold

    def worst_case(self, prompt: str) -> tuple[float | None, int]:
        """The most a call with this prompt may cost: (US dollars or None when the model's
        price is unknown, tokens)."""
        llm = self._llm
        schema = llm.identity().get("output_schema")
        tokens_in = estimate_input_tokens(llm.instructions, prompt)
        tokens_out = llm.max_tokens or DEFAULT_MAX_TOKENS
        if schema is not None:
            # Tool definition in, and one more request that also reads the first answer.
            tokens_in = 2 * (tokens_in + estimate_input_tokens(json.dumps(schema))) + tokens_out
            tokens_out *= 2
        usd = cost_usd(
            llm.label, Usage(input_tokens=tokens_in, output_tokens=tokens_out), llm.price
        )
        return usd, tokens_in + tokens_out

    def _hold(
        self, request: StepRequest, limits: list[Limit], usd: float, tokens: int, taken: set[str]
    ) -> Hold:
        base = f"{request.run_id}/{request.key}#{request.attempt}@{self._llm.label}"
        if len(base) > _MAX_HOLD_ID - 8:  # room for a ~n suffix
            base = f"{request.run_id}/{hashlib.sha256(base.encode()).hexdigest()}"
        hold_id, n = base, 1
        while hold_id in taken:
            n += 1
            hold_id = f"{base}~{n}"
        return Hold(
            id=hold_id,
            run_id=request.run_id,
            call_key=request.key,
            tenant=self._levels.tenant,
            scopes=tuple(limit.scope for limit in limits),
            usd=usd,
            tokens=tokens,
        )

    async def _settle(self, hold: Hold, *, usd: float, tokens: int) -> None:
        try:
            await self._budgets.settle(hold, usd=usd, tokens=tokens)
        except SQLAlchemyError:
            # Never fail (and so repeat) a call the provider answered: the hold keeps
            # counting its worst case until the run's end releases it.
            logger.warning("could not settle budget hold %s", hold.id, exc_info=True)

    async def _release(self, hold: Hold) -> None:
        try:
            await self._budgets.release(hold)
        except SQLAlchemyError:
            # The run's end releases it; the call's own error matters more.
            logger.warning("could not release budget hold %s", hold.id, exc_info=True)


def _unknown_price(label: str, level: str) -> UserError:
    return UserError(
        f"the {level} is in US dollars but the price of model {label!r} is unknown, so its "
        "calls cannot be checked against it: give the model a price under `models` "
        "(e.g. `{provider: openai, name: ..., price: {input: 0.5, output: 1.5}}`, dollars "
        "per million tokens) or set the budget in tokens (`budget: {tokens: 200000}`)"
    )


async def release_run_holds(store: Store, run_id: str, *, owner: str, ended: float) -> None:
    """Release what a run's calls still hold once its end is recorded (calls cut off by a
    cancel, an interruption or a crash); charges nothing. Holds made after `ended`, or
    while another process owns the run, belong to its new execution and are kept."""
    budgets = BudgetStore(store.sync_engine)
    try:
        held = await budgets.held(run_id, created_before=ended)
        if not held or (await store.owners([run_id])).get(run_id) not in {None, owner}:
            return
        released = await budgets.release_all(held)
    except SQLAlchemyError:
        logger.warning("could not release the budget holds of run %s", run_id, exc_info=True)
        return
    if released:
        logger.info("released %d unsettled budget hold(s) of run %s", released, run_id)
