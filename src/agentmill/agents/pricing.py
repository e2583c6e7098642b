"""What an agent call cost, from the maintained `genai-prices` table (no hand-kept prices)."""

from __future__ import annotations

import functools
import logging

from agentmill.agents.base import Usage

__all__ = ["cost_usd"]

logger = logging.getLogger("agentmill.agents")


def cost_usd(model: str | None, usage: Usage) -> float | None:
    """The price of `usage` on `model` (`provider:name[@url]`), or None when unknown
    (local models, custom endpoints, models missing from the table)."""
    if not model or ":" not in model or (usage.input_tokens == 0 and usage.output_tokens == 0):
        return None
    provider, _, name = model.partition(":")
    if provider in {"local", "test"} or "@" in name:
        return None
    return _price(provider, name, usage.input_tokens, usage.output_tokens, usage.cache_read_tokens)


@functools.lru_cache(maxsize=4096)
def _price(provider: str, name: str, tokens_in: int, tokens_out: int, cached: int) -> float | None:
    from genai_prices import Usage as PriceUsage
    from genai_prices import calc_price

    usage = PriceUsage(input_tokens=tokens_in, output_tokens=tokens_out, cache_read_tokens=cached)
    try:
        return float(calc_price(usage, model_ref=name, provider_id=provider).total_price)
    except LookupError:
        return None
