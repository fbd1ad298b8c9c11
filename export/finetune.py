"""The fine-tuning skeleton the drafter (FastDraft) and LUD recipes share.

A run lives in one folder (``cfg.out``): its config (a ``FineTuneConfig`` subclass), the token corpus
and the target's generations (built once, reused on resume), ``metrics.jsonl`` and atomic checkpoints
(checkpoints.py). ``FineTune`` opens or resumes the run and holds the shared state (global step, tokens
seen, training seconds, evaluations); a recipe supplies its trainable tensors, its loss and step loop,
its evaluation and its summary, and calls ``save``, ``evaluate``, ``progress`` and ``finish`` here.

Data: stage 1 style batches are non-overlapping windows of the corpus (``ChunkData``), stage 2 style
batches are the target's own generations (``SeqData``); batch ``step`` is a pure function of
(seed, step), so the data position is the step and a resumed run is exact.

Importing this module is torch-free; torch is imported by the functions that train.
"""

from __future__ import annotations

import json
import math
import random
import sysconfig
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgegen.errors import EdgegenError
from edgegen.export import checkpoints as ck
from edgegen.export import data_parallel

METRICS = "metrics.jsonl"
MODEL_DIR = "model"
Batch = tuple[Any, Any, Any]  # (ids (B, W+1), attention mask over the inputs or None, loss mask (B, W))
STDLIB = sysconfig.get_paths()["stdlib"]  # the code corpus: this Python's standard library
DEFAULT_CODE_GLOBS = (f"{STDLIB}/**/*.py",)
DEFAULT_TEXT_GLOBS = (
    "/usr/share/doc/**/*",  # README / NEWS / *.txt / *.md / *.rst (plain or .gz); filtered in corpus.py
    "{site_packages}/**/README*",
    "{site_packages}/**/*.rst",
    "{site_packages}/*.dist-info/METADATA",
)


