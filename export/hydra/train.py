"""The Hydra heads recipe on the fine-tuning skeleton (export/finetune.py): self-distillation from cached
target features.

Data: the skeleton's corpus (code + text) and the target's own greedy generations. The frozen target runs
once over them (features.py): its hidden state after the final norm and its top-k next tokens at every
position, cached in the run folder. Training then reads only the cache (the target is not run again), so a
step costs the heads alone.

Loss: head k at position t reads h_t and the sequence's tokens t+1..t+k (teacher forcing: at decoding time
these are the target's token and the tokens drafted before), and is trained towards the target's
next-token distribution at t+k, restricted to the heads' vocabulary (soft cross-entropy over the kept
top-k; its argmax is the target's greedy token); head k's loss weighs ``head_decay ** (k - 1)``.

Evaluation (held-out text the heads never trained on: the corpus's held-out code and text files, the
held-out prompts' generations split into chat and code, and the bench's own prompts' greedy generations):
per head, top-1 acceptance = argmax head == the target's greedy token given the tokens before it, and
``chain_k`` = all of heads 1..k right (a drafted chain's k-th token is accepted), ``coverage`` = greedy
labels inside the heads' vocabulary (the ceiling of every head).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import EdgegenError
from edgegen.export.drafter.gendata import target_generations
from edgegen.export.finetune import EpochOrder, FineTune, eval_batches_chunks, eval_batches_seqs, lr_at
from edgegen.export.hydra.config import HydraConfig
from edgegen.export.hydra.features import FEATURES_DIR, FeatureSet, build_features

PACKED_NAME = "heads.safetensors"
HELDOUT_DIR = "heldout"  # greedy generations of the bench's prompts (held out: evaluation only)


class FeatureData(EpochOrder):
    """Rows of a feature set in a seeded order per epoch; batch ``step`` is a pure function of (seed, step)."""

    stream = 3

    def __init__(self, features: FeatureSet, batch: int, seed: int, index: np.ndarray) -> None:
        if not len(features.lengths):
            raise EdgegenError("no features to train the heads on")
        self.features, self.batch, self.seed, self.index = features, batch, seed, index
        self.n = len(features.lengths)
        self._perm = {}

    def batch_at(self, step: int) -> tuple[Any, ...]:
        return self.features.batch([self._index(step * self.batch + r) for r in range(self.batch)], self.index)


def _targets(top: Any, top_p: Any, count: Any, k: int, V: int) -> tuple[Any, Any, Any]:
    """Head k's soft targets (B, W - k, top_k) over head indices, the positions that count, their greedy labels."""
    ti, tp, c = top[:, k:], top_p[:, k:], count[:, k:]
    w = tp * (ti < V)
    z = w.sum(-1, keepdim=True)
    return w / z.clamp_min(1e-12), c & (z[..., 0] > 0), ti[..., 0]


def heads_loss(model: Any, batch: tuple[Any, ...], decay: float) -> tuple[Any, dict[str, float]]:
    import torch

    hidden, tok, top, top_p, count = batch
    V = model.embed.shape[0] - 1
    total, weight, logs = 0.0, 0.0, {}
    for k, state in enumerate(model.states(hidden, tok), start=1):
        tgt, valid, greedy = _targets(top, top_p, count, k, V)
        lg = model.score(k, state[valid])  # only the rows that count: the V x d product is most of a step
        logq = torch.log_softmax(lg, dim=-1)
        ce = -(tgt[valid] * logq.gather(-1, top[:, k:][valid].clamp(max=V - 1))).sum(-1)
        total = total + decay ** (k - 1) * ce.sum() / max(int(valid.sum()), 1)
        weight += decay ** (k - 1)
        with torch.no_grad():
            logs[f"acc{k}"] = float((lg.argmax(-1) == greedy[valid]).float().mean()) if len(lg) else 0.0
    loss = total / weight
    logs["loss"] = float(loss.detach())
    return loss, logs


