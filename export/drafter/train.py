"""The FastDraft training loop: stage 1 (pre-training on code + text), stage 2 (alignment on the target's
own generations), both distilled against the target's logits; evaluated for acceptance proxies.

Loss = kl_weight * KL(p_target || q_drafter) + ce_weight * CE(next token), averaged over the positions
that count (all of a corpus chunk; the generated part of a target sequence). Speculative acceptance is
alpha = sum_x min(p, q) = 1 - TV(p, q), and Pinsker bounds TV by sqrt(KL/2): minimising the KL to the
target's full distribution is minimising a bound on the rejection rate, a denser signal per token than
the one-hot next token. The small CE term keeps the drafter calibrated on real text.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import EdgegenError
from edgegen.export.drafter.config import TrainConfig
from edgegen.export.drafter.gendata import target_generations
from edgegen.export.drafter.model import head_logits
from edgegen.export.finetune import FineTune, lr_at

PACKED_NAME = "drafter.safetensors"
KEEP = ("threads", "progress")  # what a resumed run takes from the command line


# --- loss and metrics -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Head:
    """A drafter head reduced to ``kept`` target ids: what the drafter sees and predicts at run time (an id
    outside the head feeds the head's first token, as strategies.drafters.ModelDrafter does)."""

    kept: Any  # LongTensor of target ids; position i is the drafter's token i
    index: Any  # LongTensor over the target vocabulary: the drafter's token for each id, -1 outside the head

    @classmethod
    def of(cls, kept: Any, vocab_size: int) -> Head:
        import torch

        kept = torch.as_tensor(np.asarray(kept), dtype=torch.long)
        index = torch.full((vocab_size,), -1, dtype=torch.long)
        index[kept] = torch.arange(len(kept))
        return cls(kept, index)

    def inputs(self, ids: Any) -> Any:
        """``ids`` as the reduced drafter receives them (target ids; those outside the head become its first)."""
        return self.kept[self.index[ids].clamp(min=0)]


def _forward_pair(student: Any, teacher: Any, ids: Any, att: Any, head: Head | None = None,
                  full_teacher: bool = False) -> tuple[Any, Any]:
    """(drafter logits, target logits) for predicting ids[:, 1:]; with ``head``, the drafter's over the head and
    the target's over the head too (or over its whole vocabulary with ``full_teacher``)."""
    import torch

    inp = ids[:, :-1]
    kept = None if head is None else head.kept
    with torch.no_grad():
        t_logits = head_logits(teacher, inp, att, None if full_teacher else kept).float()
    s_logits = head_logits(student, inp if head is None else head.inputs(inp), att, kept).float()
    return s_logits, t_logits


def distill_loss(student: Any, teacher: Any, batch: tuple[Any, Any, Any], kl_w: float,
                 ce_w: float, head: Head | None = None) -> tuple[Any, dict[str, float]]:
    """With ``head``, the KL is to the target's distribution renormalised over the head (its minimiser is the
    drafter that accepts most: q >= p on the head) and the CE counts the positions whose next token is in it."""
    import torch
    import torch.nn.functional as F

    ids, att, mask = batch
    s_logits, t_logits = _forward_pair(student, teacher, ids, att, head)
    denom = mask.sum().clamp(min=1.0)
    s_logp = F.log_softmax(s_logits, dim=-1)
    with torch.no_grad():
        t_logp = F.log_softmax(t_logits, dim=-1)
        t_p = t_logp.exp()
    kl = (t_p * (t_logp - s_logp)).sum(-1)
    nxt, ce_mask = ids[:, 1:], mask
    if head is not None:
        nxt = head.index[nxt]
        ce_mask = mask * (nxt >= 0)
        nxt = nxt.clamp(min=0)
    ce = -s_logp.gather(-1, nxt[..., None]).squeeze(-1)
    kl_m = (kl * mask).sum() / denom
    ce_m = (ce * ce_mask).sum() / (denom if head is None else ce_mask.sum().clamp(min=1.0))
    loss = kl_w * kl_m + ce_w * ce_m
    with torch.no_grad():
        agree = (((s_logits.argmax(-1) == t_logits.argmax(-1)).float() * mask).sum() / denom).item()
    return loss, {"loss": loss.item(), "kl": kl_m.item(), "ce": ce_m.item(), "agree": agree}


def evaluate(student: Any, teacher: Any, batches: list[tuple[Any, Any, Any]],
             head: Head | None = None) -> dict[str, float]:
    """Greedy top-1 agreement (argmax drafter == argmax target), expected acceptance alpha = sum min(p, q)
    at T=1, the drafter's CE on the data and KL(p||q), over the counted positions of `batches`.

    With ``head``, agreement and alpha are against the target's whole distribution (what decoding gets: a
    token outside the head is never drafted); CE counts next tokens in the head, KL is to the target's
    distribution renormalised over the head, and ``head_mass`` is the target's probability on the head."""
    import torch
    import torch.nn.functional as F

    was_training = student.training
    student.eval()
    tot = {"agree": 0.0, "alpha": 0.0, "ce": 0.0, "kl": 0.0, "n": 0.0, "ce_n": 0.0, "head_mass": 0.0}
    with torch.no_grad():
        for ids, att, mask in batches:
            s_logits, t_logits = _forward_pair(student, teacher, ids, att, head, full_teacher=True)
            s_logp, t_logp = F.log_softmax(s_logits, -1), F.log_softmax(t_logits, -1)
            nxt, ce_mask, s_top = ids[:, 1:], mask, s_logits.argmax(-1)
            if head is not None:
                t_logp = t_logp[..., head.kept]
                tot["head_mass"] += float((t_logp.exp().sum(-1) * mask).sum())
                nxt = head.index[nxt]
                ce_mask, nxt, s_top = mask * (nxt >= 0), nxt.clamp(min=0), head.kept[s_top]
            alpha = torch.minimum(s_logp.exp(), t_logp.exp()).sum(-1)
            agree = (s_top == t_logits.argmax(-1)).float()
            if head is not None:
                t_logp = F.log_softmax(t_logp, -1)
            kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1)
            ce = -s_logp.gather(-1, nxt[..., None]).squeeze(-1)
            for key, v in (("agree", agree), ("alpha", alpha), ("kl", kl)):
                tot[key] += float((v * mask).sum())
            tot["ce"] += float((ce * ce_mask).sum())
            tot["n"] += float(mask.sum())
            tot["ce_n"] += float(ce_mask.sum())
    student.train(was_training)
    n = max(tot["n"], 1.0)
    out = {"agreement": tot["agree"] / n, "alpha": tot["alpha"] / n, "ce": tot["ce"] / max(tot["ce_n"], 1.0),
           "kl": tot["kl"] / n, "positions": int(tot["n"])}
    return out if head is None else {**out, "head_mass": tot["head_mass"] / n}


