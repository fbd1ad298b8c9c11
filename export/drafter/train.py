"""The FastDraft training loop: stage 1 (pre-training on code + text), stage 2 (alignment on the target's
own generations), both distilled against the target's logits; evaluated for acceptance proxies.

Loss = kl_weight * KL(p_target || q_drafter) + ce_weight * CE(next token), averaged over the positions
that count (all of a corpus chunk; the generated part of a target sequence). Speculative acceptance is
alpha = sum_x min(p, q) = 1 - TV(p, q), and Pinsker bounds TV by sqrt(KL/2): minimising the KL to the
target's full distribution is minimising a bound on the rejection rate, a denser signal per token than
the one-hot next token. The small CE term keeps the drafter calibrated on real text.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import EdgegenError
from edgegen.export.drafter import ckpt as ck
from edgegen.export.drafter.config import TrainConfig

METRICS = "metrics.jsonl"
PACKED_NAME = "drafter.safetensors"
MODEL_DIR = "model"


# --- data -----------------------------------------------------------------------------------------------------


class ChunkData:
    """Stage 1: non-overlapping (seq_len+1)-token windows of the training stream, in a seeded order per
    epoch; batch `step` is a pure function of (seed, step), so the data position is the step."""

    def __init__(self, tokens: np.ndarray, seq_len: int, batch: int, seed: int):
        self.tokens, self.seq_len, self.batch, self.seed = tokens, seq_len, batch, seed
        self.n = max(1, (len(tokens) - 1) // seq_len)
        if len(tokens) < seq_len + 1:
            raise EdgegenError(f"the corpus ({len(tokens)} tokens) is shorter than one sequence ({seq_len + 1})")
        self._perm: dict[int, np.ndarray] = {}

    def _index(self, g: int) -> int:
        epoch, k = divmod(g, self.n)
        if epoch not in self._perm:
            self._perm = {epoch: np.random.default_rng([self.seed, 1, epoch]).permutation(self.n)}
        return int(self._perm[epoch][k])

    def batch_at(self, step: int) -> tuple[Any, Any, Any]:
        import torch

        rows = []
        for r in range(self.batch):
            i = self._index(step * self.batch + r) * self.seq_len
            rows.append(self.tokens[i:i + self.seq_len + 1])
        ids = torch.from_numpy(np.stack(rows).astype(np.int64))
        return ids, None, torch.ones(ids.shape[0], ids.shape[1] - 1)


class SeqData:
    """Stage 2: target sequences (prompt + generation), right-padded; the loss counts generated tokens."""

    def __init__(self, seqs: list[tuple[list[int], int]], seq_len: int, batch: int, seed: int, pad_id: int):
        if not seqs:
            raise EdgegenError("no target generations to train on")
        self.seqs, self.seq_len, self.batch, self.seed, self.pad = seqs, seq_len, batch, seed, pad_id
        self.n = len(seqs)
        self._perm: dict[int, np.ndarray] = {}

    def _index(self, g: int) -> int:
        epoch, k = divmod(g, self.n)
        if epoch not in self._perm:
            self._perm = {epoch: np.random.default_rng([self.seed, 2, epoch]).permutation(self.n)}
        return int(self._perm[epoch][k])

    @staticmethod
    def collate(items: list[tuple[list[int], int]], seq_len: int, pad: int) -> tuple[Any, Any, Any]:
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

    def batch_at(self, step: int) -> tuple[Any, Any, Any]:
        items = [self.seqs[self._index(step * self.batch + r)] for r in range(self.batch)]
        return self.collate(items, self.seq_len, self.pad)


def eval_batches_chunks(tokens: np.ndarray, seq_len: int, batch: int, max_tokens: int) -> list[tuple[Any, Any, Any]]:
    import torch

    n = min((len(tokens) - 1) // seq_len, max(1, max_tokens // seq_len))
    out = []
    for k in range(0, n, batch):
        rows = [tokens[i * seq_len:i * seq_len + seq_len + 1] for i in range(k, min(n, k + batch))]
        ids = torch.from_numpy(np.stack(rows).astype(np.int64))
        out.append((ids, None, torch.ones(ids.shape[0], ids.shape[1] - 1)))
    return out


def eval_batches_seqs(seqs: list[tuple[list[int], int]], seq_len: int, batch: int, max_tokens: int,
                      pad: int) -> list[tuple[Any, Any, Any]]:
    chosen, total = [], 0
    for s in seqs:
        if total >= max_tokens:
            break
        chosen.append(s)
        total += len(s[0]) - s[1]
    return [SeqData.collate(chosen[k:k + batch], seq_len, pad) for k in range(0, len(chosen), batch)]


# --- loss and metrics -------------------------------------------------------------------------------------------


def _forward_pair(student: Any, teacher: Any, ids: Any, att: Any) -> tuple[Any, Any]:
    import torch

    inp = ids[:, :-1]
    with torch.no_grad():
        t_logits = teacher(input_ids=inp, attention_mask=att).logits.float()
    s_logits = student(input_ids=inp, attention_mask=att).logits.float()
    return s_logits, t_logits


def distill_loss(student: Any, teacher: Any, batch: tuple[Any, Any, Any], kl_w: float,
                 ce_w: float) -> tuple[Any, dict[str, float]]:
    import torch
    import torch.nn.functional as F

    ids, att, mask = batch
    s_logits, t_logits = _forward_pair(student, teacher, ids, att)
    denom = mask.sum().clamp(min=1.0)
    s_logp = F.log_softmax(s_logits, dim=-1)
    with torch.no_grad():
        t_logp = F.log_softmax(t_logits, dim=-1)
        t_p = t_logp.exp()
    kl = (t_p * (t_logp - s_logp)).sum(-1)
    ce = -s_logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    kl_m = (kl * mask).sum() / denom
    ce_m = (ce * mask).sum() / denom
    loss = kl_w * kl_m + ce_w * ce_m
    with torch.no_grad():
        agree = (((s_logits.argmax(-1) == t_logits.argmax(-1)).float() * mask).sum() / denom).item()
    return loss, {"loss": loss.item(), "kl": kl_m.item(), "ce": ce_m.item(), "agree": agree}


def evaluate(student: Any, teacher: Any, batches: list[tuple[Any, Any, Any]]) -> dict[str, float]:
    """Greedy top-1 agreement (argmax drafter == argmax target), expected acceptance alpha = sum min(p, q)
    at T=1, the drafter's CE on the data and KL(p||q), over the counted positions of `batches`."""
    import torch
    import torch.nn.functional as F

    was_training = student.training
    student.eval()
    tot = {"agree": 0.0, "alpha": 0.0, "ce": 0.0, "kl": 0.0, "n": 0.0}
    with torch.no_grad():
        for ids, att, mask in batches:
            s_logits, t_logits = _forward_pair(student, teacher, ids, att)
            s_logp, t_logp = F.log_softmax(s_logits, -1), F.log_softmax(t_logits, -1)
            alpha = torch.minimum(s_logp.exp(), t_logp.exp()).sum(-1)
            kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1)
            ce = -s_logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
            agree = (s_logits.argmax(-1) == t_logits.argmax(-1)).float()
            for key, v in (("agree", agree), ("alpha", alpha), ("ce", ce), ("kl", kl)):
                tot[key] += float((v * mask).sum())
            tot["n"] += float(mask.sum())
    student.train(was_training)
    n = max(tot["n"], 1.0)
    return {"agreement": tot["agree"] / n, "alpha": tot["alpha"] / n, "ce": tot["ce"] / n, "kl": tot["kl"] / n,
            "positions": int(tot["n"])}


