"""The dashboard served for a browser: the real app (engine, SQLite, scripted models) run by
uvicorn in a thread of the test process, and pages watched for what the browser reports.

    DashboardServer(app, settings, ...)   uvicorn on 127.0.0.1:free port, its own event loop
      ├─ .url, .keys[(tenant, role)], .model (ScriptedModel), .tools (ToolModel)
      └─ .call(fn)  runs `fn(services)` on the server's loop, from the test's thread
    Watched(page)   console messages, page errors and CSP violations of one page
    csp_problems(header)  why a Content-Security-Policy is not strict ([] when it is)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvicorn
from fastapi import FastAPI
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from agentmill.server.services import Services
from agentmill.store import RunRecord
from tests.fakes import ScriptedModel, prompt_of

pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install -e '.[dev]'"
)
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Error,
    Page,
    Response,
    expect,
)

__all__ = [
    "PROJECT",
    "TOOLS_MODULE",
    "DashboardServer",
    "Page",
    "Pages",
    "Response",
    "ToolModel",
    "Watched",
    "csp_directives",
    "csp_problems",
    "expect",
    "sign_in",
]

T = TypeVar("T")

PROJECT = """
version: 1
agents:
  writer: {model: openai:gpt-4o}
  researcher:
    model: openai:gpt-4o-mini
    instructions: Look things up with the tool, then answer.
    tools:
      - function: {module}:lookup
workflows:
  echo:
    inputs: {topic: {type: string}}
    steps:
      - {id: draft, agent: writer, prompt: "draft {{ inputs.topic }}"}
      - {id: polish, agent: writer, needs: [draft], prompt: "polish {{ steps.draft.output }}"}
  gated:
    inputs: {topic: {type: string, default: x}}
    steps:
      - {id: draft, agent: writer, prompt: "draft {{ inputs.topic }}"}
      - id: sign-off
        needs: [draft]
        approval: {prompt: "Publish {{ steps.draft.output }}?", timeout: 1h}
      - id: publish
        agent: writer
        needs: [sign-off]
        when: "{{ steps['sign-off'].approved }}"
        prompt: "publish {{ steps.draft.output }}"
  research:
    inputs: {topic: {type: string, default: x}}
    steps:
      - {id: look, agent: researcher, prompt: "{{ inputs.topic }}"}
  fanout:
    inputs: {topics: {type: list, default: [a, b]}}
    steps:
      - {id: go, approval: {prompt: "Go?", timeout: 1h}}
      - {id: each, agent: writer, needs: [go], foreach: "{{ inputs.topics }}", prompt: "{{ item }}"}
"""
"""Workflows for every dashboard test: `echo` (two model steps), `gated` (an approval gate
between steps), `research` (an agent whose model calls the `lookup` function tool),
`fanout` (a gate, then a foreach step over its list input)."""

TOOL_MODEL_LABEL = "openai:gpt-4o-mini"
"""The researcher's model, answered by a `ToolModel`; every other label by the ScriptedModel."""

TOOLS_MODULE = '''
def lookup(query: str) -> str:
    """Look a topic up."""
    return f"found: {query}"
'''
"""The function tool of `research`: its result repeats the query (untrusted text in tests)."""


