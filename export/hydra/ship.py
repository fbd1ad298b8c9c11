"""Shipping Hydra heads: one safetensors file the NumPy runtime (edgegen/heads.py) reads.

It holds the heads' trained weights, their reduced vocabulary (``vocab``: head index -> target id) and its
embedding rows (``embed``: the target's rows of ``vocab`` plus the unknown token's row), so the runtime needs
nothing from the target but its hidden state; the metadata (``edgegen_heads``, JSON) holds the architecture,
the feature the heads read, the target facts, the recipe and the last evaluations.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import EdgegenError
from edgegen.heads import FEATURE, FORMAT, METADATA_KEY

PACK_DTYPES = ("float16", "float32", "int8")
VOCAB_KEY, EMBED_KEY = "vocab", "embed"  # in checkpoints and packs, beside the trained tensors


def heads_info(num_heads: int, layers: int, hidden_size: int, target: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The metadata the runtime checks (format, feature, sizes) plus the target facts and ``extra``."""
    return {"format": FORMAT, "feature": FEATURE, "num_heads": num_heads, "layers": layers,
            "hidden_size": hidden_size, "vocab_size": target["target_vocab_size"],
            "conditions_on": "the target's next token at the hidden state's position, then each drafted token",
            **target, **extra}


def write_heads(tensors: dict[str, Any], info: dict[str, Any], out_file: str | Path, dtype: str = "float16") -> Path:
    """Write heads tensors (torch; ``vocab``, ``embed`` and the heads' weights) as a heads file, atomically.
    ``dtype="int8"``: matrices as int8 blocks of 32 with one fp16 scale each (``NAME.q8``, ``NAME.scale``;
    vectors as fp16), half the fp16 size; the runtime dequantizes them to float32 once, at load."""
    import torch

    from edgegen.export.drafter.ship import _encode  # the drafter packs' int8 blocks (one encoding rule)
    from edgegen.export.finetune import write_pack

    if dtype not in PACK_DTYPES:
        raise EdgegenError(f"unsupported heads dtype '{dtype}': {', '.join(PACK_DTYPES)}")
    weights = _encode({k: v.float() for k, v in tensors.items() if k != VOCAB_KEY}, dtype)
    out = {VOCAB_KEY: tensors[VOCAB_KEY].to(torch.int32).contiguous(), **weights}
    return write_pack(out, out_file, METADATA_KEY, {**info, "dtype": dtype})


def pack_heads(checkpoint: str | Path, out_file: str | Path, dtype: str = "float16") -> Path:
    """Store the heads of ``checkpoint`` (a ckpt-* folder, or a training folder: its latest checkpoint)."""
    from safetensors.torch import load_file

    from edgegen.export.checkpoints import checkpoint_dir

    ckpt = checkpoint_dir(Path(checkpoint), "Hydra heads")
    meta = json.loads((ckpt / "meta.json").read_text())
    if "heads" not in meta:
        raise EdgegenError(f"{ckpt} is not a Hydra heads checkpoint")
    info = heads_info(**meta["heads"], target=meta["target"], recipe=meta["recipe"], checkpoint=ckpt.name,
                      tokens_seen=meta.get("tokens_seen"), evals=meta.get("evals", [])[-2:])
    return write_heads(load_file(str(ckpt / "trainable.safetensors")), info, out_file, dtype)


def random_heads(out_file: str | Path, *, hidden_size: int = 32, vocab_size: int = 64, head_vocab: int = 24,
                 num_heads: int = 3, layers: int = 1, seed: int = 0, dtype: str = "float32") -> Path:
    """A heads file with random weights (every weight non-zero) for tests: the runtime and a strategy can be
    exercised without a trained run. The target facts name no real target."""
    import torch

    from edgegen.export.hydra.model import build_heads, pack_tensors, trained_tensors

    g = torch.Generator().manual_seed(seed)
    vocab = torch.randperm(vocab_size, generator=g)[:head_vocab]
    embed = torch.randn(head_vocab + 1, hidden_size, generator=g)
    model = build_heads(embed, num_heads, layers)
    with torch.no_grad():
        for t in trained_tensors(model).values():
            t.copy_(torch.randn(t.shape, generator=g) * (0.5 / np.sqrt(t.shape[-1])))
    target = {"target_name": "random", "target_vocab_size": vocab_size, "target_tokenizer_sha256": ""}
    info = heads_info(num_heads, layers, hidden_size, target, recipe={"method": "random"})
    return write_heads({VOCAB_KEY: vocab, EMBED_KEY: embed, **pack_tensors(model)}, info, out_file, dtype)
