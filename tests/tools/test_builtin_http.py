"""http_request against a real local HTTP server: the allowlist is checked on the parsed
host (and on every redirect), answers are bounded, unsafe methods carry the call's key."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agentmill.agents.tools.builtin_http import allowed_host
from agentmill.agents.tools.builtins import builtin_toolset
from agentmill.agents.tools.context import ToolCall, executing
from tests.tools.helpers import Outcome, call_tool


class Site:
    """A threaded HTTP server recording each request's path and headers."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def paths(self) -> list[str]:
        return [path for _, path, _ in self.seen]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.seen.append((self.command, self.path, dict(self.headers.items())))
                if self.path.startswith("/to/"):
                    self.send_response(302)
                    self.send_header("Location", self.path.removeprefix("/to/"))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = b"A" * 1_000_000 if self.path == "/big" else b"hello from the site"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Set-Cookie", "session=abc")
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                self.rfile.read(length)
                self.do_GET()

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


@pytest.fixture
def site() -> Iterator[Site]:
    served = Site()
    yield served
    served.close()


async def request(url: str, *, allow: list[str], max_output: int = 64 * 1024, **args: object):
    toolset = builtin_toolset("http_request", workspace=None, allow=allow, max_output=max_output)
    return await call_tool(toolset, "http_request", url=url, **args)


async def test_an_allowed_host_is_reached(site: Site) -> None:
    outcome = await request(site.url("/hello"), allow=["127.0.0.1"])
    assert outcome == Outcome(
        "return",
        "HTTP 200 OK\ncontent-type: text/plain; charset=utf-8\ncontent-length: 19\n\n"
        "hello from the site",
    )


async def test_a_host_off_the_allowlist_is_refused_before_any_request(site: Site) -> None:
    outcome = await request(site.url("/hello", host="localhost"), allow=["127.0.0.1"])
    assert outcome.kind == "retry"
    assert "host localhost is not allowed" in outcome.text
    assert "127.0.0.1" in outcome.text
    assert site.seen == []


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1@localhost:{port}/hello",  # the allowed name as a user name
        "http://127.0.0.1:x@localhost:{port}/hello",
        "file:///etc/passwd",
        "ftp://127.0.0.1/hello",
        "127.0.0.1/hello",
    ],
)
async def test_tricks_with_the_url_are_refused(site: Site, url: str) -> None:
    outcome = await request(url.format(port=site.port), allow=["127.0.0.1"])
    assert outcome.kind == "retry"
    assert site.seen == []


async def test_a_redirect_to_a_host_off_the_allowlist_is_not_followed(site: Site) -> None:
    away = site.url("/secret", host="localhost")
    outcome = await request(site.url(f"/to/{away}"), allow=["127.0.0.1"])
    assert outcome.kind == "retry"
    assert "redirected (302) to host localhost" in outcome.text
    assert site.paths() == [f"/to/{away}"]


async def test_a_redirect_within_the_allowlist_is_followed(site: Site) -> None:
    outcome = await request(site.url("/to//hello"), allow=["127.0.0.1"])
    assert outcome.text.endswith("hello from the site")
    assert site.paths() == ["/to//hello", "/hello"]


async def test_the_body_is_cut_at_the_limit(site: Site) -> None:
    outcome = await request(site.url("/big"), allow=["127.0.0.1"], max_output=1000)
    assert outcome.text.endswith("A" * 1000 + "\n[body cut at 1,000 bytes]")
    assert len(outcome.text) < 1200


async def test_an_unsafe_method_carries_the_calls_idempotency_key(site: Site) -> None:
    call = ToolCall(
        run_id="run-1",
        step="review",
        name="http_request",
        call_id="c7",
        idempotency_key="run-1/review/c7",
        workspace=Path("/nonexistent"),
    )
    with executing(call):
        await request(site.url("/post"), allow=["127.0.0.1"], method="POST", body="{}")
        await request(site.url("/get"), allow=["127.0.0.1"])
    (post_method, _, post_headers), (_, _, get_headers) = site.seen
    assert post_method == "POST"
    assert post_headers["Idempotency-Key"] == "run-1/review/c7"
    assert "Idempotency-Key" not in get_headers


async def test_an_unreachable_host_is_a_retry_without_the_headers(site: Site) -> None:
    port = site.port
    site.close()
    outcome = await request(
        f"http://127.0.0.1:{port}/x",
        allow=["127.0.0.1"],
        headers={"Authorization": "Bearer sk-very-secret-value"},
    )
    assert outcome.kind == "retry"
    assert "failed: ConnectError" in outcome.text
    assert "sk-very-secret-value" not in outcome.text


async def test_the_host_header_cannot_be_set(site: Site) -> None:
    outcome = await request(site.url("/x"), allow=["127.0.0.1"], headers={"Host": "localhost"})
    assert outcome.kind == "retry"
    assert site.seen == []


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("api.github.com", True),
        ("API.GitHub.com.", True),
        ("a.example.com", True),
        ("a.b.example.com", True),
        ("example.com", False),
        ("evilexample.com", False),
        ("api.github.com.evil.com", False),
        ("github.com", False),
        ("", False),
    ],
)
def test_hosts_match_exactly_or_by_glob(host: str, allowed: bool) -> None:
    assert allowed_host(host, ["api.github.com", "*.example.com"]) is allowed
