"""Lexical Unit Decoding fine-tune: teach placeholder tokens to predict the rest of a lexical unit.

Per batch (code/text corpus chunks or the target's own generations, the FastDraft pipeline's data):
1. Teacher forcing: one no-grad forward of the frozen target over the real tokens gives every token's
   probability (which marks the lexical units, units.py) and the KV cache of the real tokens.
2. Placeholder blocks at the unit starts run as one extra forward on top of that cache, each block seeing
   only its own prefix (a 4-D attention mask) at the positions the strategy will use.
3. Loss = weighted CE of the block rows on the true continuation (1 inside the unit, `outside_weight`
   past it) + `guard_weight` x the placeholder ids' probability at ordinary rows.

`trainable="placeholders"`: only the placeholder ids' embedding rows are trained: ordinary tokens never
attend to placeholders (the strategy drops their cache entries every step), so every ordinary row, and
with it AR decoding and the model's quality, is the target's own. The one leak is the tied output head:
the trained rows are also the placeholder ids' output rows, which the guard term keeps improbable.

`trainable="lora"`: the rows plus peft LoRA adapters on the top `lora_layers` decoder layers. Step 1 then runs
twice: the base (adapters disabled, no grad) marks the units and is the teacher, the adapted model (with
grad) gives the ordinary rows and the cache the blocks attend to; the loss adds `kl_weight` x
KL(p_base || p_tuned) at ordinary rows, which keeps AR output close to the base's.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import EdgegenError
from edgegen.export.drafter.gendata import target_generations
from edgegen.export.finetune import FineTune, lr_at
from edgegen.export.lud.config import LORA_PREFIX, LudConfig
from edgegen.export.lud.units import DEFAULT_PLACEHOLDER_TOKENS, block_mask, block_positions, build_blocks, mark_units

PACKED_NAME = "lud.safetensors"
KEEP = ("threads", "progress", "export", "quality_gate")  # what a resumed run takes from the command line
EVAL_THRESHOLDS = (0.5, 0.7, 0.9)


def resolve_placeholder_ids(tokenizer_json: Path, vocab_size: int, span: int, given: list[int] | None) -> list[int]:
    """The token ids whose embedding rows become P_1..P_span: `given`, else SmolLM2's rare Jupyter markers
    when the tokenizer has them, else the vocabulary's last `span` ids."""
    if given is not None:
        ids = list(given)[:span]
    else:
        vocab = json.loads(Path(tokenizer_json).read_text())
        named = {t["content"]: t["id"] for t in vocab.get("added_tokens", [])}
        found = [named[n] for n in DEFAULT_PLACEHOLDER_TOKENS if n in named]
        ids = found[:span] if len(found) >= span else list(range(vocab_size - span, vocab_size))
    if len(ids) < span or len(set(ids)) != len(ids) or not all(0 <= i < vocab_size for i in ids):
        raise EdgegenError(f"need {span} distinct placeholder ids within the vocabulary (0..{vocab_size - 1}), "
                           f"got {ids}")
    return ids


# --- the batch computation ------------------------------------------------------------------------------------


def _real_lengths(ids: Any, att: Any) -> list[int]:
    if att is None:
        return [ids.shape[1]] * ids.shape[0]
    return [int(a.sum()) + 1 for a in att]  # att covers the inputs ids[:, :-1]; the last real token is a label