def evaluate_heads(model: Any, batches: list[tuple[Any, ...]]) -> dict[str, Any]:
    """Per head: top-1 acceptance (argmax == the target's greedy token), chain_k (heads 1..k all right) and
    ce_k (the training loss: soft cross-entropy to the target); coverage (greedy labels inside the heads'
    vocabulary), over the positions that count."""
    import torch

    K = len(model.heads)
    right = np.zeros(K)
    chain = np.zeros(K)
    seen = np.zeros(K)
    ce = np.zeros(K)
    ce_n = np.zeros(K)
    covered = labels = 0
    with torch.no_grad():
        for hidden, tok, top, top_p, count in batches:
            W, V = hidden.shape[1], model.embed.shape[0] - 1
            ok_prev = None
            for k, state in enumerate(model.states(hidden, tok), start=1):
                c = count[:, k:]
                tgt, valid, _ = _targets(top, top_p, count, k, V)
                lg = model.score(k, state[c])  # the rows that count only
                logq = torch.log_softmax(lg, dim=-1).gather(-1, top[:, k:][c].clamp(max=V - 1))
                ce[k - 1] += float((-(tgt[c] * logq).sum(-1) * valid[c]).sum())
                ce_n[k - 1] += float(valid.sum())
                ok = torch.zeros_like(c)
                ok[c] = lg.argmax(-1) == top[:, k:, 0][c]
                ok_chain = ok if ok_prev is None else ok & ok_prev[:, :W - k]
                right[k - 1] += float(ok.sum())
                chain[k - 1] += float(ok_chain.sum())
                seen[k - 1] += float(c.sum())
                ok_prev = ok_chain
            covered += int(((top[:, :, 0] < V) & count).sum())
            labels += int(count.sum())
    res: dict[str, Any] = {f"head{k + 1}": float(right[k] / max(seen[k], 1)) for k in range(K)}
    res.update({f"chain{k + 1}": float(chain[k] / max(seen[k], 1)) for k in range(K)})
    res.update({f"ce{k + 1}": float(ce[k] / max(ce_n[k], 1)) for k in range(K)})  # plain floats: weights_only state
    res.update(coverage=covered / max(labels, 1), positions=int(seen[0]))
    return res


def _describe(name: str, r: dict[str, Any]) -> str:
    heads = " ".join(f"{r[k]:.3f}" for k in sorted(r) if k.startswith("head"))
    return f"{name}: heads {heads} (cov {r['coverage']:.2f}, n {r['positions']})"


# --- data -----------------------------------------------------------------------------------------------------


def _is_chat(seq: list[int], plen: int, chat_ids: set[int]) -> bool:
    return bool(chat_ids.intersection(seq[:plen]))


def _chat_ids(hf_dir: Path) -> set[int]:
    """The ids of the chat template's role markers (a chat-templated prompt holds one; raw code never)."""
    added = json.loads((hf_dir / "tokenizer.json").read_text()).get("added_tokens", [])
    return {t["id"] for t in added if t["content"] in ("<|im_start|>", "<start_of_turn>", "<|user|>")}


def heldout_prompts(hf_dir: Path) -> list[dict[str, Any]]:
    """The bench's packaged prompts (data only), tokenized as the target sees them: chat ones through its
    chat template."""
    from tokenizers import Tokenizer

    from edgegen.export.drafter.gendata import _chat_renderer  # the generations' own prompt rendering

    tok = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    render = _chat_renderer(hf_dir)
    out = []
    for name in ("chat", "code"):
        text = resources.files("edgegen.bench").joinpath("prompts", f"{name}.jsonl").read_text()
        for row in (json.loads(line) for line in text.splitlines() if line.strip()):
            prompt = render(row["prompt"]) if row.get("chat") else row["prompt"]
            out.append({"kind": name, "text": prompt, "ids": tok.encode(prompt).ids})
    return out