# --- the run ----------------------------------------------------------------------------------------------------


def open_run(cfg: TrainConfig, *, resume: bool, echo: Callable[[str], None], gen: Any = None) -> FineTune:
    """Open (or resume) the run ``cfg`` and build its data: the corpus and, when a stage distils on them, the
    target's generations (``gen``: a gendata.GenWorkers saying where they are generated; None: here)."""
    return FineTune(cfg, resume=resume, keep=KEEP, echo=echo, target_data=partial(target_generations, gen=gen),
                    generations=lambda c: "distill" in [s for s, _ in c.plan()])


def train_drafter(cfg: TrainConfig, *, resume: bool = False, echo: Callable[[str], None] = print,
                  step_hook: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run (or resume) the training described by `cfg` in `cfg.out`; returns the run summary.

    step_hook(global_step) is called after every optimizer step (tests use it to interrupt a run)."""
    import torch

    from edgegen.export.drafter.model import build_student, load_trainable, trainable_state
    from edgegen.export.drafter.pack import pack_drafter
    from edgegen.export.drafter.ship import export_drafter

    run = open_run(cfg, resume=resume, echo=echo)
    cfg, state, teacher, target = run.cfg, run.state, run.teacher, run.target
    plan = cfg.plan()  # a resumed run's saved recipe
    state.update(stage_idx=0, stage_step=0)
    student, mapping = build_student(teacher, cfg.layers, cfg.init, cfg.train_embedding)
    head = None
    if cfg.head_vocab is not None:
        from edgegen.export.drafter.pack import frequent_tokens

        head = Head.of(frequent_tokens(run.out, target.vocab_size, cfg.head_vocab, target.hf_dir / "tokenizer.json"),
                       target.vocab_size)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))

    def check(name: str, tensors: dict[str, Any], meta: dict[str, Any]) -> None:
        facts = meta.get("target", {})
        if facts.get("target_vocab_size") != target.vocab_size or \
                facts.get("target_tokenizer_sha256") != target.tokenizer_sha256:
            raise EdgegenError(f"checkpoint {name} was trained for another target/vocabulary")

    tensors = run.restore(opt, check)
    if tensors is not None:
        load_trainable(student, tensors)
        state = run.state
        echo(f"resumed from {run.resumed_from}: stage {plan[min(state['stage_idx'], len(plan) - 1)][0]}, "
             f"global step {state['global_step']}, {state['tokens_seen']} tokens seen")
    echo(f"drafter: {cfg.layers} layers from target layers {mapping}, "
         f"{sum(p.numel() for p in params) / 1e6:.2f}M trainable parameters; "
         f"head {'the whole vocabulary' if head is None else f'{len(head.kept)} tokens'}; "
         f"plan {plan} x {cfg.tokens_per_step} tokens/step; {cfg.threads} thread(s)")

    def recipe() -> dict[str, Any]:
        return recipe_summary(cfg, mapping, plan, run.corpus, run.gen_stats)

    def save() -> Path:
        meta = {"recipe": recipe(), "target": target.facts(), "target_spec": target.spec, "layer_map": mapping,
                **{k: state[k] for k in ("global_step", "stage_idx", "stage_step", "tokens_seen", "evals")}}
        position = {"stage": plan[min(state["stage_idx"], len(plan) - 1)][0],
                    "sample_index": state["stage_step"] * cfg.batch_size}
        return run.save(opt, trainable_state(student), meta, data_position=position)

    def run_eval(label: str) -> None:
        run.evaluate(label, lambda batches: evaluate(student, teacher, batches, head),
                     lambda k, v: f"{k}: agree {v['agreement']:.3f} alpha {v['alpha']:.3f}")

    if tensors is None:
        run_eval("init")
        save()
    while state["stage_idx"] < len(plan):
        name, steps = plan[state["stage_idx"]]
        data = run.chunks() if name == "pretrain" else run.generations()
        with run.progress(name, steps, state["stage_step"]) as progress:
            while state["stage_step"] < steps:
                step = state["stage_step"]
                for g in opt.param_groups:
                    g["lr"] = lr_at(cfg, step, steps)
                t0 = time.perf_counter()
                batch = data.batch_at(step)
                loss, logs = distill_loss(student, teacher, batch, cfg.kl_weight, cfg.ce_weight, head)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                ntok = int(batch[0].shape[0] * (batch[0].shape[1] - 1))
                state["stage_step"] += 1
                run.count(ntok, time.perf_counter() - t0)
                tok_s = progress.advance(ntok)
                progress.bar.set_postfix(loss=f"{logs['loss']:.3f}", agree=f"{logs['agree']:.3f}",
                                         tok_s=f"{tok_s:.0f}")
                if state["global_step"] % 10 == 0 or state["stage_step"] == steps:
                    run.log_train(logs, opt.param_groups[0]["lr"], tok_s, stage=name)
                if state["stage_step"] == steps:
                    break
                if run.checkpoint_due():
                    save()
                if step_hook is not None:
                    step_hook(state["global_step"])
        run_eval(f"after {name}")
        state["stage_idx"] += 1
        state["stage_step"] = 0
        save()
        if step_hook is not None:
            step_hook(state["global_step"])
    return run.finish({"recipe": recipe()}, pack_drafter, PACKED_NAME, export_drafter, "drafter")


def recipe_summary(cfg: TrainConfig, mapping: list[int], plan: list[tuple[str, int]], corpus: dict[str, Any],
                   gen_stats: dict[str, Any]) -> dict[str, Any]:
    return {
        "method": "fastdraft", "layers": cfg.layers, "init": cfg.init, "layer_map": mapping,
        "train_embedding": cfg.train_embedding, "head_vocab": cfg.head_vocab, "stages": [[s, n] for s, n in plan],
        "tokens_per_step": cfg.tokens_per_step, "seq_len": cfg.seq_len, "batch_size": cfg.batch_size,
        "lr": cfg.lr, "loss": {"kl_weight": cfg.kl_weight, "ce_weight": cfg.ce_weight}, "seed": cfg.seed,
        "corpus": {k: v for k, v in corpus.items() if k != "files"},
        "generations": {"temperatures": cfg.gen_temperatures, "prompts": cfg.gen_prompts,
                        "max_new_tokens": cfg.gen_max_new_tokens, **gen_stats},
    }
