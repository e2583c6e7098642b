"""The dashboard in-process (httpx over ASGI, no browser): an app with its engine, keys of
each role for two tenants, and browsers-as-clients signed in through the login form.

    async with dashboard_app(settings, PROJECT) as web:
        viewer = await web.signed_in("acme", "viewer")   # an httpx client with a session
        page = await viewer.get("/costs")
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI

from agentmill.agents.models import override_models
from agentmill.server.app import create_app
from agentmill.server.services import Services
from agentmill.settings import Settings
from agentmill.spec.loader import load_project_text
from agentmill.store.keys import Role
from tests.fakes import ScriptedModel

__all__ = ["WebApp", "dashboard_app", "text_of"]

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class WebApp:
    """The app of `dashboard_app`: its keys and signed-in clients (for tests whose config or
    server settings differ from the `web` fixture's)."""

    app: FastAPI
    model: ScriptedModel
    keys: dict[tuple[str, str], str] = field(default_factory=dict[tuple[str, str], str])
    clients: list[httpx.AsyncClient] = field(default_factory=list[httpx.AsyncClient])

    @property
    def services(self) -> Services:
        found: Services = self.app.state.services
        return found

    def client(self) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app)
        opened = httpx.AsyncClient(transport=transport, base_url="http://test")
        self.clients.append(opened)
        return opened

    async def signed_in(self, tenant: str, role: str) -> httpx.AsyncClient:
        """A client holding a session of the (tenant, role) key, signed in by the form."""
        return await self.signed_in_with(self.keys[(tenant, role)])

    async def signed_in_with(self, key: str) -> httpx.AsyncClient:
        client = self.client()
        form = await client.get("/login")
        found = _CSRF.search(form.text)
        assert found is not None, form.text
        data = {"key": key, "csrf_token": found.group(1), "next": "/"}
        response = await client.post("/login", data=data)
        assert response.status_code == 303, response.text
        return client

    async def start(
        self, workflow: str, inputs: dict[str, Any] | None = None, *, tenant: str = "acme",
        key: str | None = None,
    ) -> str:  # fmt: skip
        """A run started through the API with the tenant's operator key (or `key`); its id,
        once it has ended."""
        secret = key or self.keys[(tenant, "operator")]
        response = await self.client().post(
            "/v1/runs",
            json={"workflow": workflow, "inputs": inputs or {}},
            headers={"Authorization": f"Bearer {secret}"},
        )
        assert response.status_code == 201, response.text
        run_id: str = response.json()["id"]
        await asyncio.wait_for(self.services.engine.wait(run_id), 30)
        return run_id


@contextlib.asynccontextmanager
async def dashboard_app(
    settings: Settings, project: str, *, workers: int | None = 4
) -> AsyncGenerator[WebApp]:
    """The app on `settings`' database with `project`, scripted models for every label."""
    loaded = load_project_text(project, "agentmill.yaml")
    settings = settings.model_copy(update={"rate_limit": 1000.0, "rate_burst": 1000})
    model = ScriptedModel()
    app = create_app(settings, project=loaded, workers=workers)
    with override_models(model.model):
        async with app.router.lifespan_context(app):
            web = WebApp(app=app, model=model)
            for tenant in ("acme", "globex"):
                for role in Role:
                    _, secret = await web.services.keys.create(tenant=tenant, role=role)
                    web.keys[(tenant, str(role))] = secret
            try:
                yield web
            finally:
                for client in web.clients:
                    await client.aclose()


_TAGS = re.compile(r"<[^>]+>")


def text_of(html: str) -> str:
    """The page's text without tags, whitespace collapsed (entities left as they are)."""
    return " ".join(_TAGS.sub(" ", html).split())
