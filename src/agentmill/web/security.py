"""Headers on every dashboard response: a strict Content-Security-Policy and friends.

No inline script or style anywhere (htmx is configured not to inject its indicator
styles), nothing loaded from another origin, no framing. Pages are `no-store` so that
after signing out the back button shows nothing of a run. The API docs pages (Swagger UI,
ReDoc) need inline script and keep their own headers.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CSP", "SecurityHeaders", "is_dashboard_path"]

CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    )
)

_NOT_DASHBOARD = ("/v1", "/mcp", "/docs", "/redoc", "/openapi.json", "/healthz", "/readyz")


def is_dashboard_path(path: str) -> bool:
    return path != "/metrics" and not path.startswith(_NOT_DASHBOARD)


class SecurityHeaders:
    """Adds the dashboard's security headers to its responses (not to the API's docs)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(("/docs", "/redoc")):
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                _add_headers(MutableHeaders(scope=message))
            await send(message)

        await self.app(scope, receive, sending)


def _add_headers(headers: MutableHeaders) -> None:
    headers.setdefault("Content-Security-Policy", CSP)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "same-origin")
    headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    if headers.get("content-type", "").startswith("text/html"):
        headers.setdefault("Cache-Control", "no-store")
