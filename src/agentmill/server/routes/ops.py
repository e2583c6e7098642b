"""Operations: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from agentmill.server.auth import Admin
from agentmill.server.problems import PROBLEM_RESPONSES, ApiProblem
from agentmill.server.services import services

__all__ = ["router"]

router = APIRouter(tags=["operations"])


class Health(BaseModel):
    status: str


@router.get("/healthz", summary="The process is alive")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    summary="The database is reachable and the engine launched",
    responses={503: PROBLEM_RESPONSES[409] | {"description": "Not ready"}},
)
async def readyz(request: Request) -> Health:
    app = services(request)
    try:
        async with app.engine.store.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any database failure means not ready
        detail = f"the database is not reachable: {type(exc).__name__}"
        raise ApiProblem(503, "not-ready", detail) from None
    if not app.engine.launched or app.shutting_down.is_set():
        raise ApiProblem(503, "not-ready", "the engine is not running (starting or stopping)")
    return Health(status="ready")


@router.get(
    "/metrics",
    summary="Prometheus metrics (admin key of the metrics tenant)",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        401: PROBLEM_RESPONSES[401],
        403: PROBLEM_RESPONSES[403],
        429: PROBLEM_RESPONSES[429],
    },
)
async def metrics(request: Request, principal: Admin) -> Response:
    app = services(request)
    if principal.tenant != app.settings.metrics_tenant:
        raise ApiProblem(
            403,
            "forbidden",
            "metrics cover every tenant: use an admin key of tenant "
            f"'{app.settings.metrics_tenant}' (set by AGENTMILL_METRICS_TENANT)",
        )
    body = await app.metrics.render(app.engine.store)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
