"""The run page in Chromium: text streams into the step panels as the model writes it, the
DAG changes state, a reconnect repeats nothing, a gate is approved from the page, and
untrusted text arrives as text (the `pages` fixture fails a test on any CSP violation)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from pydantic_ai.messages import ModelMessage
from pydantic_ai.models.function import AgentInfo

from tests.fakes import ScriptedModel
from tests.web.browser import DashboardServer, Page, Pages, expect

WORDS = 24


@dataclass
class WordByWord(ScriptedModel):
    """A ScriptedModel that writes its reply one word every `pause` seconds."""

    pause: float = 0.15

    async def _stream(self, messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        async for chunk in super()._stream(messages, info):
            await asyncio.sleep(self.pause)
            yield chunk


def reply(prompt: str) -> str:
    return " ".join(f"w{i}" for i in range(WORDS)) + f" ({prompt})"


def state(name: str) -> re.Pattern[str]:
    return re.compile(rf"\bstate-{name}\b")


def slow_model(dashboard: DashboardServer, pause: float = 0.15) -> None:
    dashboard.model = WordByWord(reply=reply, pause=pause)


def test_model_text_streams_in_and_the_dag_changes_state(
    dashboard: DashboardServer, page_for: Callable[..., Page], pages: Pages
) -> None:
    slow_model(dashboard)
    page = page_for("acme", "operator")
    run_id = dashboard.start_run("echo", {"topic": "news"})
    page.goto(f"/runs/{run_id}")

    draft = page.locator("#step-draft .step-output")
    expect(draft).to_contain_text("w3")
    expect(page.locator("#dag-draft")).to_have_class(state("running"))
    expect(page.locator("#step-draft .step-state")).to_have_text("running")
    expect(page.locator("#dag-polish")).to_have_class(state("pending"))
    pages.snapshot(page, "streaming")

    expect(page.locator("#run-status")).to_have_text("succeeded", timeout=30_000)
    expect(draft).to_have_text(reply("draft news"))
    expect(page.locator("#step-polish .step-output")).to_have_text(
        reply("polish " + reply("draft news"))
    )
    for step in ("draft", "polish"):
        expect(page.locator(f"#dag-{step}")).to_have_class(state("succeeded"))
        expect(page.locator(f"#step-{step} .step-state")).to_have_text("succeeded")
    expect(page.locator(".run-cost")).to_contain_text("$")

    page.locator("#dag-polish").click()  # a node brings its step's panel into view
    expect(page.locator("#step-polish")).to_have_class(re.compile(r"\btarget\b"))
    expect(page.locator("#step-polish")).to_be_in_viewport()


async def nothing(_: object) -> None:
    return None


def drop_streams(dashboard: DashboardServer) -> None:
    dashboard.call(lambda services: nothing(services.shutting_down.set()))


def test_a_reconnect_while_streaming_repeats_no_text(
    dashboard: DashboardServer, page_for: Callable[..., Page]
) -> None:
    slow_model(dashboard, pause=0.2)
    page = page_for("acme", "viewer")
    run_id = dashboard.start_run("echo", {"topic": "again"})
    page.goto(f"/runs/{run_id}")
    root = page.locator("#run-page")
    expect(page.locator("#step-draft .step-output")).to_contain_text("w2")

    drop_streams(dashboard)  # the server ends every open stream, as when it stops
    expect(root).to_have_attribute("data-stream_state", "reconnecting")
    dashboard.call(lambda services: nothing(services.shutting_down.clear()))
    expect(root).to_have_attribute("data-stream_state", "open")

    assert dashboard.wait_finished(run_id).status == "succeeded"
    expect(page.locator("#run-status")).to_have_text("succeeded")
    expect(page.locator("#step-draft .step-output")).to_have_text(reply("draft again"))
    expect(page.locator("#step-polish .step-output")).to_have_text(
        reply("polish " + reply("draft again"))
    )


def test_a_page_opened_mid_stream_shows_the_text_so_far_once(
    dashboard: DashboardServer, page_for: Callable[..., Page]
) -> None:
    slow_model(dashboard)
    first = page_for("acme", "viewer")
    run_id = dashboard.start_run("echo", {"topic": "late"})
    first.goto(f"/runs/{run_id}")
    expect(first.locator("#step-draft .step-output")).to_contain_text("w5")
    first.reload()  # rendered with the text so far, then streamed from there
    expect(first.locator("#run-status")).to_have_text("succeeded", timeout=30_000)
    expect(first.locator("#step-draft .step-output")).to_have_text(reply("draft late"))


def test_approve_a_gate_from_the_run_page(
    dashboard: DashboardServer, page_for: Callable[..., Page], pages: Pages
) -> None:
    page = page_for("acme", "operator")
    run_id = dashboard.start_run("gated", {"topic": "release"})
    page.goto(f"/runs/{run_id}")

    gate = page.locator(".gate[data-gate='sign-off']")
    expect(gate).to_contain_text("Publish echo: draft release?")  # the page reloads for it
    expect(page.locator("#dag-sign-off")).to_have_class(state("waiting"))
    pages.snapshot(page, "gate")
    gate.locator("textarea[name=comment]").fill("looks good")
    with page.expect_navigation():
        gate.locator("button[value=approve]").click()

    expect(page).to_have_url(re.compile(rf"/runs/{run_id}$"))
    expect(page.locator("#run-status")).to_have_text("succeeded", timeout=30_000)
    expect(page.locator("#dag-publish")).to_have_class(state("succeeded"))
    expect(page.locator(".gate")).to_have_count(0)


def test_a_viewer_sees_the_gate_but_no_form(
    dashboard: DashboardServer, page_for: Callable[..., Page]
) -> None:
    run_id = dashboard.start_run("gated", {"topic": "release"})
    page = page_for("acme", "viewer")
    page.goto(f"/runs/{run_id}")
    expect(page.locator(".gate[data-gate='sign-off']")).to_contain_text("Publish")
    expect(page.locator("main form")).to_have_count(0)
    expect(page.locator("main button")).to_have_count(0)


CANARY = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'


def test_tool_calls_and_untrusted_text_stream_in_as_text(
    dashboard: DashboardServer, page_for: Callable[..., Page]
) -> None:
    dashboard.tools.reply = lambda found: f"{CANARY} {found}"
    page = page_for("acme", "operator")
    run_id = dashboard.start_run("research", {"topic": CANARY})
    page.goto(f"/runs/{run_id}")

    expect(page.locator("#run-status")).to_have_text("succeeded", timeout=30_000)
    row = page.locator("#step-look .step-call-rows tr[data-call]")
    expect(row.first).to_be_visible()
    expect(page.locator("#step-look .call-args").first).to_contain_text("<script>window.__xss")
    expect(page.locator("#step-look .step-output")).to_contain_text(CANARY)
    expect(page.locator("img[src='x']")).to_have_count(0)
    assert page.evaluate("() => window.__xss") is None
