"""What an agent call cost, from the maintained `genai-prices` table (no hand-kept prices)."""

from __future__ import annotations

import functools
import logging

from agentmill.agents.base import Usage
from agentmill.spec.models import ModelPrice

__all__ = ["cost_usd", "price_known"]

logger = logging.getLogger("agentmill.agents")


def cost_usd(model: str | None, usage: Usage, price: ModelPrice | None = None) -> float | None:
    """The price of `usage` on `model` (`provider:name[@url]`): from `price` when given,
    zero for the embedded local model, else from `genai-prices`; None when unknown
    (custom endpoints without a price, test models, models missing from the table)."""
    if price is not None:
        return (usage.input_tokens * price.input + usage.output_tokens * price.output) / 1e6
    if not model or ":" not in model:
        return None
    provider, _, name = model.partition(":")
    if provider == "local":
        return 0.0
    if provider == "test" or "@" in name:
        return None
    if usage.input_tokens == 0 and usage.output_tokens == 0:
        return 0.0 if price_known(model) else None
    return _price(provider, name, usage.input_tokens, usage.output_tokens, usage.cache_read_tokens)


def price_known(model: str, price: ModelPrice | None = None) -> bool:
    """Whether calls of `model` can be priced (so a dollar budget can be enforced)."""
    return cost_usd(model, Usage(input_tokens=1000, output_tokens=1000), price) is not None


@functools.lru_cache(maxsize=4096)
def _price(provider: str, name: str, tokens_in: int, tokens_out: int, cached: int) -> float | None:
    from genai_prices import Usage as PriceUsage
    from genai_prices import calc_price

    usage = PriceUsage(input_tokens=tokens_in, output_tokens=tokens_out, cache_read_tokens=cached)
    try:
        return float(calc_price(usage, model_ref=name, provider_id=provider).total_price)
    except LookupError:
        return None