@dataclass
class FineTuneConfig(ck.RunConfig):
    """What every recipe's run configuration holds: the target, the budget, the schedule, checkpoints, the
    corpus and the target's generations, and what happens at the end. Recipes subclass it (and may change
    a default by declaring the field again). Paths are strings so the saved file is plain JSON."""

    DEFAULT_TOKENS: ClassVar[int] = 1_000_000  # the budget when neither tokens nor steps is given

    target: str = "default"  # "default", an exported edgegen folder, an HF folder or a .gguf file
    out: str = ""
    tokens: int | None = None  # training tokens (or steps)
    steps: int | None = None
    seq_len: int = 256
    batch_size: int = 4
    lr: float = 5e-4
    min_lr_frac: float = 0.1
    warmup: int = 20
    seed: int = 0
    threads: int = 1
    ckpt_minutes: float = 5.0
    ckpt_every: int = 0  # also checkpoint every N steps (0: time-based only)
    eval_tokens: int = 4096  # per held-out set
    # corpus
    code_globs: list[str] = field(default_factory=lambda: list(DEFAULT_CODE_GLOBS))
    text_globs: list[str] = field(default_factory=lambda: list(DEFAULT_TEXT_GLOBS))
    corpus_tokens: int = 2_000_000
    code_share: float = 0.67
    val_tokens: int = 16384  # per held-out split (code, text)
    max_file_chars: int = 200_000
    # target generations
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
        """One EdgegenError for the first bad shared setting; recipes check their own, then call this."""
        if self.tokens is not None and self.steps is not None:
            raise EdgegenError("give --tokens or --steps, not both")
        if (self.tokens is not None and self.tokens < 1) or (self.steps is not None and self.steps < 1):
            raise EdgegenError("the training budget (--tokens/--steps) must be positive")
        for name in ("seq_len", "batch_size", "threads", "gen_batch", "eval_tokens"):
            if getattr(self, name) < 1:
                raise EdgegenError(f"{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if self.lr <= 0:
            raise EdgegenError(f"lr must be positive, got {self.lr}")
        if any(t < 0 for t in self.gen_temperatures):
            raise EdgegenError("generation temperatures must be >= 0")

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.batch_size

    def total_steps(self) -> int:
        if self.steps is not None:
            return self.steps
        return max(1, (self.tokens if self.tokens is not None else self.DEFAULT_TOKENS) // self.tokens_per_step)


# --- data -----------------------------------------------------------------------------------------------------


class EpochOrder:
    """Items 0..n-1 in a seeded order per epoch: the g-th item drawn is a pure function of (seed, stream, g)."""

    n: int
    seed: int
    stream: int  # keeps two data sources of one run in unrelated orders
    _perm: dict[int, np.ndarray]

    def _index(self, g: int) -> int:
        epoch, k = divmod(g, self.n)
        if epoch not in self._perm:
            self._perm = {epoch: np.random.default_rng([self.seed, self.stream, epoch]).permutation(self.n)}
        return int(self._perm[epoch][k])


class ChunkData(EpochOrder):
    """Non-overlapping (seq_len+1)-token windows of the training stream, in a seeded order per epoch."""

    stream = 1

    def __init__(self, tokens: np.ndarray, seq_len: int, batch: int, seed: int):
        self.tokens, self.seq_len, self.batch, self.seed = tokens, seq_len, batch, seed
        self.n = max(1, (len(tokens) - 1) // seq_len)
        if len(tokens) < seq_len + 1:
            raise EdgegenError(f"the corpus ({len(tokens)} tokens) is shorter than one sequence ({seq_len + 1})")
        self._perm = {}

    def batch_at(self, step: int) -> Batch:
        import torch

        rows = []
        for r in range(self.batch):
            i = self._index(step * self.batch + r) * self.seq_len
            rows.append(self.tokens[i:i + self.seq_len + 1])
        ids = torch.from_numpy(np.stack(rows).astype(np.int64))
        return ids, None, torch.ones(ids.shape[0], ids.shape[1] - 1)


class SeqData(EpochOrder):
    """Target sequences (prompt + generation), right-padded; the loss counts generated tokens."""

    stream = 2

    def __init__(self, seqs: list[tuple[list[int], int]], seq_len: int, batch: int, seed: int, pad_id: int):
        if not seqs:
            raise EdgegenError("no target generations to train on")
        self.seqs, self.seq_len, self.batch, self.seed, self.pad = seqs, seq_len, batch, seed, pad_id
        self.n = len(seqs)
        self._perm = {}

    @staticmethod
    def collate(items: list[tuple[list[int], int]], seq_len: int, pad: int) -> Batch:
        import torch

        width = min(seq_len + 1, max(len(s) for s, _ in items))
        ids = torch.full((len(items), width), pad, dtype=torch.long)
        att = torch.zeros((len(items), width - 1), dtype=torch.long)
        mask = torch.zeros((len(items), width - 1))
        for r, (seq, plen) in enumerate(items):
            if len(seq) > width:  # keep the end: the generation matters more than a long prompt's start
                cut = len(seq) - width
                seq, plen = seq[cut:], max(1, plen - cut)
            ids[r, :len(seq)] = torch.tensor(seq)
            att[r, :len(seq) - 1] = 1
            mask[r, plen - 1:len(seq) - 1] = 1  # position t predicts token t+1, a generated one
        return ids, att, mask

    def batch_at(self, step: int) -> Batch:
        items = [self.seqs[self._index(step * self.batch + r)] for r in range(self.batch)]
        return self.collate(items, self.seq_len, self.pad)


def eval_batches_chunks(tokens: np.ndarray, seq_len: int, batch: int, max_tokens: int) -> list[Batch]:
    import torch

    n = min((len(tokens) - 1) // seq_len, max(1, max_tokens // seq_len))
    out = []
    for k in range(0, n, batch):
        rows = [tokens[i * seq_len:i * seq_len + seq_len + 1] for i in range(k, min(n, k + batch))]
        ids = torch.from_numpy(np.stack(rows).astype(np.int64))
        out.append((ids, None, torch.ones(ids.shape[0], ids.shape[1] - 1)))
    return out


def eval_batches_seqs(seqs: list[tuple[list[int], int]], seq_len: int, batch: int, max_tokens: int,
                      pad: int) -> list[Batch]:
    chosen, total = [], 0
    for s in seqs:
        if total >= max_tokens:
            break
        chosen.append(s)
        total += len(s[0]) - s[1]
    return [SeqData.collate(chosen[k:k + batch], seq_len, pad) for k in range(0, len(chosen), batch)]


def lr_at(cfg: Any, step: int, steps: int) -> float:
    """Linear warmup to ``cfg.lr``, then cosine decay to ``cfg.lr * cfg.min_lr_frac`` at ``steps``."""
    warm = min(cfg.warmup, max(1, steps // 10))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    frac = (step - warm) / max(1, steps - warm)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


# --- RNG state, in types torch.load(weights_only=True) accepts (no pickled NumPy objects) ---------------------


def rng_state() -> dict[str, Any]:
    import torch

    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": (name, keys.tolist(), pos, has_gauss, gauss),
            "python": random.getstate()}


def set_rng_state(s: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(s["torch"])
    name, keys, pos, has_gauss, gauss = s["numpy"]
    np.random.set_state((name, np.asarray(keys, np.uint32), pos, has_gauss, gauss))
    random.setstate(s["python"])


def eos_pad(hf_dir: Path, teacher: Any) -> tuple[list[int], int]:
    """The target's EOS ids (generation config first) and its pad id (the first EOS when it has none)."""
    from edgegen.export.source import generation_ids

    eos, _ = generation_ids(hf_dir, teacher.config.eos_token_id)
    if not eos:
        raise EdgegenError(f"{hf_dir}: the target has no EOS token id")
    pad = teacher.config.pad_token_id
    return eos, pad if isinstance(pad, int) else eos[0]


# --- the run --------------------------------------------------------------------------------------------------


@dataclass
class Progress:
    """One stage's progress bar and throughput window."""

    bar: Any
    tokens: int = 0
    started: float = field(default_factory=time.perf_counter)

    def advance(self, ntok: int) -> float:
        """One step of ``ntok`` tokens done: the window's tokens per second."""
        self.tokens += ntok
        self.bar.update(1)
        return self.tokens / max(time.perf_counter() - self.started, 1e-9)


class FineTune:
    """An opened (or resumed) run: its data, its target (the frozen teacher) and the state a recipe advances.

    ``generations``: whether the recipe trains on the target's own generations; ``target_data`` builds them
    (once per run, as a batch job on the runtime: the recipe passes gendata.target_generations, so this
    skeleton, which the shipped artifacts' rebuild imports, never reaches up into the runtime).
    ``state`` holds global_step, tokens_seen, train_seconds, evals and the recipe's own counters.
    """

    def __init__(self, cfg: Any, *, resume: bool, keep: tuple[str, ...], generations: Callable[[Any], bool],
                 echo: Callable[[str], None],
                 target_data: Callable[[FineTune], tuple[list[tuple[list[int], int]], list[tuple[list[int], int]],
                                                         dict[str, Any]]] | None = None) -> None:
        from edgegen.export.drafter.corpus import build_corpus, load_split
        from edgegen.export.drafter.model import load_teacher
        from edgegen.export.drafter.target import resolve_target

        self.cfg = cfg = ck.open_run(cfg, resume, keep)
        self.parallel = data_parallel.current()  # this rank of a data-parallel run (Ray Train), else one of one
        self.out, self.echo, self.resume = Path(cfg.out), echo, resume
        self.target = resolve_target(cfg.target, self.out)
        echo(f"target {self.target.name}: {self.target.hf_dir} (vocab {self.target.vocab_size})")
        self.teacher = load_teacher(self.target.hf_dir)
        self.eos_ids, self.pad_id = eos_pad(self.target.hf_dir, self.teacher)
        tokenizer = self.target.hf_dir / "tokenizer.json"
        self.corpus = build_corpus(self.out, tokenizer, self.eos_ids[0], code_globs=cfg.code_globs,
                                   text_globs=cfg.text_globs, tokens=cfg.corpus_tokens, code_share=cfg.code_share,
                                   val_tokens=cfg.val_tokens, max_file_chars=cfg.max_file_chars, seed=cfg.seed,
                                   echo=echo)
        self.train_tokens = load_split(self.out, "train")
        self.eval_sets: dict[str, list[Batch]] = {}
        for split in ("val_code", "val_text"):
            toks = load_split(self.out, split)
            if len(toks) > cfg.seq_len:
                self.eval_sets[split] = eval_batches_chunks(toks, cfg.seq_len, cfg.batch_size, cfg.eval_tokens)
        self.gen_train: list[tuple[list[int], int]] = []
        self.gen_stats: dict[str, Any] = {}
        if generations(cfg):
            if target_data is None:
                raise EdgegenError("this recipe trains on the target's generations but was given no way to make them")
            t0 = time.perf_counter()
            self.gen_train, gen_val, self.gen_stats = target_data(self)
            self.gen_stats["build_seconds_this_session"] = round(time.perf_counter() - t0, 1)
            echo(f"target generations: {self.gen_stats}")
            if gen_val:
                self.eval_sets["val_gen"] = eval_batches_seqs(gen_val, cfg.seq_len, cfg.batch_size, cfg.eval_tokens,
                                                              self.pad_id)
        self.state: dict[str, Any] = {"global_step": 0, "tokens_seen": 0, "train_seconds": 0.0, "evals": []}
        self.resumed_from: str | None = None  # the checkpoint restore() continued from
        self._last_save = time.perf_counter()

    def generations(self) -> SeqData:
        return self.parallel.shard(SeqData(self.gen_train, self.cfg.seq_len, self.cfg.batch_size, self.cfg.seed,
                                           self.pad_id))

    def chunks(self) -> ChunkData:
        return self.parallel.shard(ChunkData(self.train_tokens, self.cfg.seq_len, self.cfg.batch_size, self.cfg.seed))

    def restore(self, opt: Any, check: Callable[[str, dict[str, Any], dict[str, Any]], None]) -> dict[str, Any] | None:
        """On --resume, the latest checkpoint's tensors (optimizer, RNG and state restored); else None.

        ``check(name, tensors, meta)`` raises when the checkpoint belongs to another target or recipe.
        In a data-parallel run, ``opt``'s parameters are also made equal across ranks and averaged after backward."""
        self.parallel.sync(opt)
        latest = ck.latest_checkpoint(self.out) if self.resume else None
        if latest is None:
            return None
        tensors, saved_state, meta = ck.load_checkpoint(latest)
        check(latest.name, tensors, meta)
        opt.load_state_dict(saved_state["optimizer"])
        set_rng_state(saved_state["rng"])
        self.state = {k: v for k, v in saved_state.items() if k not in ("optimizer", "rng")}
        self.resumed_from = latest.name
        return tensors

    def save(self, opt: Any, tensors: dict[str, Any], meta: dict[str, Any], **extra: Any) -> Path:
        """Checkpoint the trained tensors, the optimizer, the RNGs and the state (plus ``extra``) atomically."""
        if not self.parallel.main:  # rank 0 writes the run folder
            self._last_save = time.perf_counter()
            return self.out / f"{ck.PREFIX}{self.state['global_step']:08d}"
        full = {**self.state, **extra, "optimizer": opt.state_dict(), "rng": rng_state()}
        path = ck.save_checkpoint(self.out, self.state["global_step"], tensors, full, meta)
        self._last_save = time.perf_counter()
        return path

    def checkpoint_due(self) -> bool:
        """Every ``ckpt_every`` steps (when set) and whenever ``ckpt_minutes`` passed since the last save."""
        every = self.cfg.ckpt_every and self.state["global_step"] % self.cfg.ckpt_every == 0
        return bool(every) or (time.perf_counter() - self._last_save) > self.cfg.ckpt_minutes * 60

    def evaluate(self, label: str, evaluate_set: Callable[[list[Batch]], dict[str, Any]],
                 describe: Callable[[str, dict[str, Any]], str]) -> None:
        """Evaluate every held-out set, record it in the state and metrics.jsonl, and echo one line."""
        t0 = time.perf_counter()
        res = {name: evaluate_set(batches) for name, batches in self.eval_sets.items()}
        rec = {"event": "eval", "label": label, "global_step": self.state["global_step"],
               "tokens_seen": self.state["tokens_seen"], "sets": res}
        self.state["evals"].append(rec)
        self.log(rec)
        self.echo(f"eval [{label}] " + "  ".join(describe(k, v) for k, v in res.items())
                  + f"  ({time.perf_counter() - t0:.0f} s)")

    def log(self, record: dict[str, Any]) -> None:
        if not self.parallel.main:
            return
        with (self.out / METRICS).open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def log_train(self, logs: dict[str, float], lr: float, tok_s: float, **fields: Any) -> None:
        self.log({"event": "train", **fields, "global_step": self.state["global_step"],
                  "tokens_seen": self.state["tokens_seen"], "lr": lr, "tok_s": round(tok_s, 1),
                  **{k: round(v, 5) for k, v in logs.items()}})

    def count(self, ntok: int, seconds: float) -> None:
        """One optimizer step of ``ntok`` tokens (this rank's: every rank trains as many) taking ``seconds``."""
        self.state["global_step"] += 1
        self.state["tokens_seen"] += ntok * self.parallel.world
        self.state["train_seconds"] += seconds

    @contextmanager
    def progress(self, desc: str, total: int, initial: int) -> Iterator[Progress]:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not self.cfg.progress,
                   dynamic_ncols=True, mininterval=5.0)
        try:
            yield Progress(bar)
        finally:
            bar.close()

    def finish(self, summary: dict[str, Any], pack: Callable[[Path, Path], Path], packed_name: str,
               export: Callable[..., Path], what: str) -> dict[str, Any]:
        """Write summary.json (the recipe's ``summary`` plus throughput), pack the latest checkpoint and,
        when the config asks, export the packed weights as a model folder; returns the summary."""
        cfg, state = self.cfg, self.state
        if not self.parallel.main:
            return summary
        summary = {"out": str(self.out), "target": self.target.facts(), **summary, "evals": state["evals"],
                   "tokens_seen": state["tokens_seen"], "train_seconds": round(state["train_seconds"], 1),
                   "train_tokens_per_s": round(state["tokens_seen"] / max(state["train_seconds"], 1e-9), 1)}
        (self.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        packed = pack(self.out, self.out / packed_name)
        size = packed.stat().st_size
        self.echo(f"packed {what}: {packed} ({size / 1e6:.1f} MB)" if size > 1e6 else
                  f"packed {what}: {packed} ({size / 1e3:.1f} kB)")
        if cfg.export:
            path = export(packed, self.out / MODEL_DIR, target=self.target.spec, cache_dir=self.out,
                          quality_gate=cfg.quality_gate, progress=cfg.progress)
            self.echo(f"exported the model to {path}")
            summary["model"] = str(path)
        return summary


# --- packs: a run's trained tensors in one safetensors file, its recipe as JSON metadata -----------------------


def read_pack(packed: str | Path, key: str, formats: tuple[str, ...],
              what: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors, info) of a pack whose metadata ``key`` holds JSON info with a ``format`` in ``formats``;
    one EdgegenError naming ``what`` (e.g. "packed drafter") for a missing, foreign or unreadable file."""
    from safetensors import safe_open

    packed = Path(packed).expanduser()
    if not packed.is_file():
        raise EdgegenError(f"{what} not found: {packed}")
    try:
        with safe_open(str(packed), framework="pt") as f:
            info = json.loads((f.metadata() or {})[key])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  (safe_open is not a mapping)
    except Exception as e:  # safetensors raises its own error types
        raise EdgegenError(f"{packed} is not a {what}: {e}") from None
    if info.get("format") not in formats:
        raise EdgegenError(f"{packed} has format {info.get('format')!r}; this edgegen reads {', '.join(formats)}")
    return tensors, info


def write_pack(tensors: dict[str, Any], out_file: str | Path, key: str, info: dict[str, Any]) -> Path:
    """Write ``tensors`` with ``info`` as JSON metadata ``key`` to ``out_file`` (safetensors), atomically."""
    from safetensors.torch import save_file

    from edgegen.files import publish_file

    out_file = Path(out_file).expanduser().resolve()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(f".{out_file.name}.tmp")
    save_file(tensors, str(tmp), metadata={key: json.dumps(info, sort_keys=True)})
    publish_file(tmp, out_file)
    return out_file