def lr_at(cfg: TrainConfig, step: int, steps: int) -> float:
    warm = min(cfg.warmup, max(1, steps // 10))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    frac = (step - warm) / max(1, steps - warm)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


# --- the run ----------------------------------------------------------------------------------------------------


def _log(run_dir: Path, record: dict[str, Any]) -> None:
    with (Path(run_dir) / METRICS).open("a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def _rng_state() -> dict[str, Any]:
    import torch

    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(s: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])


def _eos_pad(hf_dir: Path, teacher: Any) -> tuple[list[int], int]:
    eos: list[int] = []
    gen_path = Path(hf_dir) / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.is_file() else {}
    for value in (gen.get("eos_token_id"), teacher.config.eos_token_id):
        for tok in value if isinstance(value, list) else [value]:
            if isinstance(tok, int) and tok not in eos:
                eos.append(tok)
    if not eos:
        raise EdgegenError(f"{hf_dir}: the target has no EOS token id")
    pad = teacher.config.pad_token_id
    return eos, pad if isinstance(pad, int) else eos[0]


def train_drafter(cfg: TrainConfig, *, resume: bool = False, echo: Callable[[str], None] = print,
                  step_hook: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run (or resume) the training described by `cfg` in `cfg.out`; returns the run summary.

    step_hook(global_step) is called after every optimizer step (tests use it to interrupt a run)."""
    import torch
    from tqdm import tqdm

    cfg = ck.open_run(cfg, resume, keep=("threads", "progress"))
    out = Path(cfg.out)

    from edgegen.export.drafter.corpus import build_corpus, load_split
    from edgegen.export.drafter.gendata import build_generations, build_prompts, load_generations
    from edgegen.export.drafter.model import build_student, load_teacher, load_trainable, trainable_state
    from edgegen.export.drafter.target import resolve_target

    target = resolve_target(cfg.target, out)
    echo(f"target {target.name}: {target.hf_dir} (vocab {target.vocab_size})")
    teacher = load_teacher(target.hf_dir)
    eos_ids, pad_id = _eos_pad(target.hf_dir, teacher)
    plan = cfg.plan()
    stages = [s for s, _ in plan]

    corpus = build_corpus(out, target.hf_dir / "tokenizer.json", eos_ids[0], code_globs=cfg.code_globs,
                          text_globs=cfg.text_globs, tokens=cfg.corpus_tokens, code_share=cfg.code_share,
                          val_tokens=cfg.val_tokens, max_file_chars=cfg.max_file_chars, seed=cfg.seed, echo=echo)
    train_tokens = load_split(out, "train")
    eval_sets: dict[str, list[Any]] = {}
    for split in ("val_code", "val_text"):
        toks = load_split(out, split)
        if len(toks) > cfg.seq_len:
            eval_sets[split] = eval_batches_chunks(toks, cfg.seq_len, cfg.batch_size, cfg.eval_tokens)
    gen_stats: dict[str, Any] = {}
    gen_train: list[Any] = []
    if "distill" in stages:
        prompts = build_prompts(target.hf_dir / "tokenizer.json", target.hf_dir,
                                corpus["files"]["train_code"], cfg.gen_prompts, cfg.seed,
                                max_prompt_tokens=max(16, cfg.seq_len - cfg.gen_max_new_tokens))
        t0 = time.perf_counter()
        gen_dir = build_generations(out, teacher, prompts, cfg.gen_temperatures, cfg.gen_max_new_tokens,
                                    cfg.gen_batch, eos_ids, pad_id, cfg.seed, progress=cfg.progress)
        gen_train, gen_val, gen_stats = load_generations(gen_dir, cfg.gen_val_every)
        gen_stats["build_seconds_this_session"] = round(time.perf_counter() - t0, 1)
        echo(f"target generations: {gen_stats}")
        if gen_val:
            eval_sets["val_gen"] = eval_batches_seqs(gen_val, cfg.seq_len, cfg.batch_size, cfg.eval_tokens, pad_id)

    student, mapping = build_student(teacher, cfg.layers, cfg.init, cfg.train_embedding)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    n_train = sum(p.numel() for p in params)
    state: dict[str, Any] = {"stage_idx": 0, "stage_step": 0, "global_step": 0, "tokens_seen": 0,
                             "train_seconds": 0.0, "evals": []}
    latest = ck.latest_checkpoint(out) if resume else None
    if latest is not None:
        tensors, saved_state, meta = ck.load_checkpoint(latest)
        if meta.get("target", {}).get("target_vocab_size") != target.vocab_size or \
                meta.get("target", {}).get("target_tokenizer_sha256") != target.tokenizer_sha256:
            raise EdgegenError(f"checkpoint {latest.name} was trained for another target/vocabulary")
        load_trainable(student, tensors)
        opt.load_state_dict(saved_state["optimizer"])
        _set_rng_state(saved_state["rng"])
        state = {k: v for k, v in saved_state.items() if k not in ("optimizer", "rng")}
        echo(f"resumed from {latest.name}: stage {plan[min(state['stage_idx'], len(plan) - 1)][0]}, "
             f"global step {state['global_step']}, {state['tokens_seen']} tokens seen")
    echo(f"drafter: {cfg.layers} layers from target layers {mapping}, {n_train / 1e6:.2f}M trainable parameters; "
         f"plan {plan} x {cfg.tokens_per_step} tokens/step; {cfg.threads} thread(s)")

    def meta_now() -> dict[str, Any]:
        return {"recipe": recipe_summary(cfg, mapping, plan, corpus, gen_stats), "target": target.facts(),
                "target_spec": target.spec, "layer_map": mapping, "global_step": state["global_step"],
                "stage_idx": state["stage_idx"], "stage_step": state["stage_step"],
                "tokens_seen": state["tokens_seen"], "evals": state["evals"]}

    def save() -> Path:
        full = dict(state)
        full.update(optimizer=opt.state_dict(), rng=_rng_state(),
                    data_position={"stage": plan[min(state["stage_idx"], len(plan) - 1)][0],
                                   "sample_index": state["stage_step"] * cfg.batch_size})
        return ck.save_checkpoint(out, state["global_step"], trainable_state(student), full, meta_now())

    def run_eval(label: str) -> None:
        t0 = time.perf_counter()
        res = {name: evaluate(student, teacher, b) for name, b in eval_sets.items()}
        rec = {"event": "eval", "label": label, "global_step": state["global_step"],
               "tokens_seen": state["tokens_seen"], "sets": res}
        state["evals"].append(rec)
        _log(out, rec)
        echo(f"eval [{label}] " + "  ".join(f"{k}: agree {v['agreement']:.3f} alpha {v['alpha']:.3f}"
                                             for k, v in res.items()) + f"  ({time.perf_counter() - t0:.0f} s)")

    if latest is None:
        run_eval("init")
        save()
    last_ckpt = time.perf_counter()
    while state["stage_idx"] < len(plan):
        name, steps = plan[state["stage_idx"]]
        data = (ChunkData(train_tokens, cfg.seq_len, cfg.batch_size, cfg.seed) if name == "pretrain"
                else SeqData(gen_train, cfg.seq_len, cfg.batch_size, cfg.seed, pad_id))
        bar = tqdm(total=steps, initial=state["stage_step"], desc=name, unit="step", disable=not cfg.progress,
                   dynamic_ncols=True, mininterval=5.0)
        window_tokens, window_t0 = 0, time.perf_counter()
        while state["stage_step"] < steps:
            step = state["stage_step"]
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, step, steps)
            t0 = time.perf_counter()
            batch = data.batch_at(step)
            loss, logs = distill_loss(student, teacher, batch, cfg.kl_weight, cfg.ce_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            dt = time.perf_counter() - t0
            ntok = int(batch[0].shape[0] * (batch[0].shape[1] - 1))
            state["stage_step"] += 1
            state["global_step"] += 1
            state["tokens_seen"] += ntok
            state["train_seconds"] += dt
            window_tokens += ntok
            tok_s = window_tokens / max(time.perf_counter() - window_t0, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{logs['loss']:.3f}", agree=f"{logs['agree']:.3f}", tok_s=f"{tok_s:.0f}")
            if state["global_step"] % 10 == 0 or state["stage_step"] == steps:
                _log(out, {"event": "train", "stage": name, "global_step": state["global_step"],
                           "tokens_seen": state["tokens_seen"], "lr": opt.param_groups[0]["lr"],
                           "tok_s": round(tok_s, 1), **{k: round(v, 5) for k, v in logs.items()}})
            if state["stage_step"] == steps:
                break
            due = (cfg.ckpt_every and state["global_step"] % cfg.ckpt_every == 0) or \
                (time.perf_counter() - last_ckpt) > cfg.ckpt_minutes * 60
            if due:
                save()
                last_ckpt = time.perf_counter()
            if step_hook is not None:
                step_hook(state["global_step"])
        bar.close()
        run_eval(f"after {name}")
        state["stage_idx"] += 1
        state["stage_step"] = 0
        save()
        last_ckpt = time.perf_counter()
        if step_hook is not None:
            step_hook(state["global_step"])

    summary = {"out": str(out), "target": target.facts(),
               "recipe": recipe_summary(cfg, mapping, plan, corpus, gen_stats),
               "evals": state["evals"], "tokens_seen": state["tokens_seen"],
               "train_seconds": round(state["train_seconds"], 1),
               "train_tokens_per_s": round(state["tokens_seen"] / max(state["train_seconds"], 1e-9), 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    from edgegen.export.drafter.ship import export_drafter, pack_drafter

    packed = pack_drafter(out, out / PACKED_NAME)
    echo(f"packed drafter: {packed} ({packed.stat().st_size / 1e6:.1f} MB)")
    if cfg.export:
        path = export_drafter(packed, out / MODEL_DIR, target=target.spec, cache_dir=out,
                              quality_gate=cfg.quality_gate, progress=cfg.progress)
        echo(f"exported drafter to {path}")
        summary["model"] = str(path)
    return summary


def recipe_summary(cfg: TrainConfig, mapping: list[int], plan: list[tuple[str, int]], corpus: dict[str, Any],
                   gen_stats: dict[str, Any]) -> dict[str, Any]:
    return {
        "method": "fastdraft", "layers": cfg.layers, "init": cfg.init, "layer_map": mapping,
        "train_embedding": cfg.train_embedding, "stages": [[s, n] for s, n in plan],
        "tokens_per_step": cfg.tokens_per_step, "seq_len": cfg.seq_len, "batch_size": cfg.batch_size,
        "lr": cfg.lr, "loss": {"kl_weight": cfg.kl_weight, "ce_weight": cfg.ce_weight}, "seed": cfg.seed,
        "corpus": {k: v for k, v in corpus.items() if k != "files"},
        "generations": {"temperatures": cfg.gen_temperatures, "prompts": cfg.gen_prompts,
                        "max_new_tokens": cfg.gen_max_new_tokens, **gen_stats},
    }