@dataclass
class ToolModel:
    """A model that calls `lookup` once with its prompt, then answers `reply(tool result)`."""

    reply: Callable[[str], str] = lambda found: f"summary of {found}"
    calls: int = 0

    def model(self) -> FunctionModel:
        return FunctionModel(self._answer, model_name="tool-caller")

    def _answer(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.calls += 1
        returns = [
            part
            for message in messages
            if isinstance(message, ModelRequest)
            for part in message.parts
            if isinstance(part, ToolReturnPart)
        ]
        if not returns:
            call = ToolCallPart("lookup", {"query": prompt_of(messages)}, tool_call_id="lookup-1")
            return ModelResponse(parts=[call])
        return ModelResponse(parts=[TextPart(self.reply(str(returns[-1].content)))])


@dataclass
class DashboardServer:
    """The app served by uvicorn on a thread of its own, with its own event loop."""

    app: FastAPI
    port: int
    model: ScriptedModel
    tools: ToolModel
    scheme: str = "http"
    ssl: tuple[Path, Path] | None = None
    """(certificate, key) to serve over HTTPS."""
    keys: dict[tuple[str, str], str] = field(default_factory=dict[tuple[str, str], str])
    ui_token: str = ""
    """The one-time sign-in token the app was made with (`agentmill ui`'s link)."""
    _server: uvicorn.Server | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def services(self) -> Services:
        found: Services = self.app.state.services
        return found

    def start(self, timeout: float = 60) -> None:
        certificate, key = self.ssl if self.ssl is not None else (None, None)
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=5,
            ssl_certfile=certificate,
            ssl_keyfile=key,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="dashboard", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                pytest.fail("the dashboard's server stopped while starting (see its log)")
            if time.monotonic() > deadline:
                pytest.fail(f"the dashboard's server did not start within {timeout}s")
            time.sleep(0.02)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        assert self._server is not None
        self._loop = asyncio.get_running_loop()
        await self._server.serve()

    def stop(self, timeout: float = 30) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            pytest.fail(f"the dashboard's server did not stop within {timeout}s")

    def call(self, fn: Callable[[Services], Awaitable[T]], timeout: float = 30) -> T:
        """`fn(services)` awaited on the server's loop (engine, store, keys live there)."""
        assert self._loop is not None

        async def run() -> T:
            return await fn(self.services)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def start_run(self, workflow: str, inputs: dict[str, Any], *, tenant: str = "acme") -> str:
        """A run of the config's `workflow` started as the API would; its id."""

        async def submit(services: Services) -> str:
            spec = services.require_project().spec
            path = str(services.config_path)
            run = await services.engine.submit(
                spec, workflow, inputs, config_path=path, tenant=tenant
            )
            return run.id

        return self.call(submit)

    def wait_finished(self, run_id: str, *, tenant: str = "acme", timeout: float = 60) -> RunRecord:
        """The run once it has ended (its events followed to the last)."""

        async def finished(services: Services) -> RunRecord:
            async for _ in services.engine.follow(run_id):
                pass
            return await services.engine.store.get_run(run_id, tenant=tenant)

        return self.call(finished, timeout=timeout)

    def wait_event(self, run_id: str, kind: str, *, timeout: float = 60) -> None:
        """Until the run has recorded an event of `kind` (say, approval_requested)."""

        async def seen(services: Services) -> None:
            async for event in services.engine.follow(run_id):
                if event.kind == kind:
                    return
            raise AssertionError(f"run {run_id} ended without a {kind} event")

        self.call(seen, timeout=timeout)

    def create_keys(self, tenants: tuple[str, ...], roles: tuple[str, ...]) -> None:
        from agentmill.store.keys import Role

        for tenant in tenants:
            for role in roles:
                _, secret = self.call(
                    lambda services, t=tenant, r=role: services.keys.create(tenant=t, role=Role(r))
                )
                self.keys[(tenant, role)] = secret


@dataclass
class Watched:
    """What the browser reported about one page while the test used it."""

    page: Page
    console: list[str] = field(default_factory=list[str])
    errors: list[str] = field(default_factory=list[str])

    def attach(self) -> None:
        self.page.on("console", self._on_console)
        self.page.on("pageerror", self._on_error)

    def _on_console(self, message: ConsoleMessage) -> None:
        self.console.append(f"{message.type}: {message.text}")

    def _on_error(self, error: Error) -> None:
        self.errors.append(f"{error.name}: {error.message}")

    def csp_violations(self) -> list[str]:
        """Console lines of the CSP ('Refused to ...'), and the violation events the page saw."""
        reported = [line for line in self.console if _CSP_CONSOLE.search(line)]
        return reported + self._violation_events()

    def forget_violations(self) -> None:
        """For a test that caused violations on purpose: they fail it no longer."""
        self.console = [line for line in self.console if not _CSP_CONSOLE.search(line)]
        self.page.evaluate("() => { window.__cspViolations = [] }")

    def _violation_events(self) -> list[str]:
        if self.page.is_closed():
            return []
        try:
            seen = self.page.evaluate("() => JSON.stringify(window.__cspViolations || [])")
        except Error:  # a page gone or navigating: its console lines still count
            return []
        return [f"securitypolicyviolation: {v}" for v in json.loads(str(seen))]


_CSP_CONSOLE = re.compile(r"Refused to|Content[- ]Security[- ]Policy", re.IGNORECASE)

CSP_LISTENER = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push(`${event.violatedDirective} blocked ${event.blockedURI}`);
});
"""
"""Added to every page before its own scripts (by the browser, not subject to the CSP)."""


def sign_in(page: Page, key: str) -> None:
    """Through the form, as a user does: GET /login, type the key, submit."""
    page.goto("/login")
    field_ = page.locator("form#login input[name=key]")
    field_.fill(key)
    with page.expect_navigation():
        field_.press("Enter")


def csp_directives(header: str) -> dict[str, list[str]]:
    """The policy's directives, names lower-cased, first occurrence kept (as browsers do)."""
    found: dict[str, list[str]] = {}
    for part in header.split(";"):
        words = part.split()
        if words and words[0].lower() not in found:
            found[words[0].lower()] = words[1:]
    return found


