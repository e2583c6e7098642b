"""Tokens per second of `local:smollm2`: llama-cpp-python directly versus agentmill's LocalModel.

Run: `.venv/bin/python benchmarks/bench_local_model.py [--runs 3] [--tokens 128]`

Both generate the same greedy (temperature 0) answer to the same prompt: (a) llama-cpp-python's
`create_chat_completion(stream=True)` on a `Llama` of its own, (b) `LocalModel.request_stream` on
an asyncio event loop. Both are warmed up once, then the runs alternate (a b b a a b ...) so that
load from other processes weighs on both alike. Prints a markdown table row for
docs/benchmarks.md; the target is agentmill >= 90% of direct.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import time
from importlib import metadata

from llama_cpp import Llama
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    PartDeltaEvent,
    PartStartEvent,
    TextPart,
    TextPartDelta,
)
from pydantic_ai.models import ModelRequestParameters
from pydantic_ai.settings import ModelSettings

from agentmill.agents.local import REPEAT_PENALTY, LocalModel, load_local_model

PROMPT = "Write a very long story about a dragon."  # answered at length: every run hits the limit
TARGET = 0.90


def direct_run(llama: Llama, tokens: int) -> tuple[str, float]:
    """One streamed chat completion straight from llama-cpp-python: (text, seconds)."""
    start = time.perf_counter()
    chunks = llama.create_chat_completion(
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=tokens,
        temperature=0,
        repeat_penalty=REPEAT_PENALTY,
        stream=True,
    )
    assert not isinstance(chunks, dict)
    pieces: list[str] = []
    finish: str | None = None
    for chunk in chunks:
        choice = chunk["choices"][0]
        pieces.append(choice["delta"].get("content") or "")
        finish = choice["finish_reason"] or finish
    elapsed = time.perf_counter() - start
    assert finish == "length", f"direct run stopped early ({finish}): tokens/s would be off"
    return "".join(pieces), elapsed


async def agentmill_run(model: LocalModel, tokens: int) -> tuple[str, float]:
    """One `LocalModel.request_stream`, read event by event: (text, seconds)."""
    messages: list[ModelMessage] = [ModelRequest.user_text_prompt(PROMPT)]
    settings = ModelSettings(max_tokens=tokens, temperature=0)
    start = time.perf_counter()
    pieces: list[str] = []
    async with model.request_stream(messages, settings, ModelRequestParameters()) as stream:
        async for event in stream:
            if isinstance(event, PartStartEvent) and isinstance(event.part, TextPart):
                pieces.append(event.part.content)
            elif isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta):
                pieces.append(event.delta.content_delta)
    elapsed = time.perf_counter() - start
    response = stream.get()
    assert response.usage.output_tokens == tokens, response.usage
    assert response.finish_reason == "length", response.finish_reason
    return "".join(pieces), elapsed


async def main(runs: int, tokens: int) -> None:
    model = load_local_model("smollm2")
    llama = Llama(str(model.model_path), n_ctx=model.n_ctx, n_threads=os.cpu_count(), verbose=False)
    direct_text, _ = direct_run(llama, tokens)  # warm-up
    agentmill_text, _ = await agentmill_run(model, tokens)  # warm-up, and loads the model
    assert agentmill_text == direct_text, "both paths must generate the same greedy answer"

    direct: list[float] = []
    agentmill: list[float] = []
    for run in range(runs):
        order = ("direct", "agentmill") if run % 2 == 0 else ("agentmill", "direct")
        for path in order:
            if path == "direct":
                direct.append(direct_run(llama, tokens)[1])
            else:
                agentmill.append((await agentmill_run(model, tokens))[1])
        print(
            f"run {run + 1}: direct {tokens / direct[-1]:6.1f} tok/s,"
            f" agentmill {tokens / agentmill[-1]:6.1f} tok/s"
        )
    report(runs, tokens, direct, agentmill)


def report(runs: int, tokens: int, direct: list[float], agentmill: list[float]) -> None:
    direct_rate = runs * tokens / sum(direct)
    agentmill_rate = runs * tokens / sum(agentmill)
    ratio = agentmill_rate / direct_rate
    verdict = "met" if ratio >= TARGET else "NOT met"
    print(
        f"\ndirect {direct_rate:.1f} tok/s, agentmill {agentmill_rate:.1f} tok/s, ratio {ratio:.1%}"
    )
    print(f"target agentmill >= {TARGET:.0%} of direct: {verdict}\n")
    machine = f"{os.cpu_count()} cores {platform.machine()}"
    version = metadata.version("llama-cpp-python")
    print("| date | machine | llama-cpp-python | runs x tokens", end="")
    print(" | direct tok/s | agentmill tok/s | agentmill/direct |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {datetime.date.today()} | {machine} | {version} | {runs} x {tokens}"
        f" | {direct_rate:.1f} | {agentmill_rate:.1f} | {ratio:.0%} |"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="local:smollm2 tokens/s, direct vs agentmill")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.runs, arguments.tokens))
