"""Training configuration of a Lexical Unit Decoding fine-tune (saved with the run so --resume replays it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from edgegen.errors import EdgegenError
from edgegen.export.finetune import FineTuneConfig

CONFIG_NAME = "lud_config.json"
TRAINABLE = ("placeholders", "lora")
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_PREFIX = "lora::"  # checkpoint tensor names of the adapters: LORA_PREFIX + the model's parameter name


@dataclass
class LudConfig(FineTuneConfig):
    """Everything that decides what a LUD training run computes (the shared fields: FineTuneConfig)."""

    CONFIG_NAME: ClassVar[str] = CONFIG_NAME
    DEFAULT_TOKENS: ClassVar[int] = 400_000

    span: int = 4  # m: placeholders per step (the unit's first token + up to m more)
    placeholder_ids: list[int] | None = None  # None: SmolLM2's rare Jupyter tokens, else the vocabulary's last ids
    unit_threshold: float = 0.6  # a token joins the unit when p_target(token | prefix) > this
    outside_weight: float = 0.3  # loss weight of placeholder rows past the unit's end (calibration)
    guard_weight: float = 1.0  # penalty on the placeholder ids' probability at ordinary rows (tied head)
    max_blocks: int = 24  # placeholder blocks per sequence
    trainable: str = "placeholders"  # "placeholders": those rows only (ordinary rows stay the target's);
    # "lora": the rows + LoRA adapters on the top `lora_layers` decoder layers, ordinary rows held by a KL guard
    lora_rank: int = 16
    lora_alpha: float = 32.0  # LoRA scale = alpha / rank
    lora_layers: int = 8  # the top N decoder layers get adapters (the backward of real rows stops below them)
    lora_modules: list[str] = field(default_factory=lambda: list(LORA_MODULES))
    lora_lr: float = 1e-3  # peak learning rate of the adapters (the rows use `lr`; same schedule)
    kl_weight: float = 1.0  # x KL(p_base || p_tuned) at ordinary rows (lora only)
    gen_share: float = 0.5  # share of batches drawn from the target's own generations
    eval_every: int = 0  # steps between evaluations (0: at the start and the end only)
    # shared fields with other defaults than the drafter's
    seq_len: int = 192
    lr: float = 3e-3
    eval_tokens: int = 2048  # per held-out set
    gen_prompts: int = 48

    def validate(self) -> None:
        if self.trainable not in TRAINABLE:
            raise EdgegenError(f"unknown trainable set '{self.trainable}': choose from {', '.join(TRAINABLE)}")
        if self.lora_rank < 1 or self.lora_layers < 1:
            raise EdgegenError(f"lora-rank and lora-layers must be at least 1 (got {self.lora_rank}, "
                               f"{self.lora_layers})")
        if not self.lora_modules or any(m not in LORA_MODULES for m in self.lora_modules):
            raise EdgegenError(f"lora modules must be among {', '.join(LORA_MODULES)} (got {self.lora_modules})")
        if self.lora_alpha <= 0 or self.lora_lr <= 0 or self.kl_weight < 0:
            raise EdgegenError(f"lora-alpha and lora-lr must be positive, kl-weight >= 0 (got {self.lora_alpha}, "
                               f"{self.lora_lr}, {self.kl_weight})")
        if not 1 <= self.span <= 16:
            raise EdgegenError(f"span must be within [1, 16] placeholders (got {self.span})")
        if self.placeholder_ids is not None and len(set(self.placeholder_ids)) < self.span:
            raise EdgegenError(f"need {self.span} distinct placeholder ids, got {self.placeholder_ids}")
        if not 0.0 < self.unit_threshold < 1.0:
            raise EdgegenError(f"unit-threshold must be within (0, 1), got {self.unit_threshold}")
        if self.max_blocks < 1:
            raise EdgegenError(f"max-blocks must be at least 1 (got {self.max_blocks})")
        super().validate()
        if self.seq_len < self.span + 2:
            raise EdgegenError(f"seq-len must exceed span + 1 (got {self.seq_len})")
        if not 0.0 <= self.gen_share <= 1.0 or not 0.0 <= self.outside_weight <= 1.0 or self.guard_weight < 0:
            raise EdgegenError("gen-share and outside-weight must be within [0, 1], guard-weight >= 0")
