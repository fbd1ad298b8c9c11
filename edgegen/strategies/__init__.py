"""Decode strategies, registered by name.

A factory takes the loaded draft model's drafter (or None) and the strategy's options.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgegen.errors import EdgegenError
from edgegen.strategies.autoregressive import Autoregressive
from edgegen.strategies.base import DecodeCounters, DecodeRequest, MultiDraftStrategy, RankedDraft, Strategy
from edgegen.strategies.drafters import Draft, Drafter, LookupThenModel, ModelDrafter, PromptLookupDrafter
from edgegen.strategies.lexical import Lexical
from edgegen.strategies.speculative import PromptLookup, Speculative
from edgegen.strategies.superposed import Superposed


def _speculative(drafter: Drafter | None, **options: Any) -> Strategy:
    if drafter is None:
        raise EdgegenError("strategy 'speculative' needs a draft model (--draft DIR); "
                           "'prompt-lookup' needs none")
    if options.pop("lookup", True) and isinstance(drafter, ModelDrafter):
        drafter = LookupThenModel(drafter)  # free drafts where the context repeats
    return Speculative(drafter, **options)


STRATEGIES: dict[str, Callable[..., Strategy]] = {
    Autoregressive.name: lambda drafter, **options: Autoregressive(**options),
    PromptLookup.name: lambda drafter, **options: PromptLookup(**options),
    Speculative.name: _speculative,
    Superposed.name: lambda drafter, **options: Superposed(**options),
    Lexical.name: lambda drafter, **options: Lexical(**options),
}
MULTI_DRAFT_STRATEGIES = frozenset({Superposed.name})  # return several ranked drafts (result.drafts)


def make_strategy(name: str, drafter: Drafter | None = None, **options: Any) -> Strategy:
    """Build strategy ``name``; unknown names and bad options are one-line EdgegenErrors."""
    if name not in STRATEGIES:
        raise EdgegenError(f"unknown strategy '{name}' (known: {', '.join(STRATEGIES)})")
    try:
        return STRATEGIES[name](drafter, **options)
    except (TypeError, ValueError) as e:
        raise EdgegenError(f"bad options for strategy '{name}': {e}") from None


__all__ = ["MULTI_DRAFT_STRATEGIES", "STRATEGIES", "DecodeCounters", "DecodeRequest", "Draft", "Drafter",
           "ModelDrafter", "MultiDraftStrategy", "PromptLookupDrafter", "RankedDraft", "Strategy", "Superposed",
           "make_strategy"]
