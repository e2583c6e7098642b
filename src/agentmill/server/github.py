"""GitHub webhooks as pure logic: signatures, payloads, and which triggers a delivery starts.

No I/O here: the route (`server/routes/webhooks.py`) reads the request, records the delivery
(`store/deliveries.py`) and submits the runs this module plans.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs

from agentmill.engine.engine import ConcurrencyMode
from agentmill.errors import TemplateRenderError
from agentmill.server.limits import refuse_deep_json
from agentmill.server.problems import ApiProblem
from agentmill.spec.models import TriggerSpec
from agentmill.spec.templates import render

__all__ = [
    "Delivery",
    "PlannedRun",
    "SkippedTrigger",
    "event_matches",
    "parse_payload",
    "plan_runs",
    "sign",
    "verify_signature",
]

SIGNATURE_PREFIX = "sha256="
JSON_CONTENT_TYPE = "application/json"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"


def sign(secret: str, body: bytes) -> str:
    """The `X-Hub-Signature-256` value GitHub sends for `body`: `sha256=<hex HMAC>`."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return SIGNATURE_PREFIX + digest


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    """Whether `header` is the SHA-256 signature of `body` under `secret`.

    Only `sha256=` signatures count: the legacy `X-Hub-Signature` (`sha1=`) is not accepted
    in its place. The digests are compared in constant time.
    """
    if not secret or header is None or not header.startswith(SIGNATURE_PREFIX):
        return False
    return hmac.compare_digest(sign(secret, body).encode(), header.strip().encode())


def parse_payload(body: bytes, content_type: str | None) -> dict[str, Any]:
    """The JSON object of a delivery, sent as JSON or as a form with a `payload` field (the
    two content types GitHub offers); any other content type is a 415."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type not in (JSON_CONTENT_TYPE, FORM_CONTENT_TYPE):
        raise ApiProblem(
            415,
            "unsupported-media-type",
            f"a delivery must be sent as {JSON_CONTENT_TYPE} or {FORM_CONTENT_TYPE} "
            f"(got {media_type or 'no Content-Type'}); set the webhook's content type in GitHub",
        )
    try:
        if media_type == FORM_CONTENT_TYPE:
            fields = parse_qs(body.decode(), strict_parsing=False)
            if "payload" not in fields:
                raise ApiProblem(400, "invalid-payload", "the form body has no `payload` field")
            raw = fields["payload"][0].encode()
        else:
            raw = body
        refuse_deep_json(raw)
        payload: object = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiProblem(400, "invalid-payload", f"the payload is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ApiProblem(400, "invalid-payload", "the payload must be a JSON object")
    return cast(dict[str, Any], payload)


@dataclass(frozen=True, kw_only=True)
class Delivery:
    """One webhook delivery: its id, event name and parsed payload."""

    id: str
    event: str
    payload: dict[str, Any]

    @property
    def action(self) -> str | None:
        action = self.payload.get("action")
        return action if isinstance(action, str) else None

    def context(self) -> dict[str, Any]:
        """What trigger templates can read (spec.validate.TRIGGER_VARIABLES)."""
        return {
            "event": self.event,
            "action": self.action,
            "payload": self.payload,
            "delivery": self.id,
        }


@dataclass(frozen=True, kw_only=True)
class PlannedRun:
    """A run a delivery starts: a matching trigger with its inputs and key rendered."""

    trigger: int
    """Position of the trigger in the config (0-based)."""
    workflow: str
    inputs: dict[str, str]
    concurrency_key: str | None
    concurrency_mode: ConcurrencyMode
    idempotency_key: str
    """`github:<delivery>:<trigger>`: a retried delivery finds the run it already started."""


@dataclass(frozen=True, kw_only=True)
class SkippedTrigger:
    """A matching trigger that starts nothing, and why (shown to whoever sent the delivery)."""

    trigger: int
    workflow: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"trigger": self.trigger + 1, "workflow": self.workflow, "message": self.reason}


def event_matches(patterns: list[str], event: str, action: str | None) -> bool:
    """Whether `event` (with `action`) fits one of `pull_request` or `pull_request.opened`."""
    for pattern in patterns:
        name, _, wanted = pattern.partition(".")
        if name == event and (not wanted or wanted == action):
            return True
    return False


def plan_runs(
    triggers: list[TriggerSpec], delivery: Delivery
) -> tuple[list[PlannedRun], list[SkippedTrigger]]:
    """The runs `delivery` starts, and the matching triggers whose templates failed."""
    planned: list[PlannedRun] = []
    skipped: list[SkippedTrigger] = []
    context = delivery.context()
    for position, spec in enumerate(triggers):
        trigger = spec.github
        if not event_matches(trigger.events, delivery.event, delivery.action):
            continue
        try:
            planned.append(_plan_one(position, spec, delivery.id, context))
        except TemplateRenderError as exc:
            skipped.append(
                SkippedTrigger(trigger=position, workflow=trigger.workflow, reason=str(exc))
            )
    return planned, skipped


def _plan_one(
    position: int, spec: TriggerSpec, delivery_id: str, context: dict[str, Any]
) -> PlannedRun:
    trigger = spec.github
    inputs = {name: render(text, context) for name, text in trigger.inputs.items()}
    mode = trigger.concurrency.mode
    key = None
    if mode != "allow":
        # Namespaced by workflow: a review and a lint of the same PR must not cancel each other.
        key = _fit(f"github:{trigger.workflow}:{render(trigger.concurrency.key, context)}", 300)
    return PlannedRun(
        trigger=position,
        workflow=trigger.workflow,
        inputs=inputs,
        concurrency_key=key,
        concurrency_mode=mode,
        idempotency_key=_fit(f"github:{delivery_id}:{position}", 200),
    )


def _fit(key: str, limit: int) -> str:
    """`key` as stored: unchanged when short enough, else a prefix and its SHA-256, so
    long repository names, branches or delivery ids still give distinct keys that fit."""
    if len(key) <= limit:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"{key[: limit - len(digest) - 1]}~{digest}"
