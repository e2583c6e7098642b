"""Live update latency of the dashboard's run page: a token yielded by a step's model ->
its text in the browser page.

A real server (the app under uvicorn on a thread of this process, SQLite, `--runs` runs
executing) whose model waits until every page is open, then yields `--tokens` tokens
`--interval` apart, each carrying a unique marker and recorded with `time.time()` as it is
yielded. `--pages` headless Chromium pages (Debian's /usr/bin/chromium through Playwright,
each in a browser context of its own, all signed in with one session) show the runs' pages
(GET /runs/{id}, live through static/run.js and its EventSource). A MutationObserver added
before the page's scripts records `Date.now()` when each marker first appears in the DOM.
Target: p99 under 250 ms with 50 pages open; 1 page is the floor.

Run: python -m benchmarks.dashboard_live [--pages 50] [--runs 10] [--tokens 100]
     [--interval 0.05] [--floor-only]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import statistics
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn
from fastapi import FastAPI
from pydantic_ai.messages import ModelMessage
from pydantic_ai.models.function import AgentInfo, FunctionModel

from agentmill.agents.models import override_models
from agentmill.server.app import create_app
from agentmill.server.services import Services
from agentmill.settings import Settings
from agentmill.spec.loader import load_project_text
from agentmill.store.keys import Role
from benchmarks._common import free_port, row, sqlite_settings

T = TypeVar("T")

CHROMIUM = os.environ.get("AGENTMILL_BENCH_CHROMIUM", "/usr/bin/chromium")
TENANT = "bench"
TARGET_P99_MS = 250.0
IDLE_WINDOW = 3.0
PROJECT = """
version: 1
agents:
  writer: {model: openai:bench}
workflows:
  live:
    inputs: {n: {type: string}}
    steps:
      - {id: write, agent: writer, prompt: "write {{ inputs.n }}"}