_LOOSE = {"'unsafe-inline'", "'unsafe-eval'", "'unsafe-hashes'", "*", "data:", "http:", "https:"}


def csp_problems(header: str | None) -> list[str]:
    """Why this policy is not strict: scripts and styles from our origin only, nothing
    inline or evaluated, no plugins, no framing, no <base> and no form posts elsewhere."""
    if not header:
        return ["no Content-Security-Policy header"]
    directives = csp_directives(header)
    problems: list[str] = []
    for kind in ("script-src", "style-src"):
        sources = directives.get(kind, directives.get("default-src"))
        if sources is None:
            problems.append(f"{kind} (or default-src) missing")
        else:
            problems += [f"{kind} allows {s}" for s in sources if s.lower() in _LOOSE]
    for name, allowed in _REQUIRED.items():
        value = directives.get(
            name, directives.get("default-src") if name == "object-src" else None
        )
        if value is None or not value or not set(value) <= allowed:
            problems.append(f"{name} should be one of {sorted(allowed)}, is {value}")
    return problems


_REQUIRED: dict[str, set[str]] = {
    "object-src": {"'none'"},
    "frame-ancestors": {"'none'"},
    "base-uri": {"'none'", "'self'"},
    "form-action": {"'self'"},
}


@dataclass
class Pages:
    """The test's browser pages, each in a fresh context (its own cookies); at the end each
    is photographed into `artifacts` and checked for CSP violations and script errors."""

    browser: Browser
    base_url: str
    keys: dict[tuple[str, str], str]
    artifacts: Path
    name: str
    watched: list[Watched] = field(default_factory=list[Watched])
    contexts: list[BrowserContext] = field(default_factory=list[BrowserContext])

    def new(self, **context_options: Any) -> Page:
        """A page of a new context, signed out."""
        options: dict[str, Any] = {"base_url": self.base_url, "ignore_https_errors": True}
        context = self.browser.new_context(**(options | context_options))
        context.set_default_timeout(15_000)
        context.add_init_script(CSP_LISTENER)
        self.contexts.append(context)
        page = context.new_page()
        watched = Watched(page)
        watched.attach()
        self.watched.append(watched)
        return page

    def signed_in(self, tenant: str = "acme", role: str = "operator") -> Page:
        """A new page signed in with the key of (tenant, role) through the login form."""
        page = self.new()
        sign_in(page, self.keys[(tenant, role)])
        expect(page).to_have_url(f"{self.base_url}/")
        return page

    def snapshot(self, page: Page, label: str) -> None:
        """A screenshot of the page as it is now, named after the test and `label`."""
        self._photograph(page, re.sub(r"[^A-Za-z0-9_.-]+", "_", label))

    def watch(self, page: Page) -> Watched:
        return next(w for w in self.watched if w.page is page)

    def close(self) -> list[str]:
        """Screenshots taken, contexts closed; what the pages reported that fails a test."""
        problems: list[str] = []
        for number, watched in enumerate(self.watched, start=1):
            self._photograph(watched.page, number)
            problems += [f"page {number}: {v}" for v in watched.csp_violations()]
            problems += [f"page {number}: uncaught {e}" for e in watched.errors]
        for context in self.contexts:
            context.close()
        return list(dict.fromkeys(problems))

    def _photograph(self, page: Page, number: int | str) -> None:
        if page.is_closed() or page.url in ("", "about:blank"):
            return
        self.artifacts.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(Error):  # a page mid-navigation: no picture, not a failure
            page.screenshot(path=self.artifacts / f"{self.name}-{number}.png", full_page=True)
