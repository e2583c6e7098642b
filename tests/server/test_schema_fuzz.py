"""schemathesis over the app's own OpenAPI schema, with a valid key: no 5xx, every
response (status, content type, body) as the schema documents it, every request the schema
allows past the server's request validation, and `Allow` naming every method of a path.

The app runs in-process with its lifespan (engine started), on SQLite and on PostgreSQL.
Operations taking a run id are fuzzed twice: with generated ids (mostly unknown), and with
the id of a real, finished run so bodies and queries reach the code behind the lookup.
Starting runs is fuzzed a third time with a known workflow and any text as its input.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import jsonschema_rs  # schemathesis validates with it
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from agentmill.agents.models import override_models
from agentmill.server.app import create_app
from agentmill.server.limits import MAX_JSON_DEPTH
from agentmill.settings import Settings
from agentmill.spec.loader import load_project_text
from agentmill.store import Store
from agentmill.store.keys import KeyStore, Role
from tests.fakes import ScriptedModel
from tests.server.conftest import PROJECT

pytestmark = pytest.mark.filterwarnings(
    # schemathesis' negative-mode generators use `random` inside strategies (its issue).
    "ignore:Do not use the `random` module inside strategies"
    ":hypothesis.errors.HypothesisDeprecationWarning"
)


def schema_valid_requests_pass_validation(
    ctx: object, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """A request generated from the schema (positive mode) is never refused by the server's
    request validation: the schema says everything the request models enforce."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 422:
        return None
    if getattr(meta.phase.data, "mutations", ()):
        return None  # schemathesis labels some mutated (invalid) cases positive
    problem = response.json()
    if problem.get("type") == "urn:agentmill:problem:invalid-request":
        raise AssertionError(
            f"the schema allows what the server refused: {problem['detail']}\n{case.body!r}"
        )
    return None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    unsupported_method,
    allow_header_conformance,
    schema_valid_requests_pass_validation,
]

FUZZ = settings(
    max_examples=20,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)


def _app(settings: Settings) -> FastAPI:
    return create_app(settings, project=load_project_text(PROJECT, "agentmill.yaml"), workers=2)


# The schema is the app's own document; building it starts nothing.
schema = schemathesis.openapi.from_dict(_app(Settings(home=Path("unused"))).openapi())
with_run_id = schema.include(path_regex=r"\{run_id\}")
starting = schema.include(path="/v1/runs", method="POST")
TENANT = "fuzz"
PROBLEM = "application/problem+json"


def _asgi(app: FastAPI) -> asgi.ASGIApp:
    """The app as schemathesis' client types it (its Message is a dict, Starlette's a Mapping)."""
    return cast(asgi.ASGIApp, app)


@dataclass(frozen=True)
class Live:
    app: FastAPI
    headers: dict[str, str]
    run_id: str
    """A finished run of the key's tenant."""


async def _admin_key(settings: Settings) -> str:
    """An admin key, written before the app starts (its lifespan runs in another loop)."""
    store = await Store.open(settings.resolved_database_url)
    try:
        _, secret = await KeyStore(store.engine).create(tenant=TENANT, role=Role.ADMIN)
    finally:
        await store.close()
    return secret


def _finished_run(app: FastAPI, headers: dict[str, str]) -> str:
    body = {"workflow": "echo", "inputs": {"topic": "fuzz"}}
    with asgi.get_client(_asgi(app)) as client:
        run_id: str = client.post("/v1/runs", json=body, headers=headers).json()["id"]
        deadline = time.monotonic() + 30
        while client.get(f"/v1/runs/{run_id}", headers=headers).json()["finished_at"] is None:
            assert time.monotonic() < deadline, "the run did not finish"
            time.sleep(0.05)
    return run_id


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    """The app with its lifespan running (in schemathesis' ASGI event loop thread)."""
    home = tmp_path_factory.mktemp("fuzz") / ".agentmill"
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    settings = Settings(
        home=home,
        database_url=url,
        heartbeat_interval=0.5,
        rate_limit=1e6,
        rate_burst=10**6,
        github_webhook_secret="fuzz",  # type: ignore[arg-type]  # a str becomes a SecretStr
    )
    headers = {"Authorization": f"Bearer {asyncio.run(_admin_key(settings))}"}
    app = _app(settings)
    with override_models(ScriptedModel().model):
        try:
            yield Live(app=app, headers=headers, run_id=_finished_run(app, headers))
        finally:
            asgi.shutdown_lifespans()


@schema.parametrize()  # pyright: ignore[reportUntypedFunctionDecorator]
@FUZZ
def test_every_operation_answers_as_documented(case: schemathesis.Case, live: Live) -> None:
    case.call_and_validate(headers=live.headers, checks=CHECKS, app=live.app)


@with_run_id.parametrize()  # pyright: ignore[reportUntypedFunctionDecorator]
@FUZZ
def test_operations_on_a_real_run(case: schemathesis.Case, live: Live) -> None:
    case.path_parameters = {**(case.path_parameters or {}), "run_id": live.run_id}
    case.call_and_validate(headers=live.headers, checks=CHECKS, app=live.app)


@starting.parametrize()  # pyright: ignore[reportUntypedFunctionDecorator]
@FUZZ
def test_starting_runs_with_any_text(case: schemathesis.Case, live: Live) -> None:
    body = case.body
    if isinstance(body, dict) and isinstance(text := body.get("workflow"), str):
        case.body = {"workflow": "echo", "inputs": {"topic": text}}
    case.call_and_validate(headers=live.headers, checks=CHECKS, app=live.app)


