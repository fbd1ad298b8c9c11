"""What a generation returns: the text, its tokens, why it stopped and how long it took."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class GenerationStats:
    """Timings and counts of one generation. Times in milliseconds."""

    prompt_tokens: int
    new_tokens: int
    prefill_ms: float
    ttft_ms: float  # request start to first new token
    decode_ms: float  # first new token to last
    tokens_per_s: float  # decode rate: (new_tokens - 1) / decode time
    target_steps: int  # target forwards after prefill
    tokens_per_step: float  # new tokens per target forward (1 for AR)
    target_ms: float
    draft_ms: float
    draft_proposed: int
    draft_accepted: int
    acceptance_rate: float
    strategy: str
    backend: str
    device: str


@dataclass(frozen=True)
class DraftResult:
    """One of the drafts of a multi-draft strategy (superposed), ranked by ``score``."""

    text: str
    token_ids: list[int]  # generated tokens only (EOS excluded)
    score: float  # the strategy's ranking score, higher is better (superposed: mean log-prob per token)
    finish_reason: str  # "eos" | "stop" | "length"


@dataclass(frozen=True)
class GenerationResult:
    """One completion: its text and tokens, why it ended and its stats."""

    text: str
    token_ids: list[int]  # generated tokens only (EOS excluded)
    prompt_token_ids: list[int]
    stats: GenerationStats
    finish_reason: str  # "eos" | "stop" | "length"
    drafts: list[DraftResult] = field(default_factory=list)  # multi-draft strategies: best first, [0] is text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