def lud_batch(model: Any, P: Any, pids: list[int], batch: tuple[Any, Any, Any], cfg: LudConfig,
              rng: np.random.Generator, base_off: Callable[[], Any] | None = None) -> dict[str, Any] | None:
    """Forward one batch; returns the loss tensor and what the metrics need (None: no unit to train on).

    base_off: with LoRA adapters (trainable="lora"), a context manager factory that disables them: the base
    model's pass (no grad) marks the units and is the KL teacher; the adapted pass (with grad) gives the
    ordinary rows' logits and the real tokens' KV cache the placeholder blocks attend to."""
    import torch
    import torch.nn.functional as F

    ids, att, mask = batch  # mask[b, t]: the token ids[b, t + 1] may be a target
    B, W = ids.shape
    m = cfg.span
    lengths = _real_lengths(ids, att)
    am = torch.zeros((B, W), dtype=torch.long)
    for b, n in enumerate(lengths):
        am[b, :n] = 1
    lora = base_off is not None
    with torch.no_grad():
        if lora:
            with base_off():
                base_logits = model.lm_head(model.model(input_ids=ids, attention_mask=am).last_hidden_state).float()
        else:
            out = model.model(input_ids=ids, attention_mask=am, use_cache=True)
            h = out.last_hidden_state  # (B, W, d), after the final norm
            base_logits = real_logits = model.lm_head(h).float()  # (B, W, V)
        logp = torch.log_softmax(base_logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        probs = torch.cat([torch.zeros(B, 1), logp.exp()], 1).numpy()  # probs[b, i] = p(ids[b, i] | prefix)
    if lora:  # the adapted model's real rows, with grad (the blocks attend to this cache)
        out = model.model(input_ids=ids, attention_mask=am, use_cache=True)
        h = out.last_hidden_state
        real_logits = model.lm_head(h).float()
    blocks = []
    for b in range(B):
        n = lengths[b]
        counts = np.concatenate([[False], mask[b, : n - 1].numpy() > 0])  # counts[i]: ids[b, i] may be a target
        units = mark_units(probs[b, :n], cfg.unit_threshold, m + 1)
        blocks.append(build_blocks(ids[b, :n].numpy(), units, m, counts, outside_weight=cfg.outside_weight,
                                   max_blocks=cfg.max_blocks, rng=rng))
    K = max(len(bl.starts) for bl in blocks)
    if K == 0:
        return None
    starts = np.ones((B, K), dtype=np.int64)
    labels = np.zeros((B, K, m), dtype=np.int64)
    weights = np.zeros((B, K, m), dtype=np.float32)
    mask4 = np.zeros((B, 1, K * m, W + K * m), dtype=bool)
    for b, bl in enumerate(blocks):
        k = len(bl.starts)
        starts[b, :k], labels[b, :k], weights[b, :k] = bl.starts, bl.labels, bl.weights
        mask4[b, 0] = block_mask(starts[b], m, W)
    pos = torch.from_numpy(np.stack([block_positions(starts[b], m) for b in range(B)]))
    bias = torch.zeros(mask4.shape).masked_fill_(~torch.from_numpy(mask4), torch.finfo(torch.float32).min)
    emb = P.repeat(K, 1)[None].expand(B, K * m, P.shape[1])  # row (k, j) is P_j
    hb = model.model(inputs_embeds=emb, attention_mask=bias, position_ids=pos, past_key_values=out.past_key_values,
                     use_cache=True).last_hidden_state  # (B, K*m, d)
    pid_t = torch.tensor(pids, dtype=torch.long)
    logits = model.lm_head(hb).float().index_copy(-1, pid_t, (hb @ P.T).float())  # tied head: trained rows
    lab = torch.from_numpy(labels).view(B, K * m)
    w = torch.from_numpy(weights).view(B, K * m)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), lab.reshape(-1), reduction="none").view(B, K * m)
    ce_m = (ce * w).sum() / w.sum().clamp(min=1e-6)
    kl = torch.zeros(())
    if lora:
        # Ordinary rows as the merged model scores them (the tied head's placeholder rows are P), against the
        # base: KL(p_base || p_tuned) per row, and the placeholder ids' probability (the guard).
        lq = torch.log_softmax(real_logits.index_copy(-1, pid_t, (h @ P.T).float()), -1)  # (B, W, V)
        with torch.no_grad():
            lp_base = torch.log_softmax(base_logits, -1)
        kl_rows = (lp_base.exp() * (lp_base - lq)).sum(-1)
        kl = (kl_rows * am).sum() / am.sum()
        guard = (lq[..., pid_t].exp().sum(-1) * am).sum() / am.sum()
    else:
        # Guard: the placeholder ids' probability at ordinary rows, where the tied head now scores the trained rows.
        with torch.no_grad():
            others = real_logits.index_fill(-1, pid_t, float("-inf")).logsumexp(-1, keepdim=True)  # (B, W, 1)
        lp = (h @ P.T).float()  # (B, W, m)
        guard_p = torch.exp(lp - torch.logaddexp(others, lp.logsumexp(-1, keepdim=True))).sum(-1)
        guard = (guard_p * am).sum() / am.sum()
    loss = ce_m + cfg.guard_weight * guard + (cfg.kl_weight * kl if lora else 0.0)
    return {"loss": loss, "ce": ce_m.detach(), "guard": guard.detach(), "kl": kl.detach(), "logits": logits.detach(),
            "labels": lab, "weights": w, "blocks": int(sum(len(bl.starts) for bl in blocks)), "units": blocks}


