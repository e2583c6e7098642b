"""Retries, Retry-After, fallback and breakers against a real local HTTP server speaking the
OpenAI chat-completions API (streaming SSE and plain JSON) to the real OpenAI client."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from agentmill.engine.engine import Engine
from agentmill.store import EventRecord, RunStatus
from tests.engine.helpers import run_yaml


@dataclass(frozen=True)
class Reply:
    """One scripted answer: an HTTP error (status, headers) or a completion with `text`."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    text: str = "Hello from the server"
    usage: bool = True
    """Whether the answer reports token usage (some OpenAI-compatible servers do not)."""


@dataclass(frozen=True)
class Seen:
    path: str
    at: float
    stream: bool
    retry_count: str | None


class FakeOpenAI:
    """A threaded HTTP server answering `POST <prefix>/chat/completions` from a script per
    path prefix (the last reply repeats), recording every request it receives."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[Reply]] = {}
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, prefix: str) -> str:
        return f"http://127.0.0.1:{self.port}{prefix}"

    def requests(self, prefix: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.path == f"{prefix}/chat/completions"]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _next(self, path: str) -> Reply:
        prefix = path.removesuffix("/chat/completions")
        with self._lock:
            script = self.scripts.get(prefix, [Reply(status=404)])
            count = sum(1 for s in self.seen if s.path == path)
        return script[min(count - 1, len(script) - 1)]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                seen = Seen(
                    path=self.path,
                    at=time.monotonic(),
                    stream=bool(body.get("stream")),
                    retry_count=self.headers.get("x-stainless-retry-count"),
                )
                with fake._lock:
                    fake.seen.append(seen)
                reply = fake._next(self.path)
                if reply.status != 200:
                    self._error(reply)
                elif seen.stream:
                    self._stream(reply.text, usage=reply.usage)
                else:
                    self._complete(body, reply.text, usage=reply.usage)

            def _send(self, status: int, headers: dict[str, str], payload: bytes) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _error(self, reply: Reply) -> None:
                kind = "rate_limit_exceeded" if reply.status == 429 else "server_error"
                error = {"message": f"scripted {reply.status}", "type": kind, "code": kind}
                payload = json.dumps({"error": error}).encode()
                self._send(
                    reply.status, {"Content-Type": "application/json", **reply.headers}, payload
                )

            def _stream(self, text: str, *, usage: bool) -> None:
                words = text.split(" ")
                deltas = [{"role": "assistant", "content": words[0]}]
                deltas += [{"content": " " + word} for word in words[1:]]
                chunks = [_chunk(delta, None) for delta in deltas] + [_chunk({}, "stop")]
                chunks += [{**_chunk({}, None), "choices": [], "usage": _USAGE}] if usage else []
                payload = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks)
                payload += "data: [DONE]\n\n"
                self._send(200, {"Content-Type": "text/event-stream"}, payload.encode())

            def _complete(self, request: dict[str, Any], text: str, *, usage: bool) -> None:
                tools = [t["function"]["name"] for t in request.get("tools", [])]
                message: dict[str, Any] = {"role": "assistant", "content": text}
                finish = "stop"
                if tools:
                    arguments = json.dumps({"verdict": text})
                    call = {"id": "call_1", "type": "function"}
                    call["function"] = {"name": tools[0], "arguments": arguments}  # type: ignore[assignment]
                    message = {"role": "assistant", "content": None, "tool_calls": [call]}
                    finish = "tool_calls"
                elif "response_format" in request:
                    message["content"] = json.dumps({"verdict": text})
                completion = {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": 1,
                    "model": request.get("model", "m"),
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                    **({"usage": _USAGE} if usage else {}),
                }
                payload = json.dumps(completion).encode()
                self._send(200, {"Content-Type": "application/json"}, payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


_USAGE = {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}


def _chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


@pytest.fixture
def servers() -> Iterator[tuple[FakeOpenAI, FakeOpenAI]]:
    pair = (FakeOpenAI(), FakeOpenAI())
    for server in pair:
        server.start()
    try:
        yield pair
    finally:
        for server in pair:
            server.stop()


@pytest.fixture
def engine(sqlite_engine: Engine) -> Engine:
    """The real HTTP server is the subject here; SQLite is enough."""
    return sqlite_engine


def config(primary: str, backup: str, agent: str, breaker: str = "") -> str:
    return f"""
version: 1
{breaker}
models:
  primary: {{provider: openai, name: m, base_url: "{primary}"}}
  backup: {{provider: openai, name: m, base_url: "{backup}"}}
agents:
  a: {{model: primary, {agent}}}
workflows:
  w:
    steps:
      - {{id: s, agent: a, prompt: "hi", backoff: 10ms}}
