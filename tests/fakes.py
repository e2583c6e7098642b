"""Scripted models for tests: deterministic text, latency, failures and a call log."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from pydantic_ai.messages import ModelMessage, ModelRequest, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel


def prompt_of(messages: list[ModelMessage]) -> str:
    for message in messages:
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, UserPromptPart) and isinstance(part.content, str):
                    return part.content
    return ""


@dataclass
class ScriptedModel:
    """A FunctionModel factory whose replies, latency and failures are scripted per prompt."""

    latency: float = 0.0
    reply: Callable[[str], str] = lambda prompt: f"echo: {prompt}"
    fail: Callable[[str, int], BaseException | None] = lambda prompt, call: None
    calls: list[str] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0

    def model(self, label: str = "scripted") -> FunctionModel:
        return FunctionModel(stream_function=self._stream, model_name=label)

    def count(self, prompt: str) -> int:
        return sum(1 for p in self.calls if p == prompt)

    async def _stream(self, messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        prompt = prompt_of(messages)
        self.calls.append(prompt)
        number = self.count(prompt)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            error = self.fail(prompt, number)
            if error is not None:
                raise error
            words = self.reply(prompt).split(" ")
            yield words[0]
            for word in words[1:]:
                yield " " + word
        finally:
            self.in_flight -= 1
