"""The one place the CLI decides where runs execute.

With `AGENTMILL_URL` and `AGENTMILL_API_KEY` both set, every command talks to an
`agentmill serve` over HTTP (`RemoteClient` in `cli/remote.py`); with neither, it runs the
engine in this process on the configured database (`LocalClient`). Commands see only the
`RunsClient` protocol, so they print the same output either way.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agentmill.errors import InvalidStateError, UserError

if TYPE_CHECKING:
    from agentmill.engine.engine import Engine
    from agentmill.settings import Settings
    from agentmill.spec.models import BudgetSpec, ProjectSpec
    from agentmill.store import CostSummary, EventRecord, RunRecord, RunStatus, StepRecord
    from agentmill.store.approvals import ApprovalRecord, ApprovalStatus
    from agentmill.store.call_summary import CallSummary
    from agentmill.store.costs import CostGroup

__all__ = [
    "LocalClient",
    "RunSource",
    "RunsClient",
    "open_client",
    "open_engine",
    "read_source",
    "remote_configured",
]


@dataclass(frozen=True, kw_only=True)
class RunSource:
    """Where a new run's workflow definition comes from.

    Locally: the config file, checked before anything starts. Remotely: nothing is read or
    sent; the server runs the workflow of that name from its own config.
    """

    project: ProjectSpec | None
    config_path: str | None


class RunsClient(Protocol):
    """What the commands need from wherever runs live."""

    async def start(
        self,
        source: RunSource,
        workflow: str,
        inputs: dict[str, str],
        *,
        budget: BudgetSpec | None = None,
    ) -> RunRecord:
        """Start a run; `budget` replaces the workflow's per-run budget."""
        ...

    async def get_run(self, run_id: str) -> RunRecord: ...

    async def plan(self, run: RunRecord) -> list[str]:
        """The run's step ids in workflow order (rows of the live view)."""
        ...

    async def steps(self, run_id: str) -> list[StepRecord]: ...

    async def calls(self, run_id: str) -> list[CallSummary]:
        """The model requests and tool calls of the run's agents with tools, in order."""
        ...

    async def list_runs(
        self, *, status: RunStatus | None, workflow: str | None, limit: int
    ) -> list[RunRecord]: ...

    async def events(self, run_id: str, *, after: int = 0) -> list[EventRecord]: ...

    def follow(self, run_id: str, *, after: int = 0) -> AsyncIterator[EventRecord]:
        """History after `after`, then live events, until the run has ended for good
        (past the `run_finished` / `run_interrupted` of executions it was resumed from)."""
        ...

    async def last_seq(self, run_id: str) -> int: ...

    async def resume(self, run_id: str) -> RunRecord: ...

    async def cancel(self, run_id: str) -> RunRecord: ...

    async def costs(
        self, *, group_by: CostGroup, since: float | None, tenant: str | None
    ) -> list[CostSummary]:
        """Spend per workflow or tenant of calls finished since `since`."""
        ...

    async def decide(
        self,
        run_id: str,
        step_id: str,
        *,
        approve: bool,
        comment: str | None,
        by: str,
        arguments: dict[str, Any] | None = None,
    ) -> ApprovalRecord:
        """Approve or reject a waiting approval gate (or tool call: `arguments` edits its
        arguments), once. `by` names the decider locally; a server records the API key's
        id instead."""
        ...

    async def approvals(
        self, *, status: ApprovalStatus | None, run_id: str | None
    ) -> list[ApprovalRecord]:
        """The tenant's approvals (gate steps and tool calls), of one run or all, newest
        first."""
        ...

    def process_gone(self, run: RunRecord) -> bool:
        """Whether a pending or running run lost the process executing it (locally: its
        heartbeat stopped), so that only `runs resume` continues it."""
        ...

    def detached_note(self, run: RunRecord) -> str:
        """What happened to the run when the user stops following it with Ctrl-C (markup)."""
        ...


def remote_configured(settings: Settings) -> bool:
    """True when both remote settings are set; a UserError naming the other if only one is."""
    has_url, has_key = bool(settings.url), settings.api_key is not None
    if has_url and not has_key:
        raise UserError(
            "AGENTMILL_URL is set but AGENTMILL_API_KEY is not: set the API key too "
            "(create one with `agentmill keys create --role operator` where the server's "
            "database is reachable), or unset AGENTMILL_URL to run locally"
        )
    if has_key and not has_url:
        raise UserError(
            "AGENTMILL_API_KEY is set but AGENTMILL_URL is not: set AGENTMILL_URL to the "
            "server's address (e.g. http://127.0.0.1:8080), or unset AGENTMILL_API_KEY "
            "to run locally"
        )
    return has_url


