"""Lexical units and the placeholder blocks that teach a model to decode them in one pass (NumPy only).

A lexical unit is a maximal run of tokens that the target predicts confidently under teacher forcing: it
starts at any token and extends while the next token's probability under the target exceeds a threshold.
Segmenting left to right tiles a sequence with units (a token the target is unsure of starts a new one).

Placeholder layout (the one the `lexical` strategy feeds): after the last real token r at position q come
placeholders P_1..P_m at positions q+1..q+m. r's row predicts the unit's first token u_1 (plain next-token
prediction); P_j sits where u_j will be and its row predicts u_{j+1}. A training block for a unit that
starts at index s of a sequence x is therefore: P_1..P_m at positions s..s+m-1, attending to x[:s] and to
the earlier placeholders of its own block, with labels x[s+1..s+m].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Rare special tokens of SmolLM2's tokenizer (Jupyter markers a chat or code answer never contains), reused as
# placeholders so exported graphs keep plain input_ids and the vocabulary is unchanged.
DEFAULT_PLACEHOLDER_TOKENS = ("<jupyter_code>", "<jupyter_output>", "<jupyter_script>", "<empty_output>")


def token_probs(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """p(x_i | x_<i) under teacher forcing: logits (n, vocab) row i predicts ids[i+1]; returns (n,) with
    probs[0] = 0 (nothing predicts the first token, so it always starts a unit)."""
    z = logits[:-1].astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    logp = z[np.arange(len(z)), ids[1:]] - np.log(np.exp(z).sum(axis=-1))
    return np.concatenate([[0.0], np.exp(logp)])


def mark_units(probs: np.ndarray, threshold: float, max_len: int) -> list[tuple[int, int]]:
    """Segment a sequence into lexical units: [(start, length)], covering every index once, in order.

    probs[i] = p(x_i | x_<i) under the target. A unit starts at any index and takes the following tokens
    while their probability is > threshold, up to max_len tokens (the first plus max_len - 1 placeholders).
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    units: list[tuple[int, int]] = []
    i, n = 0, len(probs)
    while i < n:
        length = 1
        while i + length < n and length < max_len and probs[i + length] > threshold:
            length += 1
        units.append((i, length))
        i += length
    return units


@dataclass(frozen=True)
class Blocks:
    """Placeholder blocks of one sequence: starts (K,), labels (K, m) token ids, weights (K, m) loss weights."""

    starts: np.ndarray
    labels: np.ndarray
    weights: np.ndarray


def build_blocks(ids: np.ndarray, units: list[tuple[int, int]], m: int, counts: np.ndarray | None, *,
                 outside_weight: float, max_blocks: int, rng: np.random.Generator) -> Blocks:
    """Training blocks at unit starts: P_j at the unit's start + j - 1 predicts ids[start + j].

    counts[i] (optional) says whether index i may be a training target (a generated token, not the prompt).
    Positions inside the unit weigh 1; positions past its end weigh ``outside_weight``: there the true next
    token was one the target itself was unsure of, which teaches the placeholder to be unsure too (the
    strategy's confidence threshold then stops the unit). At most ``max_blocks`` starts, drawn uniformly.
    """
    n = len(ids)
    valid = [(s, length) for s, length in units
             if 1 <= s and s + 1 < n and (counts is None or bool(counts[s]))]
    if len(valid) > max_blocks:
        pick = np.sort(rng.choice(len(valid), size=max_blocks, replace=False))
        valid = [valid[k] for k in pick]
    starts = np.asarray([s for s, _ in valid], dtype=np.int64)
    labels = np.zeros((len(valid), m), dtype=np.int64)
    weights = np.zeros((len(valid), m), dtype=np.float32)
    for k, (s, length) in enumerate(valid):
        for j in range(1, m + 1):
            t = s + j
            if t >= n or (counts is not None and not counts[t]):
                break
            labels[k, j - 1] = ids[t]
            weights[k, j - 1] = 1.0 if j <= length - 1 else outside_weight
    return Blocks(starts, labels, weights)


def block_mask(starts: np.ndarray, m: int, real_len: int) -> np.ndarray:
    """Boolean attention mask (K*m, real_len + K*m) of the placeholder rows over [real tokens; all blocks].

    Row (k, j) sees real indices < starts[k] (the prefix up to the unit's predecessor r) and rows (k, 1..j).
    """
    k_blocks = len(starts)
    mask = np.zeros((k_blocks * m, real_len + k_blocks * m), dtype=bool)
    for k, s in enumerate(starts):
        rows = slice(k * m, (k + 1) * m)
        mask[rows, :s] = True
        mask[rows, real_len + k * m: real_len + (k + 1) * m] = np.tril(np.ones((m, m), dtype=bool))
    return mask


def block_positions(starts: np.ndarray, m: int) -> np.ndarray:
    """Position ids (K*m,) of the placeholder rows: P_j of a unit starting at s sits at s + j - 1."""
    return (starts[:, None] + np.arange(m)[None, :]).reshape(-1)
