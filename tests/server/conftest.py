"""The API in-process: an app with its engine (SQLite or PostgreSQL), keys for two tenants."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from agentmill.agents.models import override_models
from agentmill.server.app import create_app
from agentmill.settings import Settings
from agentmill.spec.loader import load_project_text
from agentmill.store.keys import KeyStore, Role
from tests.fakes import ScriptedModel

PROJECT = """
version: 1
agents:
  writer: {model: openai:gpt-4o}
workflows:
  echo:
    inputs: {topic: {type: string}}
    steps:
      - {id: draft, agent: writer, prompt: "draft {{ inputs.topic }}"}
      - {id: polish, agent: writer, needs: [draft], prompt: "polish {{ steps.draft.output }}"}
  gated:
    inputs: {topic: {type: string, default: x}}
    steps:
      - {id: draft, agent: writer, prompt: "draft {{ inputs.topic }}"}
      - id: sign-off
        needs: [draft]
        approval: {prompt: "Publish {{ steps.draft.output }}?", timeout: 1h}
      - id: publish
        agent: writer
        needs: [sign-off]
        when: "{{ steps['sign-off'].approved }}"
        prompt: "publish {{ steps.draft.output }}"
"""


@dataclass
class Api:
    """An in-process client of the app, with a key per (tenant, role)."""

    client: httpx.AsyncClient
    keys: dict[tuple[str, str], str]
    model: ScriptedModel
    settings: Settings
    app: object = field(repr=False)

    def auth(self, tenant: str = "acme", role: str = "operator") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[(tenant, role)]}"}

    async def get(self, path: str, *, tenant: str = "acme", role: str = "operator",
                  **kwargs: object) -> httpx.Response:  # fmt: skip
        return await self.client.get(path, headers=self.auth(tenant, role), **kwargs)  # type: ignore[arg-type]

    async def post(self, path: str, *, tenant: str = "acme", role: str = "operator",
                   **kwargs: object) -> httpx.Response:  # fmt: skip
        return await self.client.post(path, headers=self.auth(tenant, role), **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def scripted() -> Iterator[ScriptedModel]:
    model = ScriptedModel()
    with override_models(model.model):
        yield model


@pytest.fixture
def server_settings(isolated_settings: Settings) -> Settings:
    """Generous limits so tests meet them only on purpose; a database of the test's own."""
    return isolated_settings.model_copy(update={"rate_limit": 1000.0, "rate_burst": 1000})


@pytest.fixture
async def api(server_settings: Settings, scripted: ScriptedModel) -> AsyncIterator[Api]:
    project = load_project_text(PROJECT, "agentmill.yaml")
    app = create_app(server_settings, project=project, workers=4)
    async with app.router.lifespan_context(app):
        keys = KeyStore(app.state.services.engine.store.engine)
        secrets: dict[tuple[str, str], str] = {}
        for tenant in ("acme", "globex"):
            for role in Role:
                _, secret = await keys.create(tenant=tenant, role=role)
                secrets[(tenant, str(role))] = secret
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield Api(
                client=client, keys=secrets, model=scripted, settings=server_settings, app=app
            )
