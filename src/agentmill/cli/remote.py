"""The CLI as a client of `agentmill serve`: the `RunsClient` operations over HTTP.

Records are rebuilt from the API's JSON so the live view and the reports are the same code
as in local mode (fields the API does not return, such as a run's owner, are left empty).
Events are followed over Server-Sent Events until the server answers 204 (the run has
ended for good), reconnecting with `Last-Event-ID` whenever a stream ends (a server
restart loses or repeats no event).
Errors map back to the CLI's own: 404 NotFoundError, 409 InvalidStateError, 422 InputError,
401/403 a UserError naming the fix. The API key is sent only as a header, never shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from agentmill.cli.sse import SseParser
from agentmill.errors import (
    AgentmillError,
    InputError,
    InvalidStateError,
    NotFoundError,
    UserError,
)
from agentmill.settings import Settings
from agentmill.store import (
    CostSummary,
    EventRecord,
    RunRecord,
    RunStatus,
    StepRecord,
    StepStatus,
)
from agentmill.store.approvals import ApprovalRecord, ApprovalStatus
from agentmill.store.call_summary import CallSummary
from agentmill.store.costs import CostGroup

if TYPE_CHECKING:
    from agentmill.cli.client import RunSource
    from agentmill.spec.models import BudgetSpec

__all__ = ["RemoteClient", "ServerUnreachable"]

_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
_STREAM_TIMEOUT = httpx.Timeout(30.0, connect=5.0, read=60.0)
"""The server sends a keepalive comment every 15 s; a minute of silence is a dead stream."""
_RECONNECTS = 8
_MAX_BACKOFF = 5.0
_MAX_RETRY_AFTER = 30.0
_PAGE = 200


class ServerUnreachable(UserError):
    """The server at AGENTMILL_URL did not answer (refused, timed out, reset)."""


class _RunEnded(Exception):
    """The server answered 204 to a stream: the run has ended and nothing is left to send."""


class _RetryLater(UserError):
    """A 429 (rate limit, stream cap) or 502/503/504 (server stopping, a proxy): worth
    trying again after `wait` seconds."""

    def __init__(self, message: str, *, wait: float) -> None:
        super().__init__(message)
        self.wait = wait


# records from the API's JSON


def run_from_json(body: dict[str, Any]) -> RunRecord:
    return RunRecord(
        id=body["id"],
        tenant=body["tenant"],
        workflow=body["workflow"],
        status=RunStatus(body["status"]),
        inputs=body.get("inputs") or {},
        outputs=body.get("outputs"),
        error=body.get("error"),
        snapshot={},
        config_path=None,
        usage=body.get("usage"),
        created_at=body["created_at"],
        started_at=body.get("started_at"),
        finished_at=body.get("finished_at"),
        owner=None,
        owner_pid=None,
        owner_host=None,
        heartbeat_at=None,
        cancel_requested=False,
        parent_run_id=body.get("parent_run_id"),
        trigger=body.get("trigger"),
    )


def step_from_json(run_id: str, body: dict[str, Any]) -> StepRecord:
    return StepRecord(
        run_id=run_id,
        key=body["key"],
        step_id=body["step_id"],
        item_index=body.get("index"),
        status=StepStatus(body["status"]),
        attempt=body["attempt"],
        output=body.get("output"),
        error=body.get("error"),
        usage=body.get("usage"),
        model=body.get("model"),
        started_at=body.get("started_at"),
        finished_at=body.get("finished_at"),
        cost_usd=body.get("cost_usd"),
        details=body.get("details"),
        agent=body.get("agent"),
    )


def cost_from_json(body: dict[str, Any]) -> CostSummary:
    return CostSummary(
        usd=float(body["usd"]),
        calls=int(body["calls"]),
        unpriced_calls=int(body["unpriced_calls"]),
        estimated_calls=int(body.get("estimated_calls", 0)),
        group=body.get("group"),
    )


def approval_from_json(body: dict[str, Any]) -> ApprovalRecord:
    """An approval from ApprovalOut (which does not repeat the tenant: left empty)."""
    return ApprovalRecord(
        run_id=body["run_id"],
        step_id=body["step_id"],
        tenant="",
        status=ApprovalStatus(body["status"]),
        prompt=body.get("prompt") or "",
        on_timeout=body.get("on_timeout") or "reject",
        created_at=body["created_at"],
        expires_at=body["expires_at"],
        comment=body.get("comment"),
        decided_by=body.get("decided_by"),
        decided_at=body.get("decided_at"),
        tool=body.get("tool"),
        arguments=body.get("arguments"),
        reason=body.get("reason"),
        edited_arguments=body.get("edited_arguments"),
    )


def event_from_json(body: dict[str, Any]) -> EventRecord:
    return EventRecord(
        run_id=body["run_id"],
        seq=body["seq"],
        kind=body["kind"],
        step=body.get("step"),
        attempt=body.get("attempt", 0),
        data=body.get("data") or {},
        ts=body["ts"],
    )


# errors


def _problem_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200].strip() or response.reason_phrase
    if isinstance(body, dict):
        detail = body.get("detail") or body.get("title")  # pyright: ignore[reportUnknownMemberType]
        if detail:
            return str(detail)  # pyright: ignore[reportUnknownArgumentType]
    return response.reason_phrase


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(max(float(response.headers.get("retry-after", "1")), 0.0), _MAX_RETRY_AFTER)
    except ValueError:
        return 1.0


def error_for(response: httpx.Response) -> AgentmillError:
    """The CLI error for a problem+json answer."""
    status, detail = response.status_code, _problem_detail(response)
    if status == 401:
        return UserError(
            "the server refused the API key in AGENTMILL_API_KEY: it is missing, invalid or "
            "revoked. Create one with `agentmill keys create --tenant T --role operator` "
            "where the server's database is reachable, and set AGENTMILL_API_KEY to it"
        )
    if status == 403:
        return UserError(
            f"the API key in AGENTMILL_API_KEY lacks the role for this ({detail}); "
            "use a key with that role: `agentmill keys create --tenant T --role operator`"
        )
    if status == 404:
        return NotFoundError(detail)
    if status == 409:
        return InvalidStateError(detail)
    if status in {413, 422}:
        return InputError(detail)
    if status == 429:
        wait = _retry_after(response)
        return _RetryLater(f"the server is rate-limiting this key: {detail}", wait=wait)
    if status in {502, 503, 504}:
        wait = _retry_after(response)
        return _RetryLater(f"the server is not available right now ({status}): {detail}", wait=wait)
    if 400 <= status < 500:
        return UserError(f"the server rejected the request ({status}): {detail}")
    return AgentmillError(f"the server failed ({status}): {detail}")


def _unreachable(url: str, exc: httpx.HTTPError) -> ServerUnreachable:
    if isinstance(exc, httpx.TimeoutException):
        reason = "it did not answer in time"
    else:
        reason = "the connection failed" if str(exc) == "" else str(exc)
    return ServerUnreachable(
        f"the agentmill server at {url} (AGENTMILL_URL) is not reachable ({reason}): "
        "check that `agentmill serve` runs there and the address is right, "
        "or unset AGENTMILL_URL and AGENTMILL_API_KEY to run locally"
    )


# the client


class RemoteClient:
    """`RunsClient` over the HTTP API of an `agentmill serve`."""

    def __init__(self, http: httpx.AsyncClient, url: str) -> None:
        self._http = http
        self._url = url

    @classmethod
    @asynccontextmanager
    async def connect(cls, settings: Settings) -> AsyncGenerator[RemoteClient]:
        url = (settings.url or "").rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise UserError(
                f"AGENTMILL_URL {url!r} is not an http:// or https:// address "
                "(e.g. http://127.0.0.1:8080)"
            )
        assert settings.api_key is not None
        headers = {"Authorization": f"Bearer {settings.api_key.get_secret_value()}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=_TIMEOUT) as http:
            yield cls(http, url)

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request's JSON body; a 429 or 503 waits its Retry-After and tries once more."""
        for attempt in (1, 2):
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                raise _unreachable(self._url, exc) from None
            if response.is_success:
                return self._json(response)
            error = error_for(response)
            if not isinstance(error, _RetryLater) or attempt == 2:
                raise error
            await asyncio.sleep(error.wait)
        raise AssertionError("unreachable")

    def _json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise UserError(
                f"{self._url} (AGENTMILL_URL) did not answer like an agentmill server; "
                "check the address points at `agentmill serve`"
            ) from None

    async def _detail(self, run_id: str) -> dict[str, Any]:
        return await self._call("GET", _runs(run_id))

    async def start(
        self,
        source: RunSource,
        workflow: str,
        inputs: dict[str, str],
        *,
        budget: BudgetSpec | None = None,
    ) -> RunRecord:
        """Start the server's workflow of that name; the local config file is not sent."""
        body: dict[str, Any] = {"workflow": workflow, "inputs": inputs}
        if budget is not None:
            body["budget"] = budget.model_dump(exclude_none=True)
        return run_from_json(await self._call("POST", "/v1/runs", json=body))

    async def get_run(self, run_id: str) -> RunRecord:
        return run_from_json(await self._detail(run_id))

    async def plan(self, run: RunRecord) -> list[str]:
        return list((await self._detail(run.id)).get("plan") or [])

    async def steps(self, run_id: str) -> list[StepRecord]:
        detail = await self._detail(run_id)
        return [step_from_json(run_id, step) for step in detail.get("steps") or []]

    async def calls(self, run_id: str) -> list[CallSummary]:
        body = await self._call("GET", _runs(run_id, "calls"))
        return [CallSummary.from_json(item) for item in body["items"]]

    async def list_runs(
        self, *, status: RunStatus | None, workflow: str | None, limit: int
    ) -> list[RunRecord]:
        params: dict[str, str | int] = {}
        if status is not None:
            params["status"] = str(status)
        if workflow is not None:
            params["workflow"] = workflow
        found: list[RunRecord] = []
        while len(found) < limit:
            params["limit"] = min(limit - len(found), _PAGE)
            page = await self._call("GET", "/v1/runs", params=params)
            found.extend(run_from_json(item) for item in page["items"])
            if not page.get("next_cursor") or not page["items"]:
                break
            params["cursor"] = page["next_cursor"]
        return found

    async def events(self, run_id: str, *, after: int = 0) -> list[EventRecord]:
        found: list[EventRecord] = []
        while True:
            page = await self._call("GET", _runs(run_id, "events"), params={"after": after})
            batch = [event_from_json(item) for item in page["items"]]
            found.extend(batch)
            if not batch or batch[-1].seq >= page.get("last_seq", 0):
                return found
            after = batch[-1].seq

    async def last_seq(self, run_id: str) -> int:
        return int((await self._detail(run_id)).get("last_seq") or 0)

    async def resume(self, run_id: str) -> RunRecord:
        return run_from_json(await self._call("POST", _runs(run_id, "resume")))

    async def cancel(self, run_id: str) -> RunRecord:
        return run_from_json(await self._call("POST", _runs(run_id, "cancel")))

    async def costs(
        self, *, group_by: CostGroup, since: float | None, tenant: str | None
    ) -> list[CostSummary]:
        if tenant is not None:
            raise UserError(
                "--tenant works on the local database only; a server shows the costs of "
                "your API key's tenant: unset AGENTMILL_URL to read the local database"
            )
        params: dict[str, Any] = {"group_by": group_by}
        if since is not None:
            params["since"] = since
        body = await self._call("GET", "/v1/costs", params=params)
        return [cost_from_json(item) for item in body["items"]]

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
        body: dict[str, Any] = {"decision": "approve" if approve else "reject"}
        if comment is not None:
            body["comment"] = comment
        if arguments is not None:
            body["arguments"] = arguments
        path = _runs(run_id, "approvals", step_id)
        return approval_from_json(await self._call("POST", path, json=body))

    async def approvals(
        self, *, status: ApprovalStatus | None, run_id: str | None
    ) -> list[ApprovalRecord]:
        if run_id is None:
            params = {"status": str(status)} if status is not None else {}
            body = await self._call("GET", "/v1/approvals", params=params)
        else:
            body = await self._call("GET", _runs(run_id, "approvals"))
        found = [approval_from_json(item) for item in body["items"]]
        return [a for a in found if status is None or a.status is status]

    def process_gone(self, run: RunRecord) -> bool:
        return False  # the servers adopt the runs of a dead one themselves

    def detached_note(self, run: RunRecord) -> str:
        from agentmill.cli.report import closing_line

        following = replace(run, status=RunStatus.RUNNING)
        return f"stopped following; it continues on the server\n{closing_line(following)}"

    async def follow(self, run_id: str, *, after: int = 0) -> AsyncIterator[EventRecord]:
        """Events over SSE until the run ends, reconnecting after the last one seen.

        The server keeps a stream open until the run has ended for good (through a resume,
        or the adoption of a dead worker's run); a stream also ends when its server shuts
        down. Whenever one ends we reconnect with `Last-Event-ID`, so the server decides:
        it answers 204 once the run has ended and we have seen its last event.
        """
        last, failures = after, 0
        while True:
            wait: float | None = None
            progressed = False
            try:
                async with contextlib.aclosing(self._stream(run_id, after=last)) as stream:
                    async for event in stream:
                        if event.seq <= last:
                            continue  # already delivered before a reconnect
                        last, failures, progressed = event.seq, 0, True
                        yield event
                if progressed:
                    continue  # it ended after new events: ask again at once
                error: AgentmillError = InvalidStateError(
                    f"the event stream of run {run_id} keeps ending before the run does; "
                    f"follow it again with: agentmill runs logs --follow {run_id}"
                )
            except _RunEnded:
                return
            except (_RetryLater, ServerUnreachable, httpx.TransportError) as exc:
                error, wait = self._dropped(exc)
            failures += 1
            if failures > _RECONNECTS:
                raise error
            await asyncio.sleep(wait if wait is not None else _backoff(failures))

    def _dropped(self, exc: Exception) -> tuple[AgentmillError, float | None]:
        """The error to report if reconnecting keeps failing, and how long to wait."""
        if isinstance(exc, _RetryLater):
            return exc, exc.wait
        if isinstance(exc, httpx.TransportError):
            return _unreachable(self._url, exc), None
        assert isinstance(exc, AgentmillError)
        return exc, None

    async def _stream(self, run_id: str, *, after: int) -> AsyncGenerator[EventRecord]:
        """One SSE connection's events; ends when the server closes the stream, raises
        `_RunEnded` when it answers that the run has nothing more (204)."""
        headers = {"Accept": "text/event-stream", "Last-Event-ID": str(after)}
        path = _runs(run_id, "events")
        async with self._http.stream(
            "GET", path, headers=headers, timeout=_STREAM_TIMEOUT
        ) as response:
            if response.status_code == 204:
                raise _RunEnded
            if not response.is_success:
                await response.aread()
                raise error_for(response)
            parser = SseParser()
            async for line in response.aiter_lines():
                frame = parser.feed(line)
                if frame is not None:
                    yield event_from_json(json.loads(frame.data))


def _runs(run_id: str, *rest: str) -> str:
    """A path under /v1/runs with each user-given part escaped (`../x` stays one segment)."""
    parts = [quote(part, safe="") for part in (run_id, *rest)]
    return "/v1/runs/" + "/".join(parts)


def _backoff(failures: int) -> float:
    return min(0.25 * 2**failures, _MAX_BACKOFF)