def feature_sets(run: FineTune, cfg: HydraConfig, index: np.ndarray,
                 gen: Any = None) -> tuple[FeatureSet, dict[str, list[tuple[Any, ...]]]]:
    """The training features (the target's generations, then ``feature_tokens`` corpus positions) and the
    held-out sets as batches (``index``: target id -> head index), featurized once into the run folder; the
    bench prompts' greedy generations are built like the run's (``gen``: a gendata.GenWorkers, None: here)."""
    from edgegen.export.drafter.gendata import GEN_DIR, GenWorkers, build_generations, load_generations

    gen = gen or GenWorkers()

    root, teacher, B = run.out / FEATURES_DIR, run.teacher, cfg.batch_size

    def featurize(name: str, batches: list[Any]) -> FeatureSet:
        return FeatureSet.load(build_features(root / name, teacher, batches, cfg.top_k, name, cfg.progress))

    train = [featurize("train_gen", eval_batches_seqs(run.gen_train, cfg.seq_len, B, 1 << 60, run.pad_id))]
    if cfg.feature_tokens > 0:
        train.append(featurize("train_corpus", eval_batches_chunks(run.train_tokens, cfg.seq_len, B,
                                                                   cfg.feature_tokens)))
    chat_ids = _chat_ids(run.target.hf_dir)
    _, gen_val, _ = load_generations(run.out / GEN_DIR, cfg.gen_val_every, run.eos_ids[0])
    heldout_dir = build_generations(run.out / HELDOUT_DIR, run.target.hf_dir, heldout_prompts(run.target.hf_dir),
                                    cfg, gen)
    bench, _, _ = load_generations(heldout_dir, 0, run.eos_ids[0])
    sources = {"gen_chat": [s for s in gen_val if _is_chat(*s, chat_ids)],
               "gen_code": [s for s in gen_val if not _is_chat(*s, chat_ids)],
               "bench_chat": [s for s in bench if _is_chat(*s, chat_ids)],
               "bench_code": [s for s in bench if not _is_chat(*s, chat_ids)]}
    token_sets = {k: v for k, v in run.eval_sets.items() if k != "val_gen"}
    token_sets.update({k: eval_batches_seqs(v, cfg.seq_len, B, cfg.eval_tokens, run.pad_id)
                       for k, v in sources.items() if v})
    evals = {}
    for name, batches in token_sets.items():
        fs = featurize(f"eval_{name}", batches)
        evals[name] = [fs.batch(list(range(i, min(i + B, len(fs.lengths)))), index)
                       for i in range(0, len(fs.lengths), B)]
    return FeatureSet.join(train), evals


# --- the run ----------------------------------------------------------------------------------------------------


