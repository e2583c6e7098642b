"""Signing in (an API key, or `agentmill ui`'s one-time link) and out.

The sign-in form is protected against login CSRF with a double-submit token: a random
value in a short-lived cookie and in the form, which must match.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import RedirectResponse

from agentmill.server.services import services
from agentmill.store import DEFAULT_TENANT
from agentmill.store.keys import Role
from agentmill.web.auth import SESSION_COOKIE, CsrfChecked, OneTimeToken, safe_next
from agentmill.web.templating import render

__all__ = ["router"]

router = APIRouter()

LOGIN_COOKIE = "am_login"
_LOGIN_TTL = 3600


@router.get("/login")
async def login_page(
    request: Request,
    next_url: Annotated[str | None, Query(alias="next", max_length=2000)] = None,
    token: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    if token is not None:
        return await _redeem(request, token, next_url)
    return _form(request, next_url)


async def _redeem(request: Request, token: str, next_url: str | None) -> Response:
    one_time: OneTimeToken | None = request.app.state.ui_token
    if one_time is None or not one_time.redeem(token):
        message = (
            "this sign-in link was already used or is not valid: "
            "run `agentmill ui` again for a new one, or sign in with an API key"
        )
        return _form(request, next_url, message=message, status=401)
    return await _open_session(request, DEFAULT_TENANT, Role.ADMIN, None, next_url)


def _form(
    request: Request, next_url: str | None, *, message: str | None = None, status: int = 200
) -> Response:
    login_csrf = secrets.token_urlsafe(24)
    response = render(
        request,
        "login.html",
        None,
        status=status,
        login_csrf=login_csrf,
        next_url=safe_next(next_url),
        message=message,
    )
    _set_cookie(request, response, LOGIN_COOKIE, login_csrf, max_age=_LOGIN_TTL)
    return response


@router.post("/login")
async def login(
    request: Request,
    key: Annotated[str, Form(max_length=500)] = "",
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    next_url: Annotated[str, Form(alias="next", max_length=2000)] = "/",
) -> Response:
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not expected or not hmac.compare_digest(csrf_token.encode(), expected.encode()):
        message = "the sign-in form expired: try again"
        return _form(request, next_url, message=message, status=403)
    found = await services(request).keys.verify(key.strip()) if key.strip() else None
    if found is None:
        message = (
            "this API key is not valid (mistyped, revoked, or made for another server): "
            "create one with `agentmill keys create`"
        )
        return _form(request, next_url, message=message, status=401)
    return await _open_session(request, found.tenant, found.role, found.id, next_url)


async def _open_session(
    request: Request, tenant: str, role: Role, key_id: str | None, next_url: str | None
) -> Response:
    app = services(request)
    token, _ = await app.sessions.open(tenant=tenant, role=role, key_id=key_id)
    response = RedirectResponse(safe_next(next_url), status_code=303)
    ttl = int(app.settings.session_ttl)
    _set_cookie(request, response, SESSION_COOKIE, token, max_age=ttl)
    response.delete_cookie(LOGIN_COOKIE, path="/")
    return response


@router.post("/logout")
async def logout(request: Request, user: CsrfChecked) -> Response:
    await services(request).sessions.close(user.token)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", secure=_https(request), httponly=True,
                           samesite="strict")  # fmt: skip
    return response


def _set_cookie(request: Request, response: Response, name: str, value: str, *, max_age: int
                ) -> None:  # fmt: skip
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=_https(request),
    )


def _https(request: Request) -> bool:
    return request.url.scheme == "https"
