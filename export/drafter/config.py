"""Training configuration of a FastDraft drafter (saved with the run so --resume replays the same plan)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from edgegen.errors import EdgegenError
from edgegen.export.checkpoints import RunConfig

STAGES = ("pretrain", "distill", "all")
INITS = ("spread", "first")
STDLIB = "/root/.pyenv/versions/3.11.7/lib/python3.11"
DEFAULT_CODE_GLOBS = (f"{STDLIB}/**/*.py",)
DEFAULT_TEXT_GLOBS = (
    "/usr/share/doc/**/*",  # README / NEWS / *.txt / *.md / *.rst (plain or .gz); filtered in corpus.py
    "{site_packages}/**/README*",
    "{site_packages}/**/*.rst",
    "{site_packages}/*.dist-info/METADATA",
)
CONFIG_NAME = "train_config.json"


@dataclass
class TrainConfig(RunConfig):
    """Everything that decides what a training run computes. Paths are strings so the file is plain JSON."""

    CONFIG_NAME: ClassVar[str] = CONFIG_NAME

    target: str = "default"  # "default", an exported edgegen folder, an HF folder or a .gguf file
    out: str = ""
    layers: int = 2
    init: str = "first"  # which target layers seed the drafter: the first N (measured better), or evenly spaced
    tokens: int | None = None  # total training tokens over all stages (or steps)
    steps: int | None = None
    stage: str = "all"
    pretrain_frac: float = 0.5  # share of the budget spent in stage 1 when stage == "all"
    seq_len: int = 256
    batch_size: int = 4
    lr: float = 5e-4
    min_lr_frac: float = 0.1
    warmup: int = 20
    weight_decay: float = 0.0
    kl_weight: float = 1.0  # forward KL(teacher || drafter) at T=1
    ce_weight: float = 0.1  # cross-entropy on the data's next token
    train_embedding: bool = False  # False: embedding/head stay the target's (not shipped)
    seed: int = 0
    threads: int = 1
    ckpt_minutes: float = 5.0
    ckpt_every: int = 0  # also checkpoint every N steps (0: time-based only)
    eval_tokens: int = 4096  # per held-out set
    # corpus (stage 1)
    code_globs: list[str] = field(default_factory=lambda: list(DEFAULT_CODE_GLOBS))
    text_globs: list[str] = field(default_factory=lambda: list(DEFAULT_TEXT_GLOBS))
    corpus_tokens: int = 2_000_000
    code_share: float = 0.67
    val_tokens: int = 16384  # per held-out split (code, text)
    max_file_chars: int = 200_000
    # target generations (stage 2)
    gen_prompts: int = 240  # prompts; each is sampled at every temperature
    gen_temperatures: list[float] = field(default_factory=lambda: [0.0, 0.6, 1.0])
    gen_max_new_tokens: int = 128
    gen_batch: int = 16
    gen_val_every: int = 10  # every Nth prompt is held out for evaluation
    # end of training
    export: bool = True
    quality_gate: bool = True
    progress: bool = True

    def validate(self) -> None:
        if self.stage not in STAGES:
            raise EdgegenError(f"unknown stage '{self.stage}': choose from {', '.join(STAGES)}")
        if self.init not in INITS:
            raise EdgegenError(f"unknown layer init '{self.init}': choose from {', '.join(INITS)}")
        if self.tokens is not None and self.steps is not None:
            raise EdgegenError("give --tokens or --steps, not both")
        for name in ("layers", "seq_len", "batch_size", "threads", "gen_batch", "eval_tokens"):
            if getattr(self, name) < 1:
                raise EdgegenError(f"{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if (self.tokens is not None and self.tokens < 1) or (self.steps is not None and self.steps < 1):
            raise EdgegenError("the training budget (--tokens/--steps) must be positive")
        if not 0.0 <= self.pretrain_frac <= 1.0:
            raise EdgegenError("pretrain-frac must be within [0, 1]")
        if self.kl_weight < 0 or self.ce_weight < 0 or self.kl_weight + self.ce_weight == 0:
            raise EdgegenError("loss weights must be non-negative and not both zero")
        if any(t < 0 for t in self.gen_temperatures):
            raise EdgegenError("generation temperatures must be >= 0")

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.batch_size

    def total_steps(self) -> int:
        if self.steps is not None:
            return self.steps
        tokens = self.tokens if self.tokens is not None else 1_000_000
        return max(1, tokens // self.tokens_per_step)

    def plan(self) -> list[tuple[str, int]]:
        """[(stage name, steps)] in order."""
        total = self.total_steps()
        if self.stage == "pretrain":
            return [("pretrain", total)]
        if self.stage == "distill":
            return [("distill", total)]
        first = int(round(total * self.pretrain_frac))
        return [("pretrain", first), ("distill", total - first)]
