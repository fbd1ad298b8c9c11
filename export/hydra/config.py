"""Training configuration of Hydra heads (saved with the run so --resume replays the same plan)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from edgegen.errors import EdgegenError
from edgegen.export.finetune import FineTuneConfig


@dataclass
class HydraConfig(FineTuneConfig):
    """What decides a heads run (the shared fields: FineTuneConfig). The budget (--tokens) counts training
    positions read from the feature cache, every epoch of it."""

    CONFIG_NAME: ClassVar[str] = "hydra_config.json"
    DEFAULT_TOKENS: ClassVar[int] = 2_000_000

    heads: int = 4
    head_layers: int = 1  # residual blocks per head after its input layer
    head_vocab: int = 4096  # the heads' output vocabulary: the run's most frequent target tokens
    feature_tokens: int = 400_000  # corpus positions whose target features are cached (generations: all)
    top_k: int = 8  # target log-probabilities kept per position (soft labels; the first is the greedy label)
    head_decay: float = 0.8  # loss weight of head k: decay ** (k - 1)
    # factor on the token's embedding at each head's input during training (a power of two, folded into the packed
    # weights); 0: the power of two nearest rms(hidden) / rms(embedding) (model.token_scale; 16 for SmolLM2)
    token_scale: float = 1.0
    weight_decay: float = 0.0
    eval_every: int = 200  # steps between held-out evaluations (and at the end)
    lr: float = 1e-3
    batch_size: int = 8
    warmup: int = 50
    eval_tokens: int = 4096
    corpus_tokens: int = 1_000_000
    gen_temperatures: list[float] = field(default_factory=lambda: [0.0])  # greedy: the sequences decoding sees
    export: bool = False  # the heads run in NumPy: the pack is the product
    quality_gate: bool = False

    def validate(self) -> None:
        if self.heads < 1 or self.head_layers < 0:
            raise EdgegenError(f"need at least one head and no negative layer count (got {self.heads}, "
                               f"{self.head_layers})")
        if self.head_vocab < 2 or self.top_k < 1 or self.feature_tokens < 0 or self.eval_every < 0:
            raise EdgegenError("head-vocab must be >= 2, top-k >= 1, feature-tokens and eval-every >= 0")
        if self.token_scale != 0 and not (self.token_scale > 0 and math.log2(self.token_scale).is_integer()):
            raise EdgegenError(f"token-scale must be a power of two, or 0 (automatic); got {self.token_scale}")
        if not 0 < self.head_decay <= 1:
            raise EdgegenError(f"head-decay must be within (0, 1], got {self.head_decay}")
        super().validate()
