"""Rendering pages: one Jinja2 environment (autoescaped), filters for times, money, sizes.

Everything a run holds (model output, tool results, inputs, errors) is untrusted and
reaches the page only through autoescaping: templates never mark such text safe.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse

from agentmill import __version__
from agentmill.store.keys import Role
from agentmill.web.auth import CSRF_FIELD, WebUser

__all__ = ["STATIC_DIR", "render", "static_url"]

_PACKAGE = resources.files("agentmill.web")
STATIC_DIR = Path(str(_PACKAGE.joinpath("static")))
_TEMPLATES = Path(str(_PACKAGE.joinpath("templates")))

NAV = (
    ("/", "Runs"),
    ("/approvals", "Approvals"),
    ("/workflows", "Workflows"),
    ("/costs", "Costs"),
    ("/system", "System"),
)


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    shared: dict[str, Any] = {
        "static": static_url,
        "nav": NAV,
        "version": __version__,
        "csrf_field": CSRF_FIELD,
    }
    env.globals.update(shared)
    env.filters.update(utc=utc, iso=iso, ago=ago, duration=duration, usd=usd, size=size)
    return env


@functools.cache
def static_url(name: str) -> str:
    """The asset's URL with a digest of its content, so browsers may cache it for long."""
    digest = hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()[:10]
    return f"/static/{name}?v={digest}"


def render(
    request: Request,
    template: str,
    user: WebUser | None,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    page = _environment().get_template(template)
    html = page.render(
        request=request,
        user=user,
        may_operate=user is not None and user.may(Role.OPERATOR),
        path=request.url.path,
        **context,
    )
    return HTMLResponse(html, status_code=status, headers=headers)


# filters


def utc(epoch: float | None) -> str:
    """`2026-12-08 09:30:05` (UTC); empty for None."""
    if epoch is None:
        return ""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def iso(epoch: float | None) -> str:
    """`2026-12-08T09:30:05Z`, for `<time datetime>`; empty for None."""
    if epoch is None:
        return ""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ago(epoch: float | None, now: float | None = None) -> str:
    """`12s ago`, `5m ago`, `3h ago`, `2d ago`."""
    if epoch is None:
        return ""
    seconds = max(0.0, (now if now is not None else dt.datetime.now(dt.UTC).timestamp()) - epoch)
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{int(seconds // length)}{unit} ago"
    return f"{int(seconds)}s ago"


def duration(seconds: float | None) -> str:
    """`0.42s`, `12.3s`, `4m 05s`, `2h 03m`; empty for None."""
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def usd(value: float | None) -> str:
    if value is None:
        return "unknown"
    return f"${value:.4f}" if value < 100 else f"${value:,.2f}"


def size(count: int | None) -> str:
    if count is None:
        return ""
    if count < 1024:
        return f"{count} B"
    if count < 1024 * 1024:
        return f"{count / 1024:.1f} KiB"
    return f"{count / 1024 / 1024:.1f} MiB"
