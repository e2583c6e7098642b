"""API keys: bearer auth, roles, tenants, revocation, rate limit."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from agentmill.server.app import create_app
from agentmill.settings import Settings
from agentmill.store.keys import KeyStore, Role
from tests.server.conftest import Api


async def test_health_needs_no_key(api: Api) -> None:
    response = await api.client.get("/healthz")
    assert response.json() == {"status": "ok"}
    assert (await api.client.get("/readyz")).json() == {"status": "ready"}


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Bearer amk_nope_secret",
        "Bearer not-a-key",
    ],
)
async def test_bad_credentials_get_one_generic_401(api: Api, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = await api.client.get("/v1/keys", headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["detail"] == (
        "a valid API key is required: send Authorization: Bearer <key>"
    )


async def test_a_right_id_with_a_wrong_secret_is_refused(api: Api) -> None:
    real = api.keys[("acme", "admin")]
    forged = real[:-4] + ("AAAA" if not real.endswith("AAAA") else "BBBB")
    response = await api.client.get("/v1/keys", headers={"Authorization": f"Bearer {forged}"})
    assert response.status_code == 401


async def test_revocation_takes_effect_on_the_next_request(api: Api) -> None:
    created = await api.post("/v1/keys", role="admin", json={"role": "viewer", "name": "ci"})
    assert created.status_code == 201
    secret = created.json()["secret"]
    headers = {"Authorization": f"Bearer {secret}"}
    assert (await api.client.get("/v1/keys", headers=headers)).status_code == 403
    key_id = created.json()["id"]
    revoked = await api.post(f"/v1/keys/{key_id}/revoke", role="admin")
    assert revoked.json()["revoked_at"] is not None
    assert (await api.client.get("/v1/keys", headers=headers)).status_code == 401


async def test_keys_are_listed_without_secrets_and_per_tenant(api: Api) -> None:
    listed = (await api.get("/v1/keys", role="admin")).json()["items"]
    assert {key["tenant"] for key in listed} == {"acme"}
    assert all("secret" not in key and "digest" not in key for key in listed)
    assert all(key["id"] not in api.keys[("acme", "admin")][:4] for key in listed)


async def test_another_tenants_key_cannot_be_revoked(api: Api) -> None:
    other = (await api.get("/v1/keys", tenant="globex", role="admin")).json()["items"][0]
    response = await api.post(f"/v1/keys/{other['id']}/revoke", role="admin")
    assert response.status_code == 404


@pytest.mark.parametrize("role", ["viewer", "operator"])
async def test_only_admins_manage_keys(api: Api, role: str) -> None:
    response = await api.get("/v1/keys", role=role)
    assert response.status_code == 403
    assert f"has the {role} role; this needs admin" in response.json()["detail"]


async def test_rate_limit_answers_429_with_retry_after(sqlite_settings: Settings) -> None:
    settings = sqlite_settings.model_copy(update={"rate_limit": 1.0, "rate_burst": 3})
    app = create_app(settings, project=None, workers=0)
    async with app.router.lifespan_context(app):
        _, secret = await KeyStore(app.state.services.engine.store.engine).create(
            tenant="acme", role=Role.ADMIN
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            headers = {"Authorization": f"Bearer {secret}"}
            codes = [(await client.get("/v1/keys", headers=headers)).status_code for _ in range(5)]
            limited = await client.get("/v1/keys", headers=headers)
    assert codes[:3] == [200, 200, 200]
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1


async def test_oversized_bodies_are_refused_before_reading(api: Api) -> None:
    limit = api.settings.max_request_bytes
    headers = {**api.auth(role="admin"), "content-type": "application/json"}
    response = await api.client.post("/v1/keys", content=b"x" * (limit + 1), headers=headers)
    assert response.status_code == 413
    assert response.json()["type"] == "urn:agentmill:problem:too-large"


async def test_a_streamed_body_over_the_limit_is_413_too(api: Api) -> None:
    limit = api.settings.max_request_bytes

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536

    headers = {**api.auth(role="admin"), "content-type": "application/json"}
    response = await api.client.post("/v1/keys", content=chunks(), headers=headers)
    assert response.status_code == 413
    assert response.json()["type"] == "urn:agentmill:problem:too-large"