def acceptance_stats(logits: Any, labels: Any, weights: Any, m: int, thresholds: tuple[float, ...]) -> dict[str, Any]:
    """What the strategy would do with these block rows: per offset top-1 accuracy (inside units), and per
    threshold the mean accepted span (tokens past the first), its precision, and the correct leading run
    (the verified mode's gain)."""
    import torch

    B = logits.shape[0]
    p = torch.softmax(logits.float(), -1)
    conf, tok = p.max(-1)  # (B, K*m)
    conf, tok = conf.view(B, -1, m), tok.view(B, -1, m)
    lab, w = labels.view(B, -1, m), weights.view(B, -1, m)
    live = w[..., 0] > 0  # real blocks (padding blocks have zero weights)
    right = (tok == lab) & (w > 0)
    inside = w == 1.0
    out: dict[str, Any] = {"blocks": int(live.sum()),
                           "acc_inside": [float((right & inside)[..., j].sum() / inside[..., j].sum().clamp(min=1))
                                          for j in range(m)]}
    for t in thresholds:
        ok = (conf > t) & (w > 0)
        ok[..., 1:] &= tok[..., 1:] != tok[..., :-1]  # repetition control: a repeated token ends the unit
        run = ok.long().cumprod(-1)  # leading accepted offsets
        acc = run.sum(-1)[live].float()
        good = (run * right.long()).cumprod(-1).sum(-1)[live].float()
        n_acc = float(acc.sum())
        out[f"t{t}"] = {"accepted": float(acc.mean()) if acc.numel() else 0.0,
                        "precision": float((run.bool() & right).sum()) / n_acc if n_acc else 1.0,
                        "correct_run": float(good.mean()) if good.numel() else 0.0}
    return out


def evaluate(model: Any, P: Any, pids: list[int], batches: list[tuple[Any, Any, Any]],
             cfg: LudConfig, base_off: Callable[[], Any] | None = None) -> dict[str, Any]:
    import torch

    rng = np.random.default_rng([cfg.seed, 7])  # the same blocks at every evaluation
    tot: dict[str, Any] = {}
    losses, kls, guards = [], [], []
    with torch.no_grad():
        for batch in batches:
            res = lud_batch(model, P, pids, batch, cfg, rng, base_off)
            if res is None:
                continue
            losses.append(float(res["ce"]))
            kls.append(float(res["kl"]))
            guards.append(float(res["guard"]))
            st = acceptance_stats(res["logits"], res["labels"], res["weights"], cfg.span, EVAL_THRESHOLDS)
            n = st.pop("blocks")
            for key, v in st.items():
                agg = tot.setdefault(key, {"n": 0, "v": None})
                if isinstance(v, list):
                    agg["v"] = [a + b * n for a, b in zip(agg["v"] or [0.0] * len(v), v, strict=True)]
                else:
                    agg["v"] = {k: (agg["v"] or {}).get(k, 0.0) + x * n for k, x in v.items()}
                agg["n"] += n
    res_out: dict[str, Any] = {"ce": float(np.mean(losses)) if losses else math.nan,
                               "kl_ordinary": round(float(np.mean(kls)), 5) if kls else math.nan,
                               "guard": round(float(np.mean(guards)), 6) if guards else math.nan}
    for key, agg in tot.items():
        n = max(agg["n"], 1)
        res_out[key] = ([round(x / n, 4) for x in agg["v"]] if isinstance(agg["v"], list)
                        else {k: round(x / n, 4) for k, x in agg["v"].items()})
    return res_out


# --- the run ---------------------------------------------------------------------------------------------------


def init_placeholders(model: Any, m: int, seed: int) -> Any:
    """P_1..P_m start as the mean token embedding (a neutral input) plus a little seeded noise."""
    import torch

    E = model.get_input_embeddings().weight.detach()
    g = torch.Generator().manual_seed(seed)
    P = E.mean(0, keepdim=True).repeat(m, 1) + 0.01 * E.std() * torch.randn(m, E.shape[1], generator=g)
    return torch.nn.Parameter(P.float())


def add_lora(model: Any, cfg: LudConfig) -> tuple[Any, dict[str, Any]]:
    """Wrap `model` with peft LoRA adapters on the top `cfg.lora_layers` decoder layers (seeded init, B = 0);
    returns (the peft model, {name: parameter} of the adapters in a fixed order). `model` itself is changed in
    place: its linear layers now carry the adapters."""
    import torch
    from peft import LoraConfig, get_peft_model

    n_layers = model.config.num_hidden_layers
    if cfg.lora_layers > n_layers:
        raise EdgegenError(f"lora-layers {cfg.lora_layers} exceeds the target's {n_layers} decoder layers")
    layers = list(range(n_layers - cfg.lora_layers, n_layers))
    lcfg = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, bias="none",
                      target_modules=list(cfg.lora_modules), layers_to_transform=layers, layers_pattern="layers")
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        peft_model = get_peft_model(model, lcfg)
    params = {n: p for n, p in model.named_parameters() if "lora_" in n}
    for p in params.values():
        p.requires_grad_(True)
    return peft_model, params