"""


def of(events: list[EventRecord], kind: str) -> list[EventRecord]:
    return [e for e in events if e.kind == kind]


async def test_streamed_call_waits_retry_after_and_retries_a_500(
    engine: Engine, servers: tuple[FakeOpenAI, FakeOpenAI]
) -> None:
    server, other = servers
    server.scripts["/a/v1"] = [
        Reply(status=429, headers={"Retry-After": "1"}),
        Reply(status=500),
        Reply(text="Hello after two failures"),
    ]
    text = config(server.url("/a/v1"), other.url("/v1"), "retries: 2")
    run, events = await run_yaml(engine, text)

    assert run.status is RunStatus.SUCCEEDED, run.error
    seen = server.requests("/a/v1")
    # Exactly one request per attempt: the SDK's own retries are off.
    assert len(seen) == 3
    assert [s.retry_count for s in seen] == ["0", "0", "0"]
    assert all(s.stream for s in seen)
    assert seen[1].at - seen[0].at >= 0.95  # Retry-After: 1 was waited
    retrying = of(events, "step_retrying")
    assert len(retrying) == 2  # ours: one per failed request
    assert retrying[0].data["delay"] == 1.0
    assert 0.01 <= retrying[1].data["delay"] <= 0.02  # second retry: 10ms * 2, jittered
    assert [e.data["error"] for e in retrying] == [
        f"model openai:m@{server.url('/a/v1')} answered HTTP 429",
        f"model openai:m@{server.url('/a/v1')} answered HTTP 500",
    ]
    (step,) = await engine.store.steps(run.id)
    assert step.output == "Hello after two failures"
    assert step.model == f"openai:m@{server.url('/a/v1')}"
    assert step.details is None
    assert step.usage is not None
    assert step.usage["input_tokens"] == 7
    assert "".join(e.data["text"] for e in of(events, "step_output")) == step.output
    assert other.seen == []


async def test_structured_call_honours_retry_after_ms(
    engine: Engine, servers: tuple[FakeOpenAI, FakeOpenAI]
) -> None:
    server, other = servers
    server.scripts["/json/v1"] = [
        Reply(status=429, headers={"retry-after-ms": "200"}),
        Reply(status=503),
        Reply(text="fine"),
    ]
    schema = "output: {type: object, properties: {verdict: {type: string}}, required: [verdict]}"
    text = config(server.url("/json/v1"), other.url("/v1"), f"retries: 2, {schema}")
    run, events = await run_yaml(engine, text)

    assert run.status is RunStatus.SUCCEEDED, run.error
    seen = server.requests("/json/v1")
    assert len(seen) == 3
    assert not any(s.stream for s in seen)
    assert seen[1].at - seen[0].at >= 0.18
    assert of(events, "step_retrying")[0].data["delay"] == 0.2
    (step,) = await engine.store.steps(run.id)
    assert step.output == {"verdict": "fine"}


async def test_fallback_to_a_second_server_then_the_open_breaker_skips_the_first(
    engine: Engine, servers: tuple[FakeOpenAI, FakeOpenAI]
) -> None:
    server, other = servers
    server.scripts["/down/v1"] = [Reply(status=500)]
    other.scripts["/v1"] = [Reply(text="Hello from the backup")]
    down, backup = server.url("/down/v1"), other.url("/v1")
    text = config(
        down, backup, "retries: 1, fallback: [backup]", "breaker: {failures: 2, reset: 60s}"
    )

    run, events = await run_yaml(engine, text)
    assert run.status is RunStatus.SUCCEEDED, run.error
    assert len(server.requests("/down/v1")) == 2
    assert len(other.requests("/v1")) == 1
    (step,) = await engine.store.steps(run.id)
    assert step.model == f"openai:m@{backup}"
    assert step.output == "Hello from the backup"
    fallback = [{"model": f"openai:m@{down}", "error": "answered HTTP 500", "attempts": 2}]
    assert step.details == {"fallback": fallback}
    assert of(events, "step_finished")[0].data["details"] == {"fallback": fallback}
    assert [e.data["next_model"] for e in of(events, "step_retrying")] == [
        f"openai:m@{down}",
        f"openai:m@{backup}",
    ]

    # Two failures in a row opened the first server's breaker (keyed by provider and URL):
    # the next run goes to the backup at once, and the first server sees no request.
    run, events = await run_yaml(engine, text)
    assert run.status is RunStatus.SUCCEEDED, run.error
    assert len(server.requests("/down/v1")) == 2
    assert len(other.requests("/v1")) == 2
    assert of(events, "step_retrying") == []
    (step,) = await engine.store.steps(run.id)
    (skipped,) = step.details["fallback"] if step.details else []
    assert skipped["attempts"] == 0
    assert f"the circuit breaker for openai@{down} is open" in skipped["error"]


async def test_a_server_that_keeps_failing_fails_the_run_naming_both_servers(
    engine: Engine, servers: tuple[FakeOpenAI, FakeOpenAI]
) -> None:
    server, other = servers
    server.scripts["/down/v1"] = [Reply(status=502)]
    other.scripts["/v1"] = [Reply(status=400)]
    down, backup = server.url("/down/v1"), other.url("/v1")
    run, _ = await run_yaml(engine, config(down, backup, "retries: 1, fallback: [backup]"))
    assert run.status is RunStatus.FAILED
    assert len(server.requests("/down/v1")) == 2
    assert len(other.requests("/v1")) == 1  # a 400 is not retried
    assert f"model openai:m@{backup} answered HTTP 400: scripted 400" in (run.error or "")
    assert f"after falling back from openai:m@{down}" in (run.error or "")
