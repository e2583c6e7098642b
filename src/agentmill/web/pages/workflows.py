"""The workflows page: each workflow of the server's config, and a form to start one.

GET /workflows lists them with their inputs, steps, triggers and recent runs;
GET /workflows/{name} draws the workflow and offers its inputs as a form, one field per
input by type. Starting goes through `Engine.submit` like POST /v1/runs: the same
coercion of the typed text (`spec/inputs.py`), the same InputError messages (the form
comes back with them and the values typed, 422). Each rendered form carries an
idempotency key of its own, so submitting it twice starts one run.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import RedirectResponse

from agentmill.errors import InputError, InvalidStateError, NotFoundError
from agentmill.server.schemas import NAME_PATTERN
from agentmill.server.services import Services, services
from agentmill.spec.models import InputSpec, ProjectSpec, StepSpec, TriggerSpec, WorkflowSpec
from agentmill.store import RunRecord
from agentmill.store.keys import Role
from agentmill.store.records import trigger_source_of
from agentmill.web.auth import CsrfChecked, SignedIn, WebUser, require_web_role
from agentmill.web.dag import layout_dag, render_dag
from agentmill.web.templating import render

__all__ = ["INPUT_PREFIX", "RECENT_RUNS", "router"]

router = APIRouter()

RECENT_RUNS = 5
INPUT_PREFIX = "input."
"""Form fields of inputs are `input.<name>` (other fields: csrf_token, idempotency_key)."""
_KEY_PREFIX = "dashboard-"

WorkflowName = Annotated[str, Path(max_length=200, pattern=NAME_PATTERN)]


@dataclass(frozen=True, kw_only=True)
class Field:
    """One input of the start form."""

    name: str
    kind: str
    """text, textarea, number, checkbox or json."""
    value: str
    checked: bool
    required: bool
    description: str
    step: str
    """`1` for integers, `any` for numbers."""
    type: str


@router.get("/workflows")
async def workflows_page(request: Request, user: SignedIn) -> Response:
    app = services(request)
    if app.project is None:
        return render(request, "workflows.html", user, workflows=None)
    spec = app.project.spec
    tenant = user.principal.tenant
    names = list(spec.workflows)
    recent = await asyncio.gather(*(_recent(app, name, tenant) for name in names))
    listed = [
        _summary(name, spec.workflows[name], _triggers_of(spec, name), runs)
        for name, runs in zip(names, recent, strict=True)
    ]
    return render(request, "workflows.html", user, workflows=listed)


@router.get("/workflows/{name:path}")
async def workflow_page(request: Request, user: SignedIn, name: WorkflowName) -> Response:
    return await _form_page(request, user, name, typed=None, error=None)


@router.post("/workflows/{name:path}/runs")
async def start_run(request: Request, user: CsrfChecked, name: WorkflowName) -> Response:
    require_web_role(user, Role.OPERATOR)
    app = services(request)
    workflow = _workflow(app, name)
    form = await request.form()
    typed = {key: value for key, value in form.multi_items() if isinstance(value, str)}
    key = typed.get("idempotency_key", "")
    if not key.startswith(_KEY_PREFIX) or len(key) > 100:
        key = _new_key()  # a form of ours always has one; without, no deduplication
    try:
        run = await app.engine.submit(
            app.require_project().spec,
            name,
            _raw_inputs(workflow, typed),
            config_path=str(app.config_path) if app.config_path is not None else None,
            tenant=user.principal.tenant,
            idempotency_key=key,
            trigger={"source": "dashboard", "key": user.actor},
            api_key_id=user.key_id,
        )
    except InputError as exc:
        return await _form_page(request, user, name, typed=typed, error=str(exc), status=422)
    except InvalidStateError:
        earlier = await app.engine.store.run_by_idempotency_key(user.principal.tenant, key)
        if earlier is None:
            raise
        message = (
            f"this form already started run {earlier.id} with other values; "
            "it is renewed: submit it again to start another run"
        )
        return await _form_page(request, user, name, typed=typed, error=message, status=409)
    return RedirectResponse(f"/runs/{run.id}", status_code=303)


def _raw_inputs(workflow: WorkflowSpec, typed: dict[str, str]) -> dict[str, Any]:
    """The form's text per input, for `coerce_inputs`: a checkbox is `true` or `false`;
    an empty field is left out (its default applies, or it is reported missing)."""
    raw: dict[str, Any] = {}
    for name, spec in workflow.inputs.items():
        field = INPUT_PREFIX + name
        if spec.type == "boolean":
            raw[name] = "true" if typed.get(field) else "false"
        elif typed.get(field, "").strip():
            raw[name] = typed[field]
    return raw


async def _form_page(
    request: Request,
    user: WebUser,
    name: str,
    *,
    typed: dict[str, str] | None,
    error: str | None,
    status: int = 200,
) -> Response:
    app = services(request)
    workflow = _workflow(app, name)
    spec = app.require_project().spec
    runs = await _recent(app, name, user.principal.tenant)
    return render(
        request,
        "workflow.html",
        user,
        status=status,
        workflow=_summary(name, workflow, _triggers_of(spec, name), runs),
        fields=[_field(key, input_, typed) for key, input_ in workflow.inputs.items()],
        steps=[_step(step) for step in workflow.steps],
        dag=render_dag(layout_dag(workflow.steps), label=name),
        idempotency_key=_new_key(),
        error=error,
        input_prefix=INPUT_PREFIX,
    )


def _workflow(app: Services, name: str) -> WorkflowSpec:
    workflows = app.require_project().spec.workflows
    if name not in workflows:
        known = ", ".join(sorted(workflows)) or "none"
        raise NotFoundError(f"no workflow {name!r} in this server's config (workflows: {known})")
    return workflows[name]


def _new_key() -> str:
    return _KEY_PREFIX + secrets.token_urlsafe(18)


async def _recent(app: Services, name: str, tenant: str) -> list[dict[str, Any]]:
    found = await app.engine.store.list_runs(tenant=tenant, workflow=name, limit=RECENT_RUNS)
    return [_run(run) for run in found]


def _run(run: RunRecord) -> dict[str, Any]:
    return {
        "id": run.id,
        "status": str(run.status),
        "trigger": trigger_source_of(run.trigger),
        "created_at": run.created_at,
    }


def _summary(
    name: str, workflow: WorkflowSpec, triggers: list[str], runs: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "name": name,
        "description": workflow.description,
        "inputs": [(key, spec.type, spec.required) for key, spec in workflow.inputs.items()],
        "steps": len(workflow.steps),
        "gates": sum(step.approval is not None for step in workflow.steps),
        "triggers": triggers,
        "runs": runs,
    }


def _triggers_of(spec: ProjectSpec, name: str) -> list[str]:
    """The config's triggers that start `name`, described in a line each."""
    return [_describe(trigger) for trigger in spec.triggers if trigger.github.workflow == name]


