"""/v1/webhooks/github: GitHub deliveries start the workflows their `triggers:` name.

Per request, in this order: the secret must be configured (503), the body is read (the
BodySizeLimit middleware refuses it with 413 past `webhook_max_bytes`), the signature must
match (401), the event and delivery headers must be there (400), the content type must be
JSON or a form (415), the payload must nest at most `MAX_JSON_DEPTH` deep and parse (400), a
`ping` is answered, the delivery is claimed once (`store/deliveries.py`) and its runs
are submitted. Submitting only writes rows and enqueues, so the answer comes quickly.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Request, status
from pydantic import BaseModel, Field

from agentmill.errors import AgentmillError
from agentmill.server.github import (
    Delivery,
    PlannedRun,
    SkippedTrigger,
    parse_payload,
    plan_runs,
    verify_signature,
)
from agentmill.server.problems import PROBLEM_RESPONSES, ApiProblem
from agentmill.server.services import Services, services
from agentmill.store.deliveries import DeliveryStore

__all__ = ["router"]

logger = logging.getLogger("agentmill.server.webhooks")

router = APIRouter(tags=["webhooks"])

SOURCE = "github"
_EVENT_NAME = re.compile(r"^[a-z_]{1,100}$")
_DELIVERY_ID = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")


class TriggerProblem(BaseModel):
    trigger: int = Field(description="Position of the trigger in the config file (1-based)")
    workflow: str
    message: str


class WebhookOut(BaseModel):
    delivery: str = Field(description="The `X-GitHub-Delivery` id")
    outcome: Literal["started", "duplicate", "ignored"] = Field(
        description="`started`: runs were started; `duplicate`: this delivery id was already "
        "received (the runs are those it started); `ignored`: no trigger matches the event"
    )
    runs: list[str] = Field(description="Ids of the runs this delivery started")
    errors: list[TriggerProblem] = Field(
        default_factory=list[TriggerProblem],
        description="Matching triggers that could not start their run, and why",
    )


_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The event payload exactly as GitHub sends it: the signature covers "
        "these bytes. JSON, or a form whose `payload` field holds the JSON.",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "properties": {"payload": {"type": "string"}},
                    "required": ["payload"],
                }
            },
        },
    }
}

_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: PROBLEM_RESPONSES[422] | {"description": "A header is missing or the payload is not JSON"},
    401: PROBLEM_RESPONSES[401] | {"description": "The signature is missing or does not match"},
    413: PROBLEM_RESPONSES[413] | {"description": "The body is over `webhook_max_bytes`"},
    415: PROBLEM_RESPONSES[413]
    | {"description": "The body is neither `application/json` nor a form with `payload`"},
    422: PROBLEM_RESPONSES[422]
    | {"description": "Every matching trigger failed to start its run (see `errors`)"},
    503: PROBLEM_RESPONSES[422]
    | {"description": "No webhook secret is configured (AGENTMILL_GITHUB_WEBHOOK_SECRET)"},
}

_DESCRIPTION = """\
Receives GitHub webhook deliveries; no API key. Each delivery is authenticated by
`X-Hub-Signature-256`, the HMAC-SHA256 of the raw body under the secret set in
`AGENTMILL_GITHUB_WEBHOOK_SECRET`. Deliveries are deduplicated by `X-GitHub-Delivery`:
a redelivery answers `duplicate` with the runs the first one started. Events start the
workflows named by the config's `triggers:`; see docs/webhooks.md.
"""


@router.post(
    "/webhooks/github",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Receive a GitHub webhook delivery",
    description=_DESCRIPTION,
    responses=_RESPONSES,
    openapi_extra=_REQUEST_BODY,
)
async def github_webhook(
    request: Request,
    signature: Annotated[
        str | None,
        Header(alias="X-Hub-Signature-256", description="`sha256=` + hex HMAC-SHA256 of the body"),
    ] = None,
    event: Annotated[
        str | None, Header(alias="X-GitHub-Event", description="The event, e.g. `pull_request`")
    ] = None,
    delivery_id: Annotated[
        str | None, Header(alias="X-GitHub-Delivery", description="Unique id of the delivery")
    ] = None,
) -> WebhookOut:
    app = services(request)
    try:
        delivery = await _authentic_delivery(request, app, signature, event, delivery_id)
    except ApiProblem as problem:
        _count(app, "error" if problem.status >= 500 else "rejected")
        raise
    if delivery.event == "ping":
        _count(app, "ignored")
        return WebhookOut(delivery=delivery.id, outcome="ignored", runs=[])
    return await _process(app, delivery)


async def _authentic_delivery(
    request: Request,
    app: Services,
    signature: str | None,
    event: str | None,
    delivery_id: str | None,
) -> Delivery:
    """The delivery, once the secret, the signature and the headers have been checked."""
    secret = app.settings.github_webhook_secret
    if secret is None or not secret.get_secret_value():
        raise ApiProblem(
            503,
            "webhooks-not-configured",
            "GitHub webhooks are not enabled on this server: set "
            "AGENTMILL_GITHUB_WEBHOOK_SECRET to the webhook's secret and restart it",
        )
    body = await request.body()
    if not verify_signature(secret.get_secret_value(), body, signature):
        raise ApiProblem(
            401,
            "bad-signature",
            "the X-Hub-Signature-256 header is missing or does not match the body; "
            "check that the webhook's secret is the one this server has",
        )
    if event is None or not _EVENT_NAME.match(event):
        raise ApiProblem(400, "missing-header", "the X-GitHub-Event header is missing or invalid")
    if delivery_id is None or not _DELIVERY_ID.match(delivery_id):
        raise ApiProblem(
            400, "missing-header", "the X-GitHub-Delivery header is missing or invalid"
        )
    payload = parse_payload(body, request.headers.get("content-type"))
    return Delivery(id=delivery_id, event=event, payload=payload)


async def _process(app: Services, delivery: Delivery) -> WebhookOut:
    """Claim the delivery once, start its runs, and record how that went."""
    store = DeliveryStore(app.engine.store.engine, tenant=app.settings.github_webhook_tenant)
    claim = await store.claim(SOURCE, delivery.id, event=delivery.event)
    if not claim.taken:
        _count(app, "duplicate")
        return WebhookOut(delivery=delivery.id, outcome="duplicate", runs=claim.record.run_ids)
    try:
        run_ids, skipped = await _start_runs(app, delivery)
    except Exception:
        # Recorded as `error`, which a redelivery may retry: the runs already started are
        # found again through their idempotency keys.
        await store.finish(SOURCE, delivery.id, outcome="error", run_ids=[])
        _count(app, "error")
        raise
    errors = [TriggerProblem(**s.to_json()) for s in skipped]
    if skipped and not run_ids:
        await store.finish(SOURCE, delivery.id, outcome="error", run_ids=[])
        _count(app, "error")
        raise ApiProblem(
            422,
            "trigger-failed",
            "no run started: every matching trigger failed (fix the config, restart the "
            "server and redeliver)",
            errors=[error.model_dump() for error in errors],
        )
    outcome = "started" if run_ids else "ignored"
    await store.finish(SOURCE, delivery.id, outcome=outcome, run_ids=run_ids)
    _count(app, outcome)
    logger.info("github delivery %s (%s): %s %s", delivery.id, delivery.event, outcome, run_ids)
    return WebhookOut(delivery=delivery.id, outcome=outcome, runs=run_ids, errors=errors)


async def _start_runs(app: Services, delivery: Delivery) -> tuple[list[str], list[SkippedTrigger]]:
    """Submit a run for every matching trigger; a trigger that cannot start is skipped."""
    if app.project is None:
        return [], []
    planned, skipped = plan_runs(app.project.spec.triggers, delivery)
    run_ids: list[str] = []
    for plan in planned:
        try:
            run_ids.append(await _submit(app, delivery, plan))
        except AgentmillError as exc:  # inputs that do not fit the workflow, and the like
            skipped.append(
                SkippedTrigger(trigger=plan.trigger, workflow=plan.workflow, reason=str(exc))
            )
    for skip in skipped:
        logger.warning(
            "github delivery %s: trigger %d (%s) skipped: %s",
            delivery.id,
            skip.trigger + 1,
            skip.workflow,
            skip.reason,
        )
    return run_ids, skipped


async def _submit(app: Services, delivery: Delivery, plan: PlannedRun) -> str:
    assert app.project is not None
    run = await app.engine.submit(
        app.project.spec,
        plan.workflow,
        plan.inputs,
        config_path=str(app.config_path) if app.config_path is not None else None,
        tenant=app.settings.github_webhook_tenant,
        idempotency_key=plan.idempotency_key,
        concurrency_key=plan.concurrency_key,
        concurrency_mode=plan.concurrency_mode,
        trigger={
            "source": SOURCE,
            "event": delivery.event,
            "action": delivery.action,
            "delivery": delivery.id,
        },
    )
    return run.id


def _count(app: Services, outcome: str) -> None:
    app.metrics.webhooks.labels(SOURCE, outcome).inc()