def lora_scale(cfg: LudConfig) -> float:
    return cfg.lora_alpha / cfg.lora_rank


def open_run(cfg: LudConfig, *, resume: bool, echo: Callable[[str], None], gen: Any = None) -> FineTune:
    """Open (or resume) the run ``cfg`` and build its data: the corpus and, when batches come from them, the
    target's generations (``gen``: a gendata.GenWorkers saying where they are generated; None: here)."""
    return FineTune(cfg, resume=resume, keep=KEEP, echo=echo, target_data=partial(target_generations, gen=gen),
                    generations=lambda c: c.gen_share > 0)


def train_lud(cfg: LudConfig, *, resume: bool = False, echo: Callable[[str], None] = print,
              step_hook: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run (or resume) the LUD fine-tune described by `cfg` in `cfg.out`; returns the run summary.

    step_hook(global_step) runs after every optimizer step (tests use it to interrupt a run)."""
    import torch

    from edgegen.export.lud.ship import export_lud, pack_lud

    run = open_run(cfg, resume=resume, echo=echo)
    cfg, state, model, target = run.cfg, run.state, run.teacher, run.target  # the model is trained in place
    pids = resolve_placeholder_ids(target.hf_dir / "tokenizer.json", target.vocab_size, cfg.span, cfg.placeholder_ids)
    chunks = run.chunks()
    gens = run.generations() if cfg.gen_share > 0 else None
    state["blocks_seen"] = 0

    P = init_placeholders(model, cfg.span, cfg.seed)
    lora_params: dict[str, Any] = {}
    base_off: Callable[[], Any] | None = None
    groups: list[dict[str, Any]] = [{"params": [P], "lr": cfg.lr}]
    if cfg.trainable == "lora":
        peft_model, lora_params = add_lora(model, cfg)
        base_off = peft_model.disable_adapter
        groups.append({"params": list(lora_params.values()), "lr": cfg.lora_lr})
    trained = [P, *lora_params.values()]
    opt = torch.optim.AdamW(groups, weight_decay=0.0, betas=(0.9, 0.95))
    steps = cfg.total_steps()

    def check(name: str, tensors: dict[str, Any], meta: dict[str, Any]) -> None:
        if meta.get("target", {}).get("target_tokenizer_sha256") != target.tokenizer_sha256 or \
                meta.get("placeholder_ids") != pids:
            raise EdgegenError(f"checkpoint {name} was trained for another target or placeholder ids")
        if set(tensors) != {"placeholder_embeds", *(LORA_PREFIX + n for n in lora_params)}:
            raise EdgegenError(f"checkpoint {name} holds other trained weights than this run's recipe")

    tensors = run.restore(opt, check)
    if tensors is not None:
        with torch.no_grad():
            P.copy_(tensors["placeholder_embeds"])
            for n, p in lora_params.items():
                p.copy_(tensors[LORA_PREFIX + n])
        state = run.state
        echo(f"resumed from {run.resumed_from}: step {state['global_step']}/{steps}, "
             f"{state['tokens_seen']} tokens seen")
    echo(f"LUD: {cfg.span} placeholders (ids {pids}), unit threshold {cfg.unit_threshold}, "
         f"{sum(p.numel() for p in trained)} trainable parameters ({cfg.trainable}); {steps} steps x "
         f"{cfg.tokens_per_step} tokens; {cfg.threads} thread(s)")

    def recipe() -> dict[str, Any]:
        return recipe_summary(cfg, run.corpus, run.gen_stats, steps)

    def save() -> None:
        meta = {"recipe": recipe(), "target": target.facts(), "target_spec": target.spec, "placeholder_ids": pids,
                **{k: state[k] for k in ("global_step", "tokens_seen", "evals")}, "trainable": cfg.trainable,
                **({"lora": lora_meta(cfg, model, lora_params)} if lora_params else {})}
        run.save(opt, {"placeholder_embeds": P, **{LORA_PREFIX + n: p for n, p in lora_params.items()}}, meta)

    def run_eval(label: str) -> None:
        run.evaluate(label, lambda batches: evaluate(model, P, pids, batches, cfg, base_off),
                     lambda k, v: f"{k}: ce {v['ce']:.3f} kl {v['kl_ordinary']} acc {v.get('acc_inside')} "
                                  f"t0.7 acc'd {v.get('t0.7', {}).get('accepted')} "
                                  f"prec {v.get('t0.7', {}).get('precision')}")

    if tensors is None:
        run_eval("init")
        save()
    with run.progress("lud", steps, state["global_step"]) as progress:
        while state["global_step"] < steps:
            step = state["global_step"]
            frac = lr_at(cfg, step, steps) / cfg.lr
            for g, peak in zip(opt.param_groups, (cfg.lr, cfg.lora_lr), strict=False):
                g["lr"] = peak * frac
            t0 = time.perf_counter()
            step_rng = np.random.default_rng([cfg.seed, 3, step])  # the data position is the step: resume is exact
            use_gen = gens is not None and step_rng.random() < cfg.gen_share
            batch = (gens if use_gen else chunks).batch_at(step)  # type: ignore[union-attr]
            res = lud_batch(model, P, pids, batch, cfg, step_rng, base_off)
            logs: dict[str, float] = {}
            if res is None and run.parallel.world > 1:
                # no unit in this rank's rows: a zero loss still takes part in the gradient average and the
                # step, which every rank must run together
                res = {"loss": sum(p.sum() for p in trained) * 0.0, "ce": torch.zeros(()), "guard": torch.zeros(()),
                       "kl": torch.zeros(()), "blocks": 0, "logits": None}
            if res is not None:
                opt.zero_grad(set_to_none=True)
                res["loss"].backward()
                torch.nn.utils.clip_grad_norm_(trained, 1.0)
                opt.step()
                st = acceptance_stats(res["logits"], res["labels"], res["weights"], cfg.span, (0.7,)) \
                    if res["logits"] is not None else {"acc_inside": [0.0], "t0.7": {"accepted": 0.0}}
                logs = {"loss": float(res["loss"].detach()), "ce": float(res["ce"]), "guard": float(res["guard"]),
                        "kl": float(res["kl"]), "acc1": st["acc_inside"][0], "accepted": st["t0.7"]["accepted"]}
                state["blocks_seen"] += res["blocks"]
            ntok = int(batch[0].numel())
            run.count(ntok, time.perf_counter() - t0)
            tok_s = progress.advance(ntok)
            if logs:
                progress.bar.set_postfix(loss=f"{logs['loss']:.3f}", kl=f"{logs['kl']:.4f}",
                                         acc1=f"{logs['acc1']:.2f}", tok_s=f"{tok_s:.0f}")
            if state["global_step"] % 10 == 0 or state["global_step"] == steps:
                run.log_train(logs, opt.param_groups[0]["lr"], tok_s, source="gen" if use_gen else "corpus")
            if cfg.eval_every and state["global_step"] % cfg.eval_every == 0 and state["global_step"] < steps:
                run_eval(f"step {state['global_step']}")
            if state["global_step"] < steps and run.checkpoint_due():
                save()
            if step_hook is not None:
                step_hook(state["global_step"])
    if not state["evals"] or state["evals"][-1]["global_step"] != state["global_step"]:
        run_eval("final")
    save()
    return run.finish({"placeholder_ids": pids, "recipe": recipe()}, pack_lud, PACKED_NAME, export_lud, "LUD delta")


def lora_meta(cfg: LudConfig, model: Any, lora_params: dict[str, Any]) -> dict[str, Any]:
    n = model.config.num_hidden_layers
    return {"rank": cfg.lora_rank, "alpha": cfg.lora_alpha, "scale": lora_scale(cfg), "modules": cfg.lora_modules,
            "layers": list(range(n - cfg.lora_layers, n)), "parameters": sum(p.numel() for p in lora_params.values())}


def recipe_summary(cfg: LudConfig, corpus: dict[str, Any], gen_stats: dict[str, Any], steps: int) -> dict[str, Any]:
    return {"method": "lexical-unit-decoding", "trainable": cfg.trainable, "span": cfg.span,
            "unit_threshold": cfg.unit_threshold, "outside_weight": cfg.outside_weight,
            "guard_weight": cfg.guard_weight,
            **({"lora_rank": cfg.lora_rank, "lora_alpha": cfg.lora_alpha, "lora_layers": cfg.lora_layers,
                "lora_modules": cfg.lora_modules, "lora_lr": cfg.lora_lr, "kl_weight": cfg.kl_weight}
               if cfg.trainable == "lora" else {}),
            "max_blocks": cfg.max_blocks, "steps": steps,
            "tokens_per_step": cfg.tokens_per_step, "seq_len": cfg.seq_len, "batch_size": cfg.batch_size,
            "gen_share": cfg.gen_share, "lr": cfg.lr, "seed": cfg.seed,
            "corpus": {k: v for k, v in corpus.items() if k != "files"},
            "generations": {"temperatures": cfg.gen_temperatures, "prompts": cfg.gen_prompts,
                            "max_new_tokens": cfg.gen_max_new_tokens, **gen_stats}}
