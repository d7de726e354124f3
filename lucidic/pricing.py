"""What an LLM call cost, from a price table kept in one data file.

The table (``lucidic/data/prices.json``) gives USD per million tokens by
provider and model; ``LUCIDIC_PRICES`` names a JSON file of the same shape
whose entries are merged over it. Model names match exactly, else by the
longest prefix (dated snapshots find their family).

Input tokens include the cached ones: cache reads are charged at the
``cached_input`` rate, and prompt-cache writes at ``cache_write`` (Anthropic's
5-minute cache, 1.25 times the input rate) or ``cache_write_1h`` (its 1-hour
cache, twice the input rate), each where the table knows one, else at the
input rate.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

from . import _config
from ._internal import log_rate_limited

Prices = dict[str, dict[str, dict[str, float]]]


@functools.lru_cache(maxsize=1)
def _table(override_path: str | None) -> Prices:
    table: Prices = json.loads(resources.files("lucidic").joinpath("data/prices.json")
                               .read_text("utf-8"))
    table.pop("_comment", None)
    if override_path:
        try:
            with open(override_path, encoding="utf-8") as f:
                override = json.load(f)
        except (OSError, ValueError) as exc:
            log_rate_limited("prices_override", "lucidic: cannot read LUCIDIC_PRICES file "
                             "%s (%s); using the built-in prices", override_path, exc)
            return table
        for provider, models in override.items():
            if isinstance(models, dict):
                table.setdefault(provider, {}).update(models)
    return table


def price_of(provider: str | None, model: str | None) -> dict[str, float] | None:
    if not model:
        return None
    table = _table(_config.env("LUCIDIC_PRICES"))
    providers: list[Any] = [table.get(provider)] if provider in table else list(table.values())
    best: tuple[int, dict[str, float]] | None = None
    for models in providers:
        if not isinstance(models, dict):
            continue
        exact = models.get(model)
        if isinstance(exact, dict):
            return exact
        for name, price in models.items():
            if model.startswith(name) and (best is None or len(name) > best[0]):
                best = (len(name), price)
    return best[1] if best else None


def cost_of(provider: str | None, model: str | None, input_tokens: int | None,
            output_tokens: int | None, cached_tokens: int | None = None,
            cache_write_tokens: int | None = None,
            cache_write_1h_tokens: int | None = None) -> float | None:
    """USD for one call, or None when the model's price is unknown.

    ``cached_tokens`` (cache reads) and ``cache_write_tokens`` are parts of
    ``input_tokens``; ``cache_write_1h_tokens`` is the part of the writes
    made to a 1-hour cache."""
    price = price_of(provider, model)
    if price is None or (input_tokens is None and output_tokens is None):
        return None
    base = price.get("input", 0.0)
    total_in = input_tokens or 0
    cached = min(cached_tokens or 0, total_in)
    written = min(cache_write_tokens or 0, total_in - cached)
    written_1h = min(cache_write_1h_tokens or 0, written)
    uncached = total_in - cached - written
    total = (uncached * base
             + cached * price.get("cached_input", base)
             + (written - written_1h) * price.get("cache_write", base)
             + written_1h * price.get("cache_write_1h", price.get("cache_write", base))
             + (output_tokens or 0) * price.get("output", 0.0))
    return total / 1_000_000
