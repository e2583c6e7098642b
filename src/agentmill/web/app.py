"""The dashboard's routes, assets and error pages, added to the server's FastAPI app."""

from __future__ import annotations

import logging
import mimetypes
import uuid
from collections.abc import Awaitable, Callable
from types import ModuleType
from urllib.parse import urlsplit

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from agentmill.errors import AgentmillError
from agentmill.server.problems import ApiProblem, status_of
from agentmill.web.auth import (
    OneTimeToken,
    SignInRequired,
    WebForbidden,
    safe_next,
    sign_in_url,
    signed_in,
)
from agentmill.web.pages import approvals, costs, run, runs, signin, system, workflows
from agentmill.web.security import SecurityHeaders, is_dashboard_path
from agentmill.web.templating import STATIC_DIR, render

__all__ = ["PAGES", "install_dashboard"]

logger = logging.getLogger("agentmill.web")

PAGES: tuple[ModuleType, ...] = (signin, runs, costs, system, run, approvals, workflows)
"""Each page module has a `router`; add a new page here."""

PUBLIC_ASSETS = frozenset({"app.css", "favicon.svg"})
"""Assets the sign-in page needs; every other asset is served to signed-in browsers only."""

Handler = Callable[[Request, Exception], Awaitable[Response]]


def install_dashboard(app: FastAPI, *, ui_token: OneTimeToken | None = None) -> None:
    """Serve the dashboard at `/` of `app` (after the API's routes and error handlers)."""
    app.state.ui_token = ui_token
    app.add_middleware(SecurityHeaders)
    for page in PAGES:
        app.include_router(page.router, include_in_schema=False)
    app.add_api_route("/static/{name}", _asset, include_in_schema=False)
    _install_error_pages(app)


_ASSETS = {path.name for path in STATIC_DIR.iterdir() if path.is_file()}


async def _asset(request: Request, name: str) -> Response:
    if name not in _ASSETS:
        raise StarletteHTTPException(404, "no such asset")
    if name not in PUBLIC_ASSETS:
        await signed_in(request)
    kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if kind.startswith("text/") or kind.endswith("javascript"):
        kind += "; charset=utf-8"
    versioned = "v" in request.query_params
    cache = "max-age=31536000, immutable" if versioned else "no-cache"
    private = "public" if name in PUBLIC_ASSETS else "private"
    return Response(
        (STATIC_DIR / name).read_bytes(),
        media_type=kind,
        headers={"Cache-Control": f"{private}, {cache}"},
    )


# errors on dashboard paths are pages, not problem+json


def _install_error_pages(app: FastAPI) -> None:
    for kind in (AgentmillError, ApiProblem, RequestValidationError, StarletteHTTPException):
        _wrap(app, kind, _error_page)
    _wrap(app, Exception, _unexpected_page)
    app.add_exception_handler(SignInRequired, _to_sign_in)
    app.add_exception_handler(WebForbidden, _forbidden_page)


def _wrap(app: FastAPI, kind: type[Exception], page: Handler) -> None:
    api_handler: Handler = app.exception_handlers[kind]  # type: ignore[assignment]

    async def handler(request: Request, exc: Exception) -> Response:
        if is_dashboard_path(request.url.path):
            return await page(request, exc)
        return await api_handler(request, exc)

    app.add_exception_handler(kind, handler)


async def _to_sign_in(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SignInRequired)
    if request.headers.get("hx-request"):
        # A fragment's URL is no place to land: go back to the page that asked for it.
        page = urlsplit(request.headers.get("hx-current-url", ""))
        back = safe_next(f"{page.path}?{page.query}" if page.query else page.path)
        return Response(status_code=401, headers={"HX-Redirect": sign_in_url(back)})
    return RedirectResponse(sign_in_url(exc.next_url), status_code=303)


async def _forbidden_page(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, WebForbidden)
    return _page(request, 403, "Not allowed", exc.message)


async def _error_page(request: Request, exc: Exception) -> Response:
    status, message = _status_and_message(exc)
    title = {404: "Not found", 409: "Not possible now"}.get(status, "Cannot do that")
    return _page(request, status, title, message)


def _status_and_message(exc: Exception) -> tuple[int, str]:
    if isinstance(exc, AgentmillError):
        return status_of(exc)[0], str(exc)
    if isinstance(exc, ApiProblem):
        return exc.status, exc.detail
    if isinstance(exc, RequestValidationError):
        fields = ", ".join(".".join(map(str, e.get("loc", ()))) for e in exc.errors())
        return 422, f"some values of this request are not valid: {fields}"
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        return 404, "there is no such page"
    return exc.status_code, str(exc.detail)


async def _unexpected_page(request: Request, exc: Exception) -> Response:
    reference = uuid.uuid4().hex[:12]
    logger.error("unexpected error %s on %s %s", reference, request.method, request.url.path,
                 exc_info=exc)  # fmt: skip
    detail = f"internal error (reference {reference}); the server log has the details"
    return _page(request, 500, "Something went wrong", detail)


def _page(request: Request, status: int, title: str, message: str) -> Response:
    return render(request, "error.html", None, status=status, title=title, message=message)
