"""Training configuration of a FastDraft drafter (saved with the run so --resume replays the same plan)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from edgegen.errors import EdgegenError
from edgegen.export.finetune import STDLIB, FineTuneConfig

STAGES = ("pretrain", "distill", "all")
INITS = ("spread", "first")
CONFIG_NAME = "train_config.json"


@dataclass
class TrainConfig(FineTuneConfig):
    """Everything that decides what a drafter training run computes (the shared fields: FineTuneConfig)."""

    CONFIG_NAME: ClassVar[str] = CONFIG_NAME

    layers: int = 2
    init: str = "first"  # which target layers seed the drafter: the first N (measured better), or evenly spaced
    stage: str = "all"
    pretrain_frac: float = 0.5  # share of the budget spent in stage 1 when stage == "all"
    weight_decay: float = 0.0
    kl_weight: float = 1.0  # forward KL(teacher || drafter) at T=1
    ce_weight: float = 0.1  # cross-entropy on the data's next token
    train_embedding: bool = False  # False: embedding/head stay the target's (not shipped)
    # None: train the full output head (reduced, if at all, when packed); N: train and ship a head of the run's
    # N most frequent tokens (pack.frequent_tokens): with a large vocabulary the head dominates training cost
    head_vocab: int | None = None

    def validate(self) -> None:
        if self.stage not in STAGES:
            raise EdgegenError(f"unknown stage '{self.stage}': choose from {', '.join(STAGES)}")
        if self.init not in INITS:
            raise EdgegenError(f"unknown layer init '{self.init}': choose from {', '.join(INITS)}")
        if self.layers < 1:
            raise EdgegenError(f"layers must be at least 1 (got {self.layers})")
        if self.head_vocab is not None and self.head_vocab < 2:
            raise EdgegenError(f"head-vocab must be at least 2 tokens (got {self.head_vocab})")
        super().validate()
        if not 0.0 <= self.pretrain_frac <= 1.0:
            raise EdgegenError("pretrain-frac must be within [0, 1]")
        if self.kl_weight < 0 or self.ce_weight < 0 or self.kl_weight + self.ce_weight == 0:
            raise EdgegenError("loss weights must be non-negative and not both zero")

    def plan(self) -> list[tuple[str, int]]:
        """[(stage name, steps)] in order."""
        total = self.total_steps()
        if self.stage == "pretrain":
            return [("pretrain", total)]
        if self.stage == "distill":
            return [("distill", total)]
        first = int(round(total * self.pretrain_frac))
        return [("pretrain", first), ("distill", total - first)]


__all__ = ["CONFIG_NAME", "INITS", "STAGES", "STDLIB", "TrainConfig"]
