"""The system page: workers and their heartbeats, the queue, the tenant's recent webhook
deliveries, the database in use, the version and this server's settings that matter.

Workers and the queue are shared by every tenant and show their load, so only admins of
the metrics tenant (those who run the platform, like /metrics) see them, with the
database's URL (password hidden); everyone else sees their own tenant's part: its
deliveries, how many of its runs workers execute and how many wait.
The live part polls every 5 s (htmx).
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from agentmill import __version__
from agentmill.engine.liveness import HEARTBEAT_GRACE
from agentmill.server.services import Services, services
from agentmill.store import WorkerInfo, database_in_use, queue_depth, recent_deliveries, workers
from agentmill.store.db import SCHEMA_REVISION
from agentmill.web.auth import SignedIn
from agentmill.web.pages.costs import may_see_all_tenants
from agentmill.web.templating import render

__all__ = ["DELIVERIES_SHOWN", "router"]

router = APIRouter()

DELIVERIES_SHOWN = 20


@router.get("/system")
async def system_page(
    request: Request,
    user: SignedIn,
    fragment: Annotated[str | None, Query(pattern="^live$")] = None,
) -> Response:
    app = services(request)
    admin = may_see_all_tenants(user, app.settings.metrics_tenant)
    context = await _live(app, user.principal.tenant, admin=admin)
    context.update(admin=admin, about=_about(request, app, admin=admin))
    template = "_system_live.html" if fragment else "system.html"
    return render(request, template, user, **context)


async def _live(app: Services, tenant: str, *, admin: bool) -> dict[str, Any]:
    engine = app.engine.store.engine
    now = time.time()
    stale_after = HEARTBEAT_GRACE * app.settings.heartbeat_interval
    own = await workers(engine, tenant=tenant)
    context: dict[str, Any] = {
        "tenant": tenant,
        "now": now,
        "deliveries": await recent_deliveries(engine, tenant, limit=DELIVERIES_SHOWN),
        "tenant_running": sum(worker.running_runs for worker in own),
        "tenant_queued": await queue_depth(engine, tenant=tenant),
        "stale_after": stale_after,
    }
    if admin:
        found = await workers(engine)
        context["workers"] = [_worker(worker, now, stale_after) for worker in found]
        context["queued"] = await queue_depth(engine)
    return context


def _worker(worker: WorkerInfo, now: float, stale_after: float) -> dict[str, Any]:
    beat = worker.last_heartbeat
    return {
        "owner": worker.owner,
        "host": worker.host or "",
        "pid": worker.pid,
        "last_heartbeat": beat,
        "stale": beat is None or now - beat >= stale_after,
        "running": worker.running_runs,
    }


def _about(request: Request, app: Services, *, admin: bool) -> dict[str, Any]:
    database = database_in_use(app.engine.store.engine)
    settings = app.settings
    about: dict[str, Any] = {
        "version": __version__,
        "schema": SCHEMA_REVISION,
        "dialect": database.dialect,
        "heartbeat_interval": settings.heartbeat_interval,
    }
    if admin:
        about.update(
            url=database.url,
            executor=app.engine.owner.executor_id,
            workers=_workers_text(request),
            metrics_tenant=settings.metrics_tenant,
            session_ttl=settings.session_ttl,
        )
    return about


def _workers_text(request: Request) -> str:
    """How many runs this server executes at once (`create_app(workers=...)`)."""
    state = request.app.state
    if not hasattr(state, "serve_workers"):
        return "unknown"
    count: int | None = state.serve_workers
    if count is None:
        return "embedded: runs what this process starts"
    return "none (API only)" if count == 0 else f"up to {count} runs at once"
