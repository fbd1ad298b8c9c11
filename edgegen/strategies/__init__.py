"""Decode strategies, registered by name.

Each strategy class says what it needs (``multi_draft``, ``needs_embeddings``, ``default_model``,
``takes_constraint``: see base.Strategy) and builds itself from the loaded draft model's drafter (or None)
and its options (``Strategy.build``).
"""

from __future__ import annotations

from typing import Any

from edgegen.errors import EdgegenError
from edgegen.strategies.autoregressive import Autoregressive
from edgegen.strategies.base import DecodeCounters, DecodeRequest, MultiDraftStrategy, RankedDraft, Strategy
from edgegen.strategies.drafters import Draft, Drafter, ModelDrafter, PromptLookupDrafter
from edgegen.strategies.hydra import Hydra
from edgegen.strategies.lexical import Lexical
from edgegen.strategies.speculative import PromptLookup, Speculative
from edgegen.strategies.superposed import Superposed

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (Autoregressive, PromptLookup, Speculative, Hydra, Superposed, Lexical)
}


def strategy_type(name: str) -> type[Strategy]:
    """The class registered as ``name`` (its capability attributes say what it needs); EdgegenError if unknown."""
    if name not in STRATEGIES:
        raise EdgegenError(f"unknown strategy '{name}' (known: {', '.join(STRATEGIES)})")
    return STRATEGIES[name]


def make_strategy(name: str, drafter: Drafter | None = None, **options: Any) -> Strategy:
    """Build strategy ``name``; unknown names and bad options are one-line EdgegenErrors."""
    cls = strategy_type(name)
    try:
        return cls.build(drafter, **options)
    except (TypeError, ValueError) as e:
        raise EdgegenError(f"bad options for strategy '{name}': {e}") from None


__all__ = ["STRATEGIES", "DecodeCounters", "DecodeRequest", "Draft", "Drafter",
           "ModelDrafter", "MultiDraftStrategy", "PromptLookupDrafter", "RankedDraft", "Strategy", "Superposed",
           "make_strategy", "strategy_type"]
