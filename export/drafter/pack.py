"""Packing a trained drafter: its non-shared weights and recipe in one file (what ``ship.export_drafter`` exports).

Apart from ship.py because packing reads the training run (its corpus and the target's generations), which the
shipped drafter's rebuild on first use (edgegen.artifacts) never needs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import EdgegenError
from edgegen.export.drafter.ship import HEAD_VOCAB_KEY, PACK_DTYPES, PACK_FORMAT, _encode, export_drafter
from edgegen.files import owned_tempdir


def pack_drafter(checkpoint: str | Path, out_file: str | Path, dtype: str = "float16",
                 head_vocab: int | None = None) -> Path:
    """Store the trained (non-shared) weights of `checkpoint` (a ckpt-* folder or a training folder: its
    latest checkpoint) in `out_file` (safetensors, `dtype`), with the recipe and target facts as metadata.
    ``dtype="int8"`` stores matrices as int8 blocks of 32 with one fp16 scale each (vectors as fp16).

    ``head_vocab``: keep only the N most frequent tokens of the run's training data (corpus and target
    generations, equally weighted) in the drafter's embedding and tied output head. The head is most of a
    2-layer drafter's cost; the target still verifies over the whole vocabulary, so output stays exact.
    None: the head the run trained (its recipe's head_vocab; the whole vocabulary when it has none)."""
    import torch
    from safetensors.torch import load_file

    if dtype not in PACK_DTYPES:
        raise EdgegenError(f"unsupported pack dtype '{dtype}': {', '.join(PACK_DTYPES)}")
    from edgegen.export.checkpoints import checkpoint_dir

    ckpt = checkpoint_dir(Path(checkpoint), "drafter")
    meta = json.loads((ckpt / "meta.json").read_text())
    tensors = _encode(load_file(str(ckpt / "trainable.safetensors")), dtype)
    if head_vocab is None:
        head_vocab = meta["recipe"].get("head_vocab")
    if head_vocab is not None:
        run = ckpt.parent
        tokenizers = [run / "target-hf" / "tokenizer.json", Path(str(meta.get("target_spec"))) / "tokenizer.json"]
        kept = frequent_tokens(run, meta["target"]["target_vocab_size"], head_vocab,
                               next((t for t in tokenizers if t.is_file()), None))
        tensors[HEAD_VOCAB_KEY] = torch.from_numpy(kept.astype(np.int32))
    info = {"format": PACK_FORMAT, "dtype": dtype, "checkpoint": ckpt.name, "target_spec": meta.get("target_spec"),
            "layer_map": meta["layer_map"], "recipe": meta["recipe"], "evals": meta.get("evals", [])[-3:],
            "tokens_seen": meta.get("tokens_seen"), **meta["target"]}
    from edgegen.export.finetune import write_pack

    return write_pack(tensors, out_file, "edgegen_drafter", info)


def frequent_tokens(run_dir: Path, vocab_size: int, n: int, tokenizer: Path | None = None) -> np.ndarray:
    """The `n` most frequent token ids of a training run's corpus and target generations, most frequent
    first; the tokenizer's added (special) tokens are always kept (last), so EOS and the chat markers stay
    draftable."""
    from edgegen.export.drafter.corpus import CORPUS_DIR
    from edgegen.export.drafter.gendata import GEN_DIR, load_generations

    if not 1 <= n <= vocab_size:
        raise EdgegenError(f"head vocabulary must be within [1, {vocab_size}] tokens, got {n}")
    train = Path(run_dir) / CORPUS_DIR / "train.npy"
    if not train.is_file():
        raise EdgegenError(f"{run_dir} has no training corpus to rank tokens by (pack from the training folder)")
    weight = np.bincount(np.load(train), minlength=vocab_size).astype(np.float64)
    weight /= max(weight.sum(), 1.0)
    gens, _, _ = load_generations(Path(run_dir) / GEN_DIR, val_every=10) if (Path(run_dir) / GEN_DIR).is_dir() \
        else ([], [], {})
    if gens:
        counts = sum(np.bincount(np.asarray(ids[p:]), minlength=vocab_size) for ids, p in gens).astype(np.float64)
        weight += counts / max(counts.sum(), 1.0)
    added = json.loads(Path(tokenizer).read_text()).get("added_tokens", []) if tokenizer else []
    special = np.array(sorted(_kept_added(added, vocab_size, n, Path(tokenizer).parent if tokenizer else None)),
                       dtype=np.int64)
    if len(special) >= n:
        raise EdgegenError(f"head vocabulary of {n} tokens leaves no room beside the {len(special)} special tokens")
    order = np.argsort(-weight, kind="stable")
    return np.concatenate([order[~np.isin(order, special)][: n - len(special)], special])


def _kept_added(added: list[dict[str, Any]], vocab_size: int, n: int, hf_dir: Path | None) -> set[int]:
    """The added tokens a reduced head always keeps: all of them when they are few (SmolLM2's 17); when they
    would fill much of the head (Gemma's 6414, mostly ``<unusedN>`` placeholders), only those that start or
    end a generation (the BOS and EOS ids of generation_config.json) or that the chat template writes; the
    others are ranked by frequency like any token."""
    ids = {t["id"] for t in added if t["id"] < vocab_size}
    if len(ids) <= n // 4 or hf_dir is None:
        return ids
    from edgegen.export.source import generation_ids

    eos, bos = generation_ids(hf_dir)
    keep = {*eos, *([bos] if bos is not None else [])}
    template = (hf_dir / "chat_template.jinja").read_text() if (hf_dir / "chat_template.jinja").is_file() else ""
    keep |= {t["id"] for t in added if t.get("special") and len(t["content"]) > 1 and t["content"] in template}
    return keep & ids


def export_trained(checkpoint: str | Path, out_dir: str | Path, **options: Any) -> Path:
    """``ship.export_drafter`` of a packed drafter, a ckpt-* folder or a training folder (packed first)."""
    src = Path(checkpoint).expanduser()
    if src.is_file():
        return export_drafter(src, out_dir, **options)
    out = Path(out_dir).expanduser().resolve()
    work = owned_tempdir(out, "pack")
    try:
        return export_drafter(pack_drafter(src, work / "drafter.safetensors"), out, **options)
    finally:
        shutil.rmtree(work, ignore_errors=True)
