"""/v1/workflows: the workflows of the server's config, and checking a config file."""

from __future__ import annotations

import asyncio

import yaml
from fastapi import APIRouter, Request

from agentmill.errors import ConfigError, ConfigProblem, NotFoundError
from agentmill.server.auth import Viewer
from agentmill.server.schemas import (
    ConfigProblemOut,
    ValidateRequest,
    ValidateResult,
    WorkflowList,
    WorkflowName,
    WorkflowOut,
)
from agentmill.server.services import services
from agentmill.spec.loader import load_project_text

__all__ = ["router"]

router = APIRouter(tags=["workflows"])

_POSTED_FILE = "posted.yaml"


@router.get("/workflows", summary="List the workflows of the server's config")
async def list_workflows(request: Request, _: Viewer) -> WorkflowList:
    """Empty when the server runs without a config file."""
    project = services(request).project
    if project is None:
        return WorkflowList(items=[])
    workflows = project.spec.workflows
    return WorkflowList(
        items=[WorkflowOut.from_spec(name, spec) for name, spec in workflows.items()]
    )


@router.get("/workflows/{name}", summary="Show one workflow: its inputs and steps")
async def show_workflow(request: Request, name: WorkflowName, _: Viewer) -> WorkflowOut:
    workflows = services(request).require_project().spec.workflows
    if name not in workflows:
        known = ", ".join(sorted(workflows)) or "none"
        raise NotFoundError(f"no workflow {name!r} (workflows: {known})")
    return WorkflowOut.from_spec(name, workflows[name])


@router.post("/workflows/validate", summary="Check a config file without saving or running it")
async def validate_config(body: ValidateRequest, _: Viewer) -> ValidateResult:
    """Every problem at once, with its line; a config with problems still answers 200
    (the request was fine, the config is not)."""
    problems = await asyncio.to_thread(_problems_of, body.config)
    return ValidateResult(
        valid=not problems, problems=[ConfigProblemOut.from_problem(p) for p in problems]
    )


def _problems_of(text: str) -> list[ConfigProblem]:
    try:
        load_project_text(text, _POSTED_FILE)
    except ConfigError as exc:
        return exc.problems
    except yaml.YAMLError as exc:
        # The loader reports YAML errors as problems, except those PyYAML's reader raises
        # before parsing starts (e.g. a NUL character).
        return [_problem(f"invalid YAML: {exc}", "remove control characters from the text")]
    except RecursionError:
        # PyYAML composes nested collections recursively; a hostile document can go deeper
        # than Python allows.
        return [
            _problem(
                "the document is nested too deeply",
                "a config file needs only a few levels of nesting",
            )
        ]
    return []


def _problem(message: str, hint: str) -> ConfigProblem:
    return ConfigProblem(file=_POSTED_FILE, line=None, message=message, hint=hint)