def _describe(trigger: TriggerSpec) -> str:
    github = trigger.github
    events = ", ".join(github.events)
    return f"GitHub webhook: {events} (concurrency: {github.concurrency.mode})"


def _step(step: StepSpec) -> dict[str, Any]:
    kind = "approval gate" if step.approval is not None else f"agent {step.agent}"
    extra = [f"needs {', '.join(step.needs)}"] if step.needs else []
    extra += ["foreach"] if step.foreach else []
    extra += ["conditional"] if step.when else []
    return {"id": step.id, "kind": kind, "extra": "; ".join(extra)}


_KINDS = {
    "string": "text",
    "integer": "number",
    "number": "number",
    "boolean": "checkbox",
    "list": "json",
    "object": "json",
}


def _field(name: str, spec: InputSpec, typed: dict[str, str] | None) -> Field:
    kind = _KINDS[spec.type]
    default = _shown_default(spec)
    if kind == "text" and (len(default) > 80 or "\n" in default):
        kind = "textarea"
    value = typed.get(INPUT_PREFIX + name, "") if typed is not None else default
    if kind == "checkbox":
        checked = (
            bool(typed.get(INPUT_PREFIX + name)) if typed is not None else spec.default is True
        )
    else:
        checked = False
    return Field(
        name=name,
        kind=kind,
        value=value,
        checked=checked,
        required=spec.required,
        description=spec.description,
        step="1" if spec.type == "integer" else "any",
        type=spec.type,
    )


def _shown_default(spec: InputSpec) -> str:
    """The default as the field shows it: text as is, lists and objects as JSON."""
    if spec.required or spec.default is None:
        return ""
    if spec.type in ("list", "object"):
        return json.dumps(spec.default, indent=2, ensure_ascii=False)
    if isinstance(spec.default, bool):
        return "true" if spec.default else "false"
    return str(spec.default)