def read_source(settings: Settings, path: Path, workflow: str) -> RunSource:
    """The checked local config for `agentmill run`; nothing in remote mode."""
    if remote_configured(settings):
        return RunSource(project=None, config_path=None)
    from agentmill.engine.project import load_checked
    from agentmill.errors import NotFoundError

    loaded = load_checked(path)
    if workflow not in loaded.spec.workflows:
        known = ", ".join(sorted(loaded.spec.workflows)) or "none"
        raise NotFoundError(f"no workflow {workflow!r} in {path} (workflows: {known})")
    return RunSource(project=loaded.spec, config_path=str(path.resolve()))


@asynccontextmanager
async def open_client(settings: Settings, *, workers: bool) -> AsyncGenerator[RunsClient]:
    """The client for one command; `workers` executes local runs in this process."""
    if remote_configured(settings):
        from agentmill.cli.remote import RemoteClient

        async with RemoteClient.connect(settings) as remote:
            yield remote
        return
    async with open_engine(settings, workers=workers) as engine:
        yield LocalClient(engine)


@asynccontextmanager
async def open_engine(settings: Settings, *, workers: bool) -> AsyncGenerator[Engine]:
    """An engine for one command; `workers` launches execution in this process."""
    from agentmill.engine.engine import Engine

    engine = Engine(settings)
    try:
        await engine.start(launch_workers=workers)
        yield engine
    finally:
        await engine.stop()


class LocalClient:
    """Runs in this process's engine, on the configured database (the default tenant)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def start(
        self,
        source: RunSource,
        workflow: str,
        inputs: dict[str, str],
        *,
        budget: BudgetSpec | None = None,
    ) -> RunRecord:
        if source.project is None:
            raise InvalidStateError("a local run needs its config file")
        return await self.engine.submit(
            source.project, workflow, inputs, config_path=source.config_path, budget=budget
        )

    async def get_run(self, run_id: str) -> RunRecord:
        return await self.engine.store.get_run(run_id)

    async def plan(self, run: RunRecord) -> list[str]:
        return run.step_ids

    async def steps(self, run_id: str) -> list[StepRecord]:
        return await self.engine.store.steps(run_id)

    async def calls(self, run_id: str) -> list[CallSummary]:
        from agentmill.store.call_summary import summarize_call

        return [summarize_call(record) for record in await self.engine.store.calls(run_id)]

    async def list_runs(
        self, *, status: RunStatus | None, workflow: str | None, limit: int
    ) -> list[RunRecord]:
        return await self.engine.store.list_runs(status=status, workflow=workflow, limit=limit)

    async def events(self, run_id: str, *, after: int = 0) -> list[EventRecord]:
        await self.engine.store.get_run(run_id)
        return await self.engine.store.events(run_id, after=after)

    def follow(self, run_id: str, *, after: int = 0) -> AsyncIterator[EventRecord]:
        return self.engine.follow(run_id, after=after)

    async def last_seq(self, run_id: str) -> int:
        return await self.engine.store.last_seq(run_id)

    async def resume(self, run_id: str) -> RunRecord:
        return await self.engine.resume(run_id)

    async def cancel(self, run_id: str) -> RunRecord:
        return await self.engine.cancel(run_id)

    async def costs(
        self, *, group_by: CostGroup, since: float | None, tenant: str | None
    ) -> list[CostSummary]:
        from agentmill.store import cost_totals

        return await cost_totals(
            self.engine.store.engine, group_by=group_by, tenant=tenant, since=since
        )

    async def decide(
        self,
        run_id: str,
        step_id: str,
        *,
        approve: bool,
        comment: str | None,
        by: str,
        arguments: dict[str, Any] | None = None,
    ) -> ApprovalRecord:
        return await self.engine.decide(
            run_id, step_id, approve=approve, comment=comment, by=by, arguments=arguments
        )

    async def approvals(
        self, *, status: ApprovalStatus | None, run_id: str | None
    ) -> list[ApprovalRecord]:
        return await self.engine.approvals(status=status, run_id=run_id)

    def process_gone(self, run: RunRecord) -> bool:
        from agentmill.engine.liveness import owner_alive
        from agentmill.store import RunStatus

        in_flight = run.status in {RunStatus.RUNNING, RunStatus.PENDING}
        beat = self.engine.settings.heartbeat_interval
        return in_flight and not owner_alive(run, heartbeat_interval=beat)

    def detached_note(self, run: RunRecord) -> str:
        from agentmill.cli.report import closing_line
        from agentmill.store import RunStatus

        # Stopping this process's engine interrupts the run (resumable).
        return closing_line(replace(run, status=RunStatus.INTERRUPTED))
