"""Turning a config model reference into a pydantic-ai `Model`, and checking it early.

A missing package or API key is reported when the config is validated, naming the extra
to install or the variable to set (never its value), not in the middle of a run.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Generator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentmill.errors import MissingCredentialError, MissingDependencyError, UserError
from agentmill.settings import credential_present, credential_value
from agentmill.spec.models import ModelEndpoint

if TYPE_CHECKING:
    from pydantic_ai.models import Model
    from pydantic_ai.providers import Provider

__all__ = ["check_model", "model_label", "override_models", "resolve_model"]


@dataclass(frozen=True)
class _Provider:
    env_var: str | None
    module: str
    extra: str


_PROVIDERS: dict[str, _Provider] = {
    "openai": _Provider("OPENAI_API_KEY", "openai", "openai"),
    "anthropic": _Provider("ANTHROPIC_API_KEY", "anthropic", "anthropic"),
    "google-gla": _Provider("GOOGLE_API_KEY", "google.genai", "google"),
    "google": _Provider("GOOGLE_API_KEY", "google.genai", "google"),
    "google-vertex": _Provider(None, "google.genai", "google"),
    "groq": _Provider("GROQ_API_KEY", "groq", "groq"),
    "mistral": _Provider("MISTRAL_API_KEY", "mistralai", "mistral"),
    "ollama": _Provider(None, "openai", "openai"),
}

ModelFactory = Callable[[str], "Model"]
_override: list[ModelFactory] = []


@contextmanager
def override_models(factory: ModelFactory) -> Generator[None]:
    """Resolve every model reference with `factory(label)` (for tests of workflows)."""
    _override.append(factory)
    try:
        yield
    finally:
        _override.remove(factory)


def model_label(ref: str | ModelEndpoint) -> str:
    """A printable name for a model reference; never contains a key."""
    if isinstance(ref, str):
        return ref
    where = f"@{ref.base_url}" if ref.base_url else ""
    return f"{ref.provider}:{ref.name}{where}"


def check_model(ref: str | ModelEndpoint) -> None:
    """Raise a UserError naming the fix if this model cannot be used here."""
    if _override:
        return
    if isinstance(ref, ModelEndpoint):
        _check_endpoint(ref)
        return
    provider = ref.split(":", 1)[0] if ":" in ref else ""
    if provider == "local":
        from agentmill.agents.local import local_model_status

        usable, detail = local_model_status(ref)
        if not usable:
            raise MissingDependencyError(detail)
    elif provider == "test":
        _check_resolves(ref)
    elif provider in _PROVIDERS:
        _check_provider(provider, _PROVIDERS[provider])
        _check_resolves(ref)
    else:
        raise UserError(f"unknown model {ref!r}: use provider:name, e.g. openai:gpt-4o-mini")


def _check_resolves(ref: str) -> None:
    """Let pydantic-ai build the model (no network) to catch what it would refuse mid-run."""
    from pydantic_ai.exceptions import UserError as PydanticAIUserError

    try:
        resolve_model(ref)
    except PydanticAIUserError as exc:
        raise UserError(f"model {ref!r} cannot be used: {exc}") from None


def _check_endpoint(ref: ModelEndpoint) -> None:
    info = _PROVIDERS[ref.provider]
    _check_package(ref.provider, info)
    if ref.api_key_env and not credential_present(ref.api_key_env):
        raise MissingCredentialError(
            f"model {model_label(ref)} needs an API key: set the {ref.api_key_env} "
            "environment variable"
        )
    if ref.base_url is None and ref.api_key_env is None:
        _check_provider(ref.provider, info)


def _check_provider(provider: str, info: _Provider) -> None:
    _check_package(provider, info)
    if info.env_var and not credential_present(info.env_var):
        raise MissingCredentialError(
            f"models of provider {provider!r} need an API key: set the {info.env_var} "
            "environment variable (or use local:smollm2, which needs none)"
        )


def _check_package(provider: str, info: _Provider) -> None:
    if importlib.util.find_spec(info.module.split(".")[0]) is None:
        raise MissingDependencyError(
            f"provider {provider!r} is not installed: pip install 'agentmill[{info.extra}]'"
        )


def resolve_model(ref: str | ModelEndpoint) -> Model:
    """The pydantic-ai model for a reference (call `check_model` first for clear errors).

    OpenAI and Anthropic clients (also behind Ollama and other OpenAI-compatible servers) are
    built with the SDK's own retries off: agentmill's retry policy (`policy/retry.py`) is the
    only one, so a Retry-After is waited once and every request is counted by the breaker.
    """
    if _override:
        return _override[-1](model_label(ref))
    if isinstance(ref, ModelEndpoint):
        return _endpoint_model(ref)
    if ref.startswith("local:"):
        from agentmill.agents.local import load_local_model

        return load_local_model(ref)
    from pydantic_ai.models import infer_model

    if ref.split(":", 1)[0] in _SDK_RETRIES_OFF:
        return infer_model(ref, provider_factory=_provider_without_sdk_retries)
    return infer_model(ref)


_SDK_RETRIES_OFF = frozenset({"openai", "anthropic", "ollama"})
"""Providers whose SDK retries by itself; their clients are built with `max_retries=0`."""


def _provider_without_sdk_retries(name: str) -> Provider[Any]:
    """pydantic-ai's provider for `name` (one of `_SDK_RETRIES_OFF`), with SDK retries off."""
    if name == "openai":
        return _openai_provider(None, credential_value("OPENAI_API_KEY"))
    if name == "anthropic":
        return _anthropic_provider(None, credential_value("ANTHROPIC_API_KEY"))
    if name == "ollama":
        from openai import AsyncOpenAI
        from pydantic_ai.providers.ollama import OllamaProvider

        base_url = credential_value("OLLAMA_BASE_URL")
        if base_url is None:
            raise UserError("ollama models need OLLAMA_BASE_URL, e.g. http://127.0.0.1:11434/v1")
        api_key = credential_value("OLLAMA_API_KEY") or "not-needed"
        client = AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0)
        return OllamaProvider(openai_client=client)
    raise ValueError(f"no SDK client without retries for provider {name!r}")


def _openai_provider(base_url: str | None, api_key: str | None) -> Provider[Any]:
    from openai import AsyncOpenAI
    from pydantic_ai.providers.openai import OpenAIProvider

    client = AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0)
    return OpenAIProvider(openai_client=client)


def _anthropic_provider(base_url: str | None, api_key: str | None) -> Provider[Any]:
    from anthropic import AsyncAnthropic
    from pydantic_ai.providers.anthropic import AnthropicProvider

    client = AsyncAnthropic(base_url=base_url, api_key=api_key, max_retries=0)
    return AnthropicProvider(anthropic_client=client)


def _endpoint_model(ref: ModelEndpoint) -> Model:
    api_key = credential_value(ref.api_key_env) if ref.api_key_env else None
    if ref.provider == "openai":
        from pydantic_ai.models.openai import OpenAIChatModel

        if ref.base_url is not None:
            api_key = api_key or "not-needed"
        else:
            api_key = api_key or credential_value("OPENAI_API_KEY")
        return OpenAIChatModel(ref.name, provider=_openai_provider(ref.base_url, api_key))
    if ref.provider == "anthropic":
        from pydantic_ai.models.anthropic import AnthropicModel

        api_key = api_key or credential_value("ANTHROPIC_API_KEY")
        return AnthropicModel(ref.name, provider=_anthropic_provider(ref.base_url, api_key))
    from pydantic_ai.models import infer_model

    return infer_model(f"{ref.provider}:{ref.name}")
