"""Decode strategies, registered by name."""

from __future__ import annotations

from collections.abc import Callable

from edgegen.errors import EdgegenError
from edgegen.strategies.autoregressive import Autoregressive
from edgegen.strategies.base import DecodeCounters, DecodeRequest, Strategy

# name -> factory taking the strategy's options (keyword arguments)
STRATEGIES: dict[str, Callable[..., Strategy]] = {
    Autoregressive.name: Autoregressive,
}


def make_strategy(name: str, **options: object) -> Strategy:
    if name not in STRATEGIES:
        raise EdgegenError(f"unknown strategy '{name}' (known: {', '.join(STRATEGIES)})")
    try:
        return STRATEGIES[name](**options)
    except TypeError as e:
        raise EdgegenError(f"bad options for strategy '{name}': {e}") from None


__all__ = ["STRATEGIES", "DecodeCounters", "DecodeRequest", "Strategy", "make_strategy"]
