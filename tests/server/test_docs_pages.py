"""The interactive API docs work offline: every asset they load comes from the server itself.

A real uvicorn server on a free port and a real HTTP client: the pages are parsed for the
scripts, stylesheets and icons they reference, and each one is fetched from the server.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
import uvicorn

from agentmill.server.app import create_app
from agentmill.settings import Settings
from tests.servers import free_port

EXPECTED_TYPES = {
    ".js": ("text/javascript", "application/javascript"),
    ".css": ("text/css",),
    ".png": ("image/png",),
    ".json": ("application/json",),
}


class _Assets(HTMLParser):
    """The URLs a page loads: script sources, stylesheets and icons, plus quoted URLs in
    its inline scripts (Swagger UI is told where the OpenAPI document is in one)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self._in_script = tag == "script" and "src" not in found
        if tag == "script" and found.get("src"):
            self.urls.append(found["src"] or "")
        if tag == "link" and found.get("href"):
            self.urls.append(found["href"] or "")
        if tag == "redoc" and found.get("spec-url"):
            self.urls.append(found["spec-url"] or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.urls += re.findall(r"""(?:url|spec-url)['"]?\s*[:=]\s*['"]([^'"]+)['"]""", data)
            self.urls += re.findall(r"""['"](https?://[^'"]+)['"]""", data)


@pytest.fixture
async def base_url(sqlite_settings: Settings) -> AsyncIterator[str]:
    app = create_app(sqlite_settings, project=None, workers=0)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def _assets_of(client: httpx.AsyncClient, page: str) -> list[str]:
    response = await client.get(page)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    parser = _Assets()
    parser.feed(response.text)
    return [urljoin(str(response.url), url) for url in parser.urls]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_docs_pages_load_nothing_from_another_host(base_url: str, page: str) -> None:
    host = urlsplit(base_url).netloc
    async with httpx.AsyncClient(base_url=base_url) as client:
        urls = await _assets_of(client, page)
        off_host = [url for url in urls if urlsplit(url).netloc != host]
        assert off_host == [], f"{page} loads assets from elsewhere: {off_host}"
        kinds = {urlsplit(url).path.rsplit(".", 1)[-1] for url in urls}
        assert {"js", "json"} <= kinds, urls  # the viewer's script and the document it shows
        for url in urls:
            response = await client.get(url)
            assert response.status_code == 200, url
            suffix = "." + urlsplit(url).path.rsplit(".", 1)[-1]
            content_type = response.headers["content-type"]
            assert content_type.startswith(EXPECTED_TYPES[suffix]), (url, content_type)
            assert response.content, url


async def test_the_root_is_the_dashboard_and_the_docs_stay_at_docs(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:
        response = await client.get("/")
        assert response.status_code == 303
        assert response.headers["location"] == "/login"
        docs = await client.get("/docs")
    assert docs.status_code == 200
    assert "swagger-ui" in docs.text


CHROMIUM = shutil.which("chromium")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
@pytest.mark.parametrize(
    ("page", "rendered"), [("/docs", "opblock-summary"), ("/redoc", "Start a run")]
)
async def test_a_headless_browser_renders_the_docs_with_no_other_host(
    base_url: str, page: str, rendered: str
) -> None:
    """Every other host goes through a proxy that does not exist: the page must not need one."""
    assert CHROMIUM is not None
    browser = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--proxy-server=http://127.0.0.1:9",
        "--proxy-bypass-list=127.0.0.1",
        "--virtual-time-budget=10000",
        "--dump-dom",
        base_url + page,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    dom, _ = await asyncio.wait_for(browser.communicate(), 120)
    assert browser.returncode == 0
    assert rendered in dom.decode(), dom.decode()[:2000]
