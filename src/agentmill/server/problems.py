"""Errors as RFC 9457 problem+json: one place maps every exception to a status and a body.

Bodies name the cause and the fix, never a stack trace or a secret. Unexpected errors are
logged with a reference the body repeats, so an operator can find them.
"""

from __future__ import annotations

import functools
import logging
import re
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from agentmill.errors import (
    AgentmillError,
    ConfigError,
    InputError,
    InvalidStateError,
    MissingCredentialError,
    MissingDependencyError,
    NotFoundError,
    RunFailure,
)

__all__ = [
    "PROBLEM_RESPONSES",
    "ApiProblem",
    "Problem",
    "install_problem_handlers",
    "problem_response",
    "status_of",
]

logger = logging.getLogger("agentmill.server")

MEDIA_TYPE = "application/problem+json"


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    type: str = Field(description="A URI naming the kind of problem")
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="Each invalid field or config problem, when there are several"
    )


class ApiProblem(StarletteHTTPException):
    """Raised by routes, dependencies and middleware for an HTTP error with a problem body.

    An HTTPException, so that FastAPI passes it on unchanged when a middleware raises it
    while the body is read (it turns any other exception there into a bare 400).
    """

    def __init__(
        self,
        status: int,
        slug: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(status, detail, headers)
        self.status = status
        self.slug = slug
        self.detail = detail
        self.headers = headers
        self.errors = errors

    def __str__(self) -> str:
        return self.detail


_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Content too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}

_SLUGS = {413: "too-large"}
"""Slugs that must match those of the same problem raised elsewhere."""

_PROBLEM_SCHEMA = {"content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}}

PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "description": _TITLES[status], **_PROBLEM_SCHEMA}
    for status in (400, 401, 403, 404, 409, 413, 422, 429)
}
"""Documented on every /v1 route so clients (and schemathesis) know the error shape."""


def problem_response(
    status: int,
    slug: str,
    detail: str,
    *,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    body = Problem(
        type=f"urn:agentmill:problem:{slug}",
        title=_TITLES.get(status, "Error"),
        status=status,
        detail=detail,
        instance=instance,
        errors=errors,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=status,
        headers=headers,
        media_type=MEDIA_TYPE,
    )


def status_of(exc: AgentmillError) -> tuple[int, str]:
    if isinstance(exc, NotFoundError):
        return 404, "not-found"
    if isinstance(exc, InvalidStateError):
        return 409, "invalid-state"
    if isinstance(exc, ConfigError):
        return 422, "invalid-config"
    if isinstance(exc, InputError):
        return 422, "invalid-input"
    if isinstance(exc, MissingCredentialError | MissingDependencyError):
        return 503, "server-not-configured"
    if isinstance(exc, RunFailure):
        return 409, "run-failed"
    return 400, "bad-request"


def allowed_methods(request: Request, routed: str | None) -> list[str]:
    """Every method of the requested path, and OPTIONS (answered for any path).

    The router answers a method mismatch from the first route whose path matches, so its
    own `Allow` (`routed`) names only that route's methods; a path whose GET and POST are
    declared apart needs them all. They are read from the OpenAPI document, which Allow must
    agree with; a path that is a literal path there (`/v1/workflows/validate`) is that
    resource, not an instance of a parameter (`/v1/workflows/{name}`). Paths the document
    leaves out (the docs pages) keep the router's answer.
    """
    root = request.scope.get("root_path", "")
    path = request.url.path.removeprefix(root) or "/"
    documented: dict[str, dict[str, Any]] = request.app.openapi()["paths"]
    matching = [
        (template, operations)
        for template, operations in documented.items()
        if _template_pattern(template).fullmatch(path)
    ]
    literal = [(template, ops) for template, ops in matching if "{" not in template]
    methods = {method.upper() for _, ops in literal or matching for method in ops}
    if not methods and routed:
        methods = {method.strip() for method in routed.split(",")}
    return sorted(methods | {"OPTIONS"})


@functools.cache
def _template_pattern(template: str) -> re.Pattern[str]:
    """`/v1/runs/{run_id}` as a regular expression matching its concrete paths."""
    parts = re.split(r"\{[^}]+\}", template)
    return re.compile("[^/]+".join(re.escape(part) for part in parts))


def install_problem_handlers(app: FastAPI) -> None:
    """Every error leaves the API as problem+json."""

    async def on_api_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiProblem)
        return problem_response(
            exc.status,
            exc.slug,
            exc.detail,
            instance=request.url.path,
            headers=exc.headers,
            errors=exc.errors,
        )

    async def on_agentmill_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AgentmillError)
        status, slug = status_of(exc)
        errors = None
        if isinstance(exc, ConfigError):
            errors = [{"line": p.line, "message": p.message, "hint": p.hint} for p in exc.problems]
        return problem_response(status, slug, str(exc), instance=request.url.path, errors=errors)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"loc": [str(part) for part in error.get("loc", ())], "message": error.get("msg", "")}
            for error in exc.errors()
        ]
        detail = "; ".join(f"{'.'.join(e['loc'])}: {e['message']}" for e in errors)
        return problem_response(
            422, "invalid-request", detail, instance=request.url.path, errors=errors
        )

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        detail = exc.detail or _TITLES.get(exc.status_code, "")
        headers = dict(exc.headers) if exc.headers else None
        if exc.status_code == 405:
            allowed = allowed_methods(request, (headers or {}).get("Allow"))
            headers = {**(headers or {}), "Allow": ", ".join(allowed)}
            if request.method == "OPTIONS":
                return Response(status_code=204, headers=headers)
            detail = f"{request.method} is not allowed here; this path takes {headers['Allow']}"
        slug = _SLUGS.get(exc.status_code) or _TITLES.get(exc.status_code, "error").lower()
        slug = slug.replace(" ", "-")
        return problem_response(
            exc.status_code, slug, detail, instance=request.url.path, headers=headers
        )

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        reference = uuid.uuid4().hex[:12]
        logger.error(
            "unexpected error %s on %s %s",
            reference,
            request.method,
            request.url.path,
            exc_info=exc,
        )
        detail = f"internal error (reference {reference}); the server log has the details"
        return problem_response(500, "internal", detail, instance=request.url.path)

    app.add_exception_handler(ApiProblem, on_api_problem)
    app.add_exception_handler(AgentmillError, on_agentmill_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
