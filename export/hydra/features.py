"""The heads' training data: the frozen target's features, computed once and cached in the run folder.

For every position of a token batch (the skeleton's corpus windows and target generations) one no-grad
forward of the target gives its last hidden state after the final norm (float16) and its top-k next-token
log-probabilities (the labels: self-distillation, the top-1 being the target's greedy token). A set is a
folder of shards (``shard-*.npz``, one token batch each, written atomically), so an interrupted build
resumes at the next shard; ``complete`` marks a finished set. Rows are stored flat (only real positions)
with their lengths; ``count`` says whose label is trained and scored (a generation's generated part).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import EdgegenError

FEATURES_DIR = "features"
COMPLETE = "complete"


def target_features(teacher: Any, ids: Any, att: Any, top_k: int) -> tuple[Any, Any, Any]:
    """(hidden (B, W, d) float32, top ids (B, W, k), top log-probs (B, W, k)) of the inputs ``ids``."""
    import torch

    with torch.inference_mode():
        hidden = teacher.model(input_ids=ids, attention_mask=att).last_hidden_state.float()  # after the final norm
        logp = torch.log_softmax(teacher.lm_head(hidden).float(), dim=-1)
        top = logp.topk(top_k, dim=-1)
    return hidden, top.indices, top.values


def build_features(folder: Path, teacher: Any, batches: list[tuple[Any, Any, Any]], top_k: int, desc: str,
                   progress: bool = True) -> Path:
    """Compute the features of every token batch into ``folder`` once (resuming at the first missing shard)."""
    from tqdm import tqdm

    folder = Path(folder)
    if (folder / COMPLETE).is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(batches), desc=desc, unit="batch", disable=not progress, mininterval=10.0)
    for s, (ids, att, mask) in enumerate(batches):
        path = folder / f"shard-{s:05d}.npz"
        if not path.is_file():
            inp = ids[:, :-1]
            hidden, top_ids, top_logp = target_features(teacher, inp, att, top_k)
            lengths = [int(a.sum()) for a in att] if att is not None else [inp.shape[1]] * inp.shape[0]
            cut = [slice(0, n) for n in lengths]
            tmp = path.with_name(path.name + ".tmp.npz")
            np.savez(tmp, lengths=np.asarray(lengths, np.int32),
                     tokens=np.concatenate([inp[r, c].numpy() for r, c in enumerate(cut)]).astype(np.int32),
                     hidden=np.concatenate([hidden[r, c].numpy() for r, c in enumerate(cut)]).astype(np.float16),
                     top_ids=np.concatenate([top_ids[r, c].numpy() for r, c in enumerate(cut)]).astype(np.int32),
                     top_logp=np.concatenate([top_logp[r, c].numpy() for r, c in enumerate(cut)]).astype(np.float16),
                     count=np.concatenate([mask[r, c].numpy() for r, c in enumerate(cut)]).astype(bool))
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        bar.update(1)
    bar.close()
    (folder / COMPLETE).write_text(f"{len(batches)}\n")
    return folder


@dataclass
class FeatureSet:
    """Cached features, flat over rows: row i is positions ``starts[i] : starts[i] + lengths[i]``."""

    tokens: np.ndarray  # (N,) int32 input token at each position
    hidden: np.ndarray  # (N, d) float16 target hidden state (after the final norm)
    top_ids: np.ndarray  # (N, k) int32 target's top-k next tokens (the first is its greedy token)
    top_logp: np.ndarray  # (N, k) float16 their log-probabilities
    count: np.ndarray  # (N,) bool: the label at this position is trained and scored
    lengths: np.ndarray  # (rows,)

    @property
    def starts(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)

    @classmethod
    def load(cls, folder: Path) -> FeatureSet:
        folder = Path(folder)
        if not (folder / COMPLETE).is_file():
            raise EdgegenError(f"{folder}: the feature set is not complete")
        parts = [np.load(p) for p in sorted(folder.glob("shard-*.npz")) if not p.name.endswith(".tmp.npz")]
        keys = ("tokens", "hidden", "top_ids", "top_logp", "count", "lengths")
        return cls(*(np.concatenate([p[k] for p in parts]) for k in keys))

    @staticmethod
    def join(sets: list[FeatureSet]) -> FeatureSet:
        keys = ("tokens", "hidden", "top_ids", "top_logp", "count", "lengths")
        return FeatureSet(*(np.concatenate([getattr(s, k) for s in sets]) for k in keys))

    def batch(self, rows: list[int], index: np.ndarray) -> tuple[Any, Any, Any, Any, Any]:
        """Torch tensors of ``rows``, right-padded: hidden (B, W, d) float32, head indices of the tokens
        (B, W), of the top-k labels (B, W, k; V outside the heads' vocabulary), their probabilities, count."""
        import torch

        starts, lens = self.starts, self.lengths
        W = int(max(lens[r] for r in rows))
        B, d, k = len(rows), self.hidden.shape[1], self.top_ids.shape[1]
        unknown = int(index.max())
        hidden = np.zeros((B, W, d), np.float32)
        tok = np.full((B, W), unknown, np.int64)
        top = np.full((B, W, k), unknown, np.int64)
        top_p = np.zeros((B, W, k), np.float32)
        count = np.zeros((B, W), bool)
        for b, r in enumerate(rows):
            s, n = int(starts[r]), int(lens[r])
            hidden[b, :n] = self.hidden[s:s + n]
            tok[b, :n] = index[self.tokens[s:s + n]]
            top[b, :n] = index[self.top_ids[s:s + n]]
            top_p[b, :n] = np.exp(self.top_logp[s:s + n].astype(np.float32))
            count[b, :n] = self.count[s:s + n]
        return (torch.from_numpy(hidden), torch.from_numpy(tok), torch.from_numpy(top), torch.from_numpy(top_p),
                torch.from_numpy(count))