def train_heads(cfg: HydraConfig, *, resume: bool = False, echo: Callable[[str], None] = print,
                step_hook: Callable[[int], None] | None = None, gen: Any = None) -> dict[str, Any]:
    """Run (or resume) the heads training described by ``cfg`` in ``cfg.out``; returns the run summary.
    ``gen``: where the target's generations run (a gendata.GenWorkers; None: in this process).

    step_hook(global_step) is called after every optimizer step (tests use it to interrupt a run)."""
    import torch

    from edgegen.export.drafter.pack import frequent_tokens
    from edgegen.export.hydra.model import build_heads, head_embedding, load_tensors, pack_tensors, token_scale
    from edgegen.export.hydra.ship import EMBED_KEY, VOCAB_KEY, pack_heads

    run = FineTune(cfg, resume=resume, keep=("threads", "progress"), echo=echo, generations=lambda c: True,
                   target_data=partial(target_generations, gen=gen))
    cfg, state, target = run.cfg, run.state, run.target
    vocab = frequent_tokens(run.out, target.vocab_size, cfg.head_vocab, target.hf_dir / "tokenizer.json")
    index = np.full(target.vocab_size, len(vocab), np.int64)  # target id -> head index (V: unknown)
    index[vocab] = np.arange(len(vocab))
    embed = head_embedding(run.teacher, vocab)
    hidden_size = int(embed.shape[1])
    train_set, run.eval_sets = feature_sets(run, cfg, index, gen)
    # automatic: a pure function of the cache, the same on resume
    scale = cfg.token_scale or token_scale(train_set.hidden[:4096], embed)
    model = build_heads(embed, cfg.heads, cfg.head_layers, scale)
    covered = float(np.isin(train_set.top_ids[train_set.count, 0], vocab).mean()) if train_set.count.any() else 0.0
    echo(f"features: {int(train_set.lengths.sum())} positions in {len(train_set.lengths)} rows "
         f"({int(train_set.count.sum())} labelled; {covered:.1%} of greedy labels in the {len(vocab)}-token "
         f"head vocabulary); held out: " + ", ".join(f"{k} {len(v)} batches" for k, v in run.eval_sets.items()))
    run.teacher = None  # training reads only the cache
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))

    def check(name: str, tensors: dict[str, Any], meta: dict[str, Any]) -> None:
        if meta.get("target") != target.facts() or not np.array_equal(tensors[VOCAB_KEY].numpy(), vocab):
            raise EdgegenError(f"checkpoint {name} was trained for another target or head vocabulary")

    tensors = run.restore(opt, check)
    if tensors is not None:
        load_tensors(model, {k: v for k, v in tensors.items() if k not in (VOCAB_KEY, EMBED_KEY)})
        state = run.state
        echo(f"resumed from {run.resumed_from}: global step {state['global_step']}, "
             f"{state['tokens_seen']} tokens seen")
    steps = cfg.total_steps()
    echo(f"heads: {cfg.heads} x ({cfg.head_layers} blocks), hidden {hidden_size}, head vocabulary {len(vocab)}, "
         f"token scale {scale:g}, "
         f"{sum(p.numel() for p in params) / 1e6:.2f}M trainable parameters; {steps} steps x "
         f"{cfg.tokens_per_step} positions; {cfg.threads} thread(s)")
    heads_meta = {"num_heads": cfg.heads, "layers": cfg.head_layers, "hidden_size": hidden_size,
                  "head_vocab": len(vocab)}

    def recipe() -> dict[str, Any]:
        return {"method": "hydra", **heads_meta, "steps": steps, "tokens_per_step": cfg.tokens_per_step,
                "lr": cfg.lr, "head_decay": cfg.head_decay, "top_k": cfg.top_k, "seed": cfg.seed, "token_scale": scale,
                "features": {"positions": int(train_set.lengths.sum()), "corpus_positions": cfg.feature_tokens,
                             "generation_temperatures": cfg.gen_temperatures, "generations": run.gen_stats},
                "corpus": {k: v for k, v in run.corpus.items() if k != "files"}}

    def save() -> Path:
        meta = {"heads": heads_meta, "recipe": recipe(), "target": target.facts(), "target_spec": target.spec,
                **{k: state[k] for k in ("global_step", "tokens_seen", "evals")}}
        own = {VOCAB_KEY: torch.from_numpy(vocab.astype(np.int64)), EMBED_KEY: embed, **pack_tensors(model)}
        return run.save(opt, own, meta, data_position={"sample_index": state["global_step"] * cfg.batch_size})

    def run_eval(label: str) -> None:
        model.eval()
        run.evaluate(label, lambda batches: evaluate_heads(model, batches), _describe)
        model.train()

    if tensors is None:
        run_eval("init")
        save()
    data = run.parallel.shard(FeatureData(train_set, cfg.batch_size, cfg.seed, index))
    with run.progress("heads", steps, state["global_step"]) as progress:
        while state["global_step"] < steps:
            step = state["global_step"]
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, step, steps)
            t0 = time.perf_counter()
            batch = data.batch_at(step)
            loss, logs = heads_loss(model, batch, cfg.head_decay)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            ntok = int(batch[0].shape[0] * batch[0].shape[1])
            run.count(ntok, time.perf_counter() - t0)
            tok_s = progress.advance(ntok)
            progress.bar.set_postfix(loss=f"{logs['loss']:.3f}", acc1=f"{logs['acc1']:.3f}", tok_s=f"{tok_s:.0f}")
            done = state["global_step"] == steps
            if state["global_step"] % 10 == 0 or done:
                run.log_train(logs, opt.param_groups[0]["lr"], tok_s)
            if done or (cfg.eval_every and state["global_step"] % cfg.eval_every == 0):
                run_eval(f"step {state['global_step']}")
                save()
            elif run.checkpoint_due():
                save()
            if step_hook is not None:
                step_hook(state["global_step"])
    return run.finish({"recipe": recipe()}, pack_heads, PACKED_NAME, _no_export, "Hydra heads")


def _no_export(*_: Any, **__: Any) -> Path:
    raise EdgegenError("Hydra heads run in NumPy (edgegen/heads.py): the packed file is the product")
