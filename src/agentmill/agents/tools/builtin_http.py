"""The built-in http_request tool: HTTP(S) to the hosts of an allowlist, and nowhere else.

The host is taken from the parsed URL (lowercase, trailing dot removed; a URL carrying
`user:password@` is refused, so `https://allowed.com@evil.com/` cannot pass for the allowed
host) and matched against the allowlist's globs. Redirects are followed by hand, each hop
checked like the first one, so an allowed host cannot bounce the request elsewhere.

What the model gets back is bounded: the body is read up to `max_output` bytes and the rest
is never downloaded; the whole exchange has one deadline. No proxy, netrc or certificate
setting is taken from the environment (`trust_env=False`): a request carries only what the
model wrote. Errors name the method and URL, never the request's headers (they may hold a
credential).

Idempotency: a POST, PUT, PATCH or DELETE carries an `Idempotency-Key` header (the call's
key, the same when a crash repeats the call) unless the model set one: a server that honours
it applies a repeated call once.
"""

from __future__ import annotations

import asyncio
import fnmatch
from collections.abc import Callable, Sequence
from typing import Any

import httpx
from pydantic_ai import ModelRetry

from agentmill.agents.tools.context import current_call

__all__ = ["allowed_host", "http_request_tool"]

_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_UNSAFE = ("POST", "PUT", "PATCH", "DELETE")
_MAX_REDIRECTS = 5
_SHOWN_HEADERS = ("content-type", "content-length", "location", "retry-after", "link", "etag")
_FORBIDDEN_HEADERS = ("host",)  # the connection goes where the URL says, never elsewhere
_BINARY_SNIFF = 8192


def allowed_host(host: str, allow: Sequence[str]) -> bool:
    """Whether `host` matches one of the allowlist's entries: an exact name or a glob
    (`*.example.com` matches `api.example.com`, not `example.com`); case does not matter."""
    name = host.rstrip(".").lower()
    return bool(name) and any(fnmatch.fnmatchcase(name, entry.lower()) for entry in allow)


def http_request_tool(allow: Sequence[str], max_output: int, timeout: float) -> Callable[..., Any]:
    hosts = tuple(allow)

    async def http_request(
        url: str,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        body: str | None = None,
    ) -> str:
        """Make an HTTP request and return the response's status, main headers and body.

        Hosts that may be reached: {hosts}. Redirects are followed within them; long
        bodies are cut.

        Args:
            url: The full http:// or https:// URL, with its query string.
            method: GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS.
            headers: Request headers, e.g. {"Accept": "application/json"}.
            body: The request body (text, e.g. JSON), for POST, PUT or PATCH.
        """
        verb = method.upper()
        if verb not in _METHODS:
            raise ModelRetry(
                f"method {method!r} is not supported: use one of {', '.join(_METHODS)}"
            )
        target = _checked_url(url, hosts)
        request_headers = _request_headers(headers, verb)
        try:
            async with asyncio.timeout(timeout):
                return await _exchange(verb, target, request_headers, body, hosts, max_output)
        except TimeoutError:
            raise ModelRetry(f"{verb} {url}: no complete answer within {timeout:g}s") from None
        except httpx.HTTPError as exc:
            raise ModelRetry(f"{verb} {url} failed: {_describe(exc)}") from None

    http_request.__doc__ = (http_request.__doc__ or "").replace("{hosts}", ", ".join(hosts))
    return http_request


def _checked_url(url: str, allow: Sequence[str]) -> httpx.URL:
    """The parsed URL if the tool may reach it; a refusal the model can act on if not."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ModelRetry(f"{url!r} is not a valid URL ({exc})") from None
    if parsed.scheme not in ("http", "https"):
        raise ModelRetry(f"{url}: only http:// and https:// URLs can be requested")
    if parsed.userinfo:
        raise ModelRetry(f"{parsed.host}: a URL may not carry a user name or password")
    if not allowed_host(parsed.host, allow):
        raise ModelRetry(
            f"host {parsed.host or '(none)'} is not allowed: this agent may only reach"
            f" {', '.join(allow)}"
        )
    return parsed


def _request_headers(headers: dict[str, str] | None, verb: str) -> dict[str, str]:
    given = dict(headers or {})
    for name in given:
        if name.lower() in _FORBIDDEN_HEADERS:
            raise ModelRetry(f"the {name} header cannot be set: the URL decides where it goes")
    if not any(name.lower() == "accept-encoding" for name in given):
        given["Accept-Encoding"] = "identity"  # what is downloaded is what is kept
    call = current_call()
    has_key = any(name.lower() == "idempotency-key" for name in given)
    if call is not None and verb in _UNSAFE and not has_key:
        given["Idempotency-Key"] = call.idempotency_key
    return given


async def _exchange(
    verb: str,
    url: httpx.URL,
    headers: dict[str, str],
    body: str | None,
    allow: Sequence[str],
    max_output: int,
) -> str:
    """Send the request, following redirects within the allowlist, and read the answer."""
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as client:
        request = client.build_request(verb, url, headers=headers, content=body)
        for _ in range(_MAX_REDIRECTS + 1):
            response = await client.send(request, stream=True)
            try:
                if response.next_request is None:
                    return await _answer(response, max_output)
                request = response.next_request
                _check_redirect(response, request.url, allow)
            finally:
                await response.aclose()
    raise ModelRetry(f"{verb} {url}: more than {_MAX_REDIRECTS} redirects; giving up")


def _check_redirect(response: httpx.Response, target: httpx.URL, allow: Sequence[str]) -> None:
    if target.scheme not in ("http", "https") or not allowed_host(target.host, allow):
        raise ModelRetry(
            f"{response.request.url} redirected ({response.status_code}) to host"
            f" {target.host or target.scheme}, which this agent may not reach (allowed:"
            f" {', '.join(allow)})"
        )


async def _answer(response: httpx.Response, max_output: int) -> str:
    """Status, main headers and body (at most `max_output` bytes of it are downloaded)."""
    kept = bytearray()
    cut = False
    async for chunk in response.aiter_bytes():
        kept += chunk
        if len(kept) > max_output:
            cut = True
            break
    head = [f"HTTP {response.status_code} {response.reason_phrase}".rstrip()]
    head += [
        f"{name}: {response.headers[name]}" for name in _SHOWN_HEADERS if name in response.headers
    ]
    return "\n".join(head) + "\n\n" + _body_text(response, bytes(kept[:max_output]), cut)


def _body_text(response: httpx.Response, data: bytes, cut: bool) -> str:
    if b"\x00" in data[:_BINARY_SNIFF]:
        return f"[binary body{' (over ' if cut else ' of '}{len(data):,} bytes): not shown]"
    text = data.decode(response.charset_encoding or "utf-8", "replace")
    return text + (f"\n[body cut at {len(data):,} bytes]" if cut else "")


def _describe(exc: httpx.HTTPError) -> str:
    """What went wrong, without the request's headers."""
    message = str(exc).strip()
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
