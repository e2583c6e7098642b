"""Who is looking: the session cookie, the CSRF token of every state-changing request.

A browser signs in with an API key (or `agentmill ui`'s one-time token) and gets a session
cookie: HttpOnly, SameSite=Strict, Secure over HTTPS. The session carries the key's tenant
and role, exactly as a REST request with that key would (`server.auth.Principal`).
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import quote, urlsplit

from fastapi import Depends, Request

from agentmill.server.auth import Principal
from agentmill.server.services import services
from agentmill.store.keys import Role
from agentmill.store.sessions import Session

__all__ = [
    "CSRF_FIELD",
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "CsrfChecked",
    "OneTimeToken",
    "SignInRequired",
    "SignedIn",
    "WebForbidden",
    "WebUser",
    "require_web_role",
    "safe_next",
    "signed_in",
]

SESSION_COOKIE = "am_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
UI_ACTOR = "dashboard"
"""Who decided, in records, for a session of `agentmill ui` (it has no API key)."""


@dataclass(frozen=True, kw_only=True)
class WebUser:
    principal: Principal
    csrf: str
    token: str
    """The session's cookie value (to sign out)."""
    key_id: str | None

    def may(self, role: Role) -> bool:
        return self.principal.role.allows(role)

    @property
    def actor(self) -> str:
        """The id recorded as the one who decided or started something."""
        return self.key_id or UI_ACTOR


class SignInRequired(Exception):
    """No live session: the page answers with the sign-in page (or 401 to htmx)."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


class WebForbidden(Exception):
    """A signed-in user may not do this: 403 with the reason."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class OneTimeToken:
    """`agentmill ui`'s sign-in link: redeemable once, compared in constant time."""

    def __init__(self, value: str | None = None) -> None:
        self.value = value or secrets.token_urlsafe(32)
        self._used = False

    def redeem(self, candidate: str) -> bool:
        if self._used or not hmac.compare_digest(candidate.encode(), self.value.encode()):
            return False
        self._used = True
        return True


async def signed_in(request: Request) -> WebUser:
    """The session of the request's cookie, or SignInRequired."""
    token = request.cookies.get(SESSION_COOKIE, "")
    session = await services(request).sessions.find(token) if token else None
    if session is None or not _accepted_here(request, session):
        raise SignInRequired(_requested(request))
    return _user(session, token)


def _accepted_here(request: Request, session: Session) -> bool:
    """A session of `agentmill ui`'s one-time link (no key) is good only on an `agentmill
    ui`: browsers send cookies to every port of a host, and an `agentmill serve` on the
    same machine and database must not take it as its default tenant's admin."""
    return session.key_id is not None or request.app.state.ui_token is not None


def _user(session: Session, token: str) -> WebUser:
    principal = Principal(
        key_id=session.key_id or UI_ACTOR, tenant=session.tenant, role=session.role
    )
    return WebUser(principal=principal, csrf=session.csrf, token=token, key_id=session.key_id)


def _requested(request: Request) -> str:
    """Where to go back after signing in: the page itself, or for a form posted to an
    action (no page to GET) the page of this site the form was on."""
    if request.method not in ("GET", "HEAD"):
        page = urlsplit(request.headers.get("referer", ""))
        if page.netloc not in _hosts(request) or not page.path:
            return "/"
        return safe_next(f"{page.path}?{page.query}" if page.query else page.path)
    path = request.url.path
    return f"{path}?{request.url.query}" if request.url.query else path


SignedIn = Annotated[WebUser, Depends(signed_in)]


async def check_csrf(request: Request, user: SignedIn) -> WebUser:
    """A state-changing request must carry the session's token (form field or header) and,
    when the browser says where it comes from, come from this origin."""
    presented = request.headers.get(CSRF_HEADER)
    if presented is None and _is_form(request):
        form = await request.form()
        field = form.get(CSRF_FIELD)
        presented = field if isinstance(field, str) else None
    if not presented or not hmac.compare_digest(presented.encode(), user.csrf.encode()):
        raise WebForbidden("this form has expired or did not come from this dashboard: reload")
    _check_origin(request)
    return user


def _is_form(request: Request) -> bool:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return kind in ("application/x-www-form-urlencoded", "multipart/form-data")


def _check_origin(request: Request) -> None:
    origin = request.headers.get("origin")
    if origin is None:
        return
    if origin == "null" or urlsplit(origin).netloc not in _hosts(request):
        raise WebForbidden("this request came from another site and was refused")


def _hosts(request: Request) -> set[str | None]:
    return {request.headers.get("host"), request.headers.get("x-forwarded-host")}


CsrfChecked = Annotated[WebUser, Depends(check_csrf)]


def require_web_role(user: WebUser, role: Role) -> None:
    if not user.may(role):
        raise WebForbidden(
            f"you are signed in with the {user.principal.role} role; this needs {role} or above"
        )


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path of this site only (no `//host`, no scheme)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target


def sign_in_url(next_url: str) -> str:
    return "/login" if next_url in ("", "/") else f"/login?next={quote(next_url, safe='')}"