"""
OBSERVER = r"""
window.__marks = {};
new MutationObserver((records) => {
  const now = Date.now();
  for (const record of records) {
    const nodes = record.type === "characterData" ? [record.target] : record.addedNodes;
    for (const node of nodes) {
      for (const found of (node.textContent || "").matchAll(/~m(\d+)~/g)) {
        if (!(found[1] in window.__marks)) window.__marks[found[1]] = now;
      }
    }
  }
}).observe(document, { childList: true, subtree: true, characterData: true });
"""
"""Added to every page before its own scripts (DevTools, not subject to the page's CSP)."""


# the model: waits for the pages, then paced tokens with markers


@dataclass
class Pacer:
    tokens: int
    interval: float
    runs: int
    go: threading.Event = field(default_factory=threading.Event)
    produced: dict[str, float] = field(default_factory=dict[str, float])
    """marker number -> time.time() of its yield"""
    of_run: dict[str, str] = field(default_factory=dict[str, str])
    """marker number -> the prompt (so the run) it belongs to"""
    waiting: int = 0
    _numbers: itertools.count[int] = field(default_factory=itertools.count)

    def model(self, label: str) -> FunctionModel:
        return FunctionModel(stream_function=self._stream, model_name=label)

    async def _stream(self, messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        prompt = str(messages[-1].parts[-1].content)  # type: ignore[union-attr]
        self.waiting += 1
        while not self.go.is_set():
            await asyncio.sleep(0.01)
        # Runs start a fraction of an interval apart, so the tokens are spread in time.
        await asyncio.sleep(self.interval * (int(prompt.split()[-1]) % self.runs) / self.runs)
        for _ in range(self.tokens):
            number = str(next(self._numbers))
            self.of_run[number] = prompt
            self.produced[number] = time.time()
            yield f"~m{number}~ "
            await asyncio.sleep(self.interval)


# the server: uvicorn on a thread of its own


@dataclass
class Server:
    app: FastAPI
    port: int
    _server: uvicorn.Server | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="dashboard", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        assert self._server is not None
        self._loop = asyncio.get_running_loop()
        await self._server.serve()

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(30)

    def call(self, fn: Callable[[Services], Awaitable[T]]) -> T:
        """`fn(services)` awaited on the server's loop."""
        assert self._loop is not None
        services: Services = self.app.state.services
        return asyncio.run_coroutine_threadsafe(_awaited(fn(services)), self._loop).result(60)


async def _awaited(work: Awaitable[T]) -> T:
    return await work


def _session_cookie(url: str, secret: str) -> str:
    """Signed in through the form, as a browser does; the session cookie's value."""
    with httpx.Client(base_url=url) as client:
        form = client.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        if token is None:
            raise RuntimeError("no CSRF token in the sign-in form")
        data = {"key": secret, "csrf_token": token.group(1), "next": "/"}
        answer = client.post("/login", data=data)
        if answer.status_code != 303:
            raise RuntimeError(f"sign-in failed: {answer.status_code}")
        return str(client.cookies["am_session"])


async def _start_runs(services: Services, count: int) -> list[str]:
    project = services.require_project()
    ids: list[str] = []
    for number in range(count):
        run = await services.engine.submit(
            project.spec, "live", {"n": str(number)}, config_path=str(services.config_path),
            tenant=TENANT,
        )  # fmt: skip
        ids.append(run.id)
    return ids


# the browser


@dataclass
class Opened:
    run: int
    page: Any
    streaming: bool


def _open_pages(
    browser: Any, server: Server, cookie: str, runs: list[str], count: int, motion: str
) -> list[Opened]:
    opened: list[Opened] = []
    for number in range(count):
        context = browser.new_context(base_url=server.url, reduced_motion=motion)
        context.add_cookies([{"name": "am_session", "value": cookie, "url": server.url}])
        context.add_init_script(OBSERVER)
        page = context.new_page()
        page.goto(f"/runs/{runs[number % len(runs)]}")
        opened.append(Opened(run=number % len(runs), page=page, streaming=False))
    for each in opened:
        each.streaming = _stream_open(each.page)
    return opened


def _stream_open(page: Any) -> bool:
    """Whether run.js says its EventSource is open (it marks #run-page when it is)."""
    try:
        page.wait_for_function(
            "() => { const root = document.getElementById('run-page');"
            " return root && Object.values(root.dataset).includes('open'); }",
            timeout=10_000,
        )
    except Exception:
        return False
    return True


def _latencies(opened: list[Opened], pacer: Pacer) -> tuple[list[float], int]:
    """Seconds from yield to DOM for every (page, token); how many tokens never showed."""
    seconds: list[float] = []
    missing = 0
    for each in opened:
        marks: dict[str, float] = each.page.evaluate("() => window.__marks")
        prompt = f"write {each.run}"
        for number, produced in pacer.produced.items():
            if pacer.of_run[number] != prompt:
                continue
            if number in marks:
                seconds.append(marks[number] / 1000 - produced)
            else:
                missing += 1
    return seconds, missing


# orchestration


@dataclass
class Result:
    seconds: list[float]
    missing: int
    streaming: int
    window: float
    """Seconds from the first token to the last one shown."""
    server_cpu: float
    """CPU seconds of this process (the server and Playwright's client) in the window."""
    browser_cpu: float
    """CPU seconds of the browser's processes (Playwright's driver, Chromium) in the window."""
    idle_browser: float
    """Cores the browser's processes used with the pages open before any token."""
    load: float


@dataclass(frozen=True)
class Scenario:
    pages: int
    runs: int
    tokens: int
    interval: float
    motion: str = "no-preference"
    """`reduce`: the pages ask for reduced motion (the DAG's running node stops pulsing)."""


def _scenario(plan: Scenario) -> Result:
    # One session's pages all stream on its key: the default 20 streams per key would
    # refuse the 21st page.
    overrides = {"rate_limit": 1e9, "rate_burst": 10**9, "max_streams_per_key": 10 * plan.pages}
    with sqlite_settings(**overrides) as settings:
        pacer = Pacer(tokens=plan.tokens, interval=plan.interval, runs=plan.runs)
        server = Server(_app(settings, plan.runs), free_port())
        with override_models(pacer.model):
            server.start()
            try:
                return _measured(server, pacer, plan)
            finally:
                server.stop()


def _app(settings: Settings, workers: int) -> FastAPI:
    config = Path(settings.home) / "agentmill.yaml"
    config.write_text(PROJECT)
    project = load_project_text(PROJECT, str(config))
    return create_app(settings, project=project, config_path=config, workers=workers)


def _measured(server: Server, pacer: Pacer, plan: Scenario) -> Result:
    from playwright.sync_api import sync_playwright

    _, secret = server.call(lambda s: s.keys.create(tenant=TENANT, role=Role.OPERATOR))
    cookie = _session_cookie(server.url, secret)
    run_ids = server.call(lambda s: _start_runs(s, plan.runs))
    _wait(lambda: pacer.waiting >= plan.runs, 60, "the runs did not start")
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            opened = _open_pages(browser, server, cookie, run_ids, plan.pages, plan.motion)
            time.sleep(1.0)
            idle = _descendants_cpu()
            time.sleep(IDLE_WINDOW)  # pages open, nothing streaming yet
            idle = (_descendants_cpu() - idle) / IDLE_WINDOW
            cpu, children, began = time.process_time(), _descendants_cpu(), time.time()
            pacer.go.set()
            _wait(lambda: len(pacer.produced) >= plan.runs * plan.tokens, 600, "tokens stopped")
            time.sleep(1.0)  # the last tokens reach the pages
            cpu, children = time.process_time() - cpu, _descendants_cpu() - children
            seconds, missing = _latencies(opened, pacer)
        finally:
            browser.close()
    streaming = sum(each.streaming for each in opened)
    window = max(pacer.produced.values()) + max(seconds, default=0.0) - began
    load = os.getloadavg()[0]
    return Result(seconds, missing, streaming, window, cpu, children, idle, load)


def _descendants_cpu() -> float:
    """CPU seconds used so far by the processes descending from this one (Linux /proc)."""
    parents: dict[int, int] = {}
    used: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        parents[int(entry.name)] = int(fields[1])
        used[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    mine = os.getpid()
    return sum(cpu for pid, cpu in used.items() if _descends(pid, mine, parents))


def _descends(pid: int, ancestor: int, parents: dict[int, int]) -> bool:
    while pid in parents and pid > 1:
        pid = parents[pid]
        if pid == ancestor:
            return True
    return False


def _wait(ready: Callable[[], bool], timeout: float, failure: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(failure)
        time.sleep(0.05)


def _ms(seconds: list[float], cut: int) -> str:
    if len(seconds) < 2:
        return "-"
    return f"{statistics.quantiles(seconds, n=100, method='inclusive')[cut - 1] * 1000:.0f}"


def _print(label: str, plan: Scenario, result: Result) -> None:
    found = result.seconds
    p99 = statistics.quantiles(found, n=100, method="inclusive")[98] * 1000 if len(found) > 1 else 0
    verdict = f"p99 < {TARGET_P99_MS:.0f} ms {'✔' if found and p99 < TARGET_P99_MS else '✘'}"
    workload = (
        f"{plan.pages} pages ({result.streaming} streaming), {plan.runs} runs x {plan.tokens}"
    )
    cpu = (
        f"{result.server_cpu / result.window:.2f} / {result.browser_cpu / result.window:.2f}"
        f" (idle {result.idle_browser:.2f})"
    )
    print(
        row(
            label,
            workload,
            f"{len(found):,}",
            _ms(found, 50),
            _ms(found, 95),
            f"**{_ms(found, 99)}**",
            f"{max(found) * 1000:.0f}" if found else "-",
            result.missing,
            cpu,
            f"{result.load:.1f}",
            verdict if plan.pages > 1 else "floor",
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pages", type=int, default=50)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--floor-only", action="store_true")
    parser.add_argument("--reduced-motion", action="store_true", help="also with reduced motion")
    args = parser.parse_args()
    if not Path(CHROMIUM).is_file():
        print(f"skipped: no Chromium at {CHROMIUM} (apt-get install chromium)")
        return
    print(f"a token every {args.interval * 1000:.0f} ms per run; ms from its yield to the DOM")
    header = ("scenario", "workload", "samples", "p50", "p95", "p99", "max", "missing",
              "cores: server / browser (idle)", "load", "target")  # fmt: skip
    print(row(*header))
    print(row(*["---"] * len(header)))
    floor = Scenario(pages=1, runs=1, tokens=args.tokens, interval=args.interval)
    _print("1 page (floor)", floor, _scenario(floor))
    if args.floor_only:
        return
    full = Scenario(args.pages, args.runs, args.tokens, args.interval)
    _print(f"{args.pages} pages", full, _scenario(full))
    if args.reduced_motion:
        calm = Scenario(args.pages, args.runs, args.tokens, args.interval, motion="reduce")
        _print(f"{args.pages} pages, reduced motion", calm, _scenario(calm))


if __name__ == "__main__":
    main()
