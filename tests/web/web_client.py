"""The dashboard in-process (httpx.ASGITransport): signed-in clients per (tenant, role).

The fixture `web` is registered by tests/web/conftest.py.
The app serves tests/server/conftest.py's PROJECT (workflows `echo` and `gated`) with a
ScriptedModel, on SQLite and PostgreSQL (the `isolated_settings` parameters).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from agentmill.agents.models import override_models
from agentmill.server.app import create_app
from agentmill.server.services import Services
from agentmill.settings import Settings
from agentmill.spec.loader import load_project_text
from agentmill.store.keys import KeyStore, Role
from agentmill.web import OneTimeToken
from tests.fakes import ScriptedModel
from tests.server.conftest import PROJECT

__all__ = ["Web", "csrf_of", "web"]

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found is not None, "no csrf_token field in the page"
    return found.group(1)


@dataclass
class Web:
    """The app, its keys, and clients signed in per (tenant, role)."""

    app: Any
    keys: dict[tuple[str, str], str]
    model: ScriptedModel
    settings: Settings
    ui_token: OneTimeToken
    _clients: list[httpx.AsyncClient] = field(default_factory=list[httpx.AsyncClient])

    @property
    def services(self) -> Services:
        found: Services = self.app.state.services
        return found

    def client(self) -> httpx.AsyncClient:
        """A fresh browser-like client with no session (cookies kept between requests)."""
        transport = httpx.ASGITransport(app=self.app)
        client = httpx.AsyncClient(transport=transport, base_url="http://test")
        self._clients.append(client)
        return client

    async def signed_in(self, tenant: str = "acme", role: str = "operator") -> httpx.AsyncClient:
        client = self.client()
        form = await client.get("/login")
        response = await client.post(
            "/login",
            data={"key": self.keys[(tenant, role)], "csrf_token": csrf_of(form.text), "next": "/"},
        )
        assert response.status_code == 303, response.text
        return client

    async def csrf(self, client: httpx.AsyncClient) -> str:
        """The session's CSRF token, as a page shows it."""
        return csrf_of((await client.get("/")).text)

    async def start(self, workflow: str, inputs: dict[str, Any], tenant: str = "acme") -> str:
        run = await self.services.engine.submit(
            self.services.require_project().spec, workflow, inputs, tenant=tenant
        )
        return run.id

    async def close(self) -> None:
        for client in self._clients:
            await client.aclose()


@pytest.fixture
async def web(isolated_settings: Settings) -> AsyncIterator[Web]:
    settings = isolated_settings.model_copy(update={"rate_limit": 1000.0, "rate_burst": 1000})
    model = ScriptedModel()
    token = OneTimeToken()
    app = create_app(
        settings, project=load_project_text(PROJECT, "agentmill.yaml"), workers=4, ui_token=token
    )
    with override_models(model.model):
        async with app.router.lifespan_context(app):
            keys = KeyStore(app.state.services.engine.store.engine)
            secrets: dict[tuple[str, str], str] = {}
            for tenant in ("acme", "globex"):
                for role in Role:
                    _, secret = await keys.create(tenant=tenant, role=role)
                    secrets[(tenant, str(role))] = secret
            found = Web(app=app, keys=secrets, model=model, settings=settings, ui_token=token)
            try:
                yield found
            finally:
                await found.close()