# Hypothesis rarely generates a NUL; PostgreSQL refuses it in text (a 500 if it gets there).
REAL_VALUES = {"step_id": "draft", "name": "echo"}
BODIES = {"/retry": {"from_step": "draft"}, "/approvals/{step_id}": {"decision": "approve"}}


def _with_nul(doc: dict[str, Any], run_id: str) -> Iterator[tuple[str, str, Any]]:
    """(method, url, body) with a NUL in one path parameter, the others real."""
    for template, operations in doc["paths"].items():
        names = re.findall(r"\{(\w+)\}", template)
        for method, name in itertools.product(operations, names):
            values = {**REAL_VALUES, "run_id": run_id} | {name: "a%00b"}
            url = _fill(template, values)
            body = next((b for end, b in BODIES.items() if template.endswith(end)), None)
            yield method.upper(), url, body


def _fill(template: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda match: values.get(match[1], "x"), template)


def test_a_nul_in_any_path_parameter_is_refused_not_a_5xx(live: Live) -> None:
    failures: list[str] = []
    with asgi.get_client(_asgi(live.app)) as client:
        for method, url, body in _with_nul(live.app.openapi(), live.run_id):
            try:
                status = client.request(method, url, json=body, headers=live.headers).status_code
            except Exception as exc:  # the app re-raises what it answered 500 for
                status = f"500 ({type(exc).__name__})"
            if not isinstance(status, int) or status >= 500:
                failures.append(f"{method} {url}: {status}")
    assert not failures, "5xx for a NUL in a path parameter:\n" + "\n".join(failures)


BUDGETS: list[dict[str, Any]] = [
    {},
    {"usd": None, "tokens": None},
    {"usd": None},
    {"usd": 0},
    {"usd": 1.5},
    {"usd": 1e12},
    {"usd": 1e13},
    {"tokens": 1},
    {"tokens": 10**15},
    {"tokens": 10**15 + 1},
    {"tokens": 2**62},
    {"tokens": 2**63},
    {"usd": 2, "tokens": None},
]


def _request_bodies() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(method, path, body) with every budget above where a request takes one."""
    for budget in BUDGETS:
        yield "POST", "/v1/runs", {"workflow": "echo", "inputs": {"topic": "b"}, "budget": budget}
        yield "POST", "/v1/keys", {"role": "viewer", "budget": {"day": budget}}
    for period in ({}, {"day": None}, {"month": {}}, {"day": {"usd": 1}, "month": {}}):
        yield "POST", "/v1/keys", {"role": "viewer", "budget": period}


def test_the_schema_accepts_exactly_the_budgets_the_server_accepts(live: Live) -> None:
    doc = live.app.openapi()
    disagreements: list[str] = []
    with asgi.get_client(_asgi(live.app)) as client:
        for method, path, body in _request_bodies():
            body_schema = doc["paths"][path][method.lower()]["requestBody"]["content"]
            schema = {**body_schema["application/json"]["schema"], "components": doc["components"]}
            allowed = jsonschema_rs.validator_for(schema).is_valid(body)
            response = client.request(method, path, json=body, headers=live.headers)
            refused = response.status_code == 422 and response.json()["type"].endswith(
                ":invalid-request"
            )
            if allowed == refused:
                verdict = "allows" if allowed else "refuses"
                disagreements.append(
                    f"{method} {path} {body}: the schema {verdict} it, the server answered "
                    f"{response.status_code} {response.text[:200]}"
                )
    assert not disagreements, "\n".join(disagreements)


def test_options_and_405_name_every_method_of_the_path(live: Live) -> None:
    doc = live.app.openapi()
    wrong: list[str] = []
    with asgi.get_client(_asgi(live.app)) as client:
        for template, operations in doc["paths"].items():
            path = _fill(template, {"run_id": live.run_id, **REAL_VALUES})
            expected = {method.upper() for method in operations} | {"OPTIONS"}
            options = client.options(path, headers=live.headers)
            refused = client.request("DELETE", path, headers=live.headers)
            for response in (options, refused):
                allowed = {m.strip() for m in response.headers.get("allow", "").split(",")}
                if allowed != expected:
                    wrong.append(f"{response.request.method} {path}: Allow {allowed}")
            if options.status_code != 204:
                wrong.append(f"OPTIONS {path}: {options.status_code}")
            if refused.status_code != 405 or refused.headers["content-type"] != PROBLEM:
                wrong.append(f"DELETE {path}: {refused.status_code} {refused.text[:100]}")
    assert not wrong, "\n".join(wrong)


def test_every_json_body_nested_too_deep_is_a_400(live: Live) -> None:
    """One limit for every JSON body the server reads, whatever the route does with it
    (the GitHub webhook checks its signature first: tests/server/test_webhooks.py)."""
    doc = live.app.openapi()
    wrong: list[str] = []
    with asgi.get_client(_asgi(live.app)) as client:
        for template, operations in doc["paths"].items():
            if template.startswith("/v1/webhooks/"):
                continue
            path = _fill(template, {"run_id": live.run_id, **REAL_VALUES})
            for method, operation in operations.items():
                if "application/json" not in operation.get("requestBody", {}).get("content", {}):
                    continue
                for depth in (MAX_JSON_DEPTH + 1, 900, 100_000):
                    body = b'{"workflow": "echo", "inputs": {"x": ' + b"[" * depth
                    body += b"]" * depth + b"}}"
                    headers = {**live.headers, "Content-Type": "application/json"}
                    response = client.request(method, path, data=body, headers=headers)
                    problem_type = response.json().get("type", "")
                    if response.status_code != 400 or not problem_type.endswith(":too-deep"):
                        wrong.append(
                            f"{method.upper()} {path} depth {depth}: {response.text[:150]}"
                        )
    assert not wrong, "\n".join(wrong)
