"""Superposed Decoding (Shen et al., NeurIPS 2024): k drafts for the cost of one generation.

One KV cache serves all k drafts. After the prompt, each step feeds ONE position whose input is the
superposition sum_i w_i E[last token of draft i], w = softmax(draft scores). The shared next-token
distribution p_LM (softmax at ``lm_temperature``) is cut to its top c tokens and renormalised; each
draft scores those tokens with the n-gram model on its own context:

    log s = (1 - alpha) log p_LM + alpha log p_ngram

Tokens the n-gram model gives probability 0 are dropped for that draft; a draft left with none keeps
(1 - alpha) log p_LM - 200. Beam bookkeeping over the k x c continuations (top 2k) keeps the k best
alive drafts; an EOS continuation among the k best moves to a pool of the k best finished drafts.
Drafts are ranked by mean log score per token (the reference ranks by the equivalent perplexity).
Generation ends after ``max_new_tokens`` steps, or once the pool is full and no alive draft ranks above
its worst (Hugging Face beam search's rule; the reference always runs to the length limit); alive and
finished drafts are then ranked together and the best k returned.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np

from edgegen.errors import EdgegenError
from edgegen.sampling import SamplingConfig
from edgegen.strategies.base import DecodeRequest, RankedDraft, Strategy, prefill, step_embeddings

# The paper's n-gram weight, used when a store is given. Without one the default is the LM alone: the
# default store is counted from the Python standard library, and with it any alpha > 0 made drafts worse
# under the target (fp32 perplexity of the best of 3 drafts, 2 code + 2 chat prompts: 1.76 at alpha 0,
# 4.54 at 0.1, 5.90 at 0.54; docs/superposed.md).
PAPER_ALPHA = 0.54
DEFAULT_LM_TEMPERATURE = 0.06  # the paper's temperature of the shared LM distribution
NO_NGRAM_PENALTY = 200.0  # the reference's log-score penalty for a draft whose candidates the n-gram model all rejects
HISTORY = 5  # tokens of context an n-gram lookup sees (orders 2..6)


class NgramScorer(Protocol):
    """What superposed decoding needs from an n-gram store (edgegen.ngram.NgramStore)."""

    def probabilities(self, histories: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Interpolated n-gram probability of each candidate (k, c) int64 after each history (k, L) int64."""
        ...


def candidates(logits: np.ndarray, c: int, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """The top ``c`` tokens of softmax(logits / temperature), best first, and their renormalised log p.

    Renormalising over the kept tokens cancels the full softmax's normaliser: only c logits are needed.
    """
    top = np.argpartition(logits, -c)[-c:]
    top = top[np.argsort(-logits[top], kind="stable")]  # (c,)
    scaled = logits[top].astype(np.float64) / temperature
    log_p = scaled - scaled.max()
    return top, log_p - np.log(np.exp(log_p).sum())


def interpolate(log_p_lm: np.ndarray, p_ngram: np.ndarray | None, alpha: float) -> np.ndarray:
    """Per-draft log scores (k, c) of the candidates: log p_LM (c,) and p_ngram (k, c) mixed by alpha."""
    if p_ngram is None:
        return log_p_lm[None, :]
    with np.errstate(divide="ignore"):
        scores = (1.0 - alpha) * log_p_lm + alpha * np.log(p_ngram.astype(np.float64))  # -inf: unseen n-gram
    rejected = ~np.isfinite(scores).any(axis=1)
    scores[rejected] = (1.0 - alpha) * log_p_lm - NO_NGRAM_PENALTY
    return scores


def superposition(scores: np.ndarray) -> np.ndarray:
    """Weights of the alive drafts' last tokens in the next input: softmax of their scores (k,) float32."""
    w = np.exp(scores - scores.max())
    return (w / w.sum()).astype(np.float32)


class Superposed(Strategy):
    """Superposed decoding: ``num_drafts`` ranked drafts from one autoregressive pass.

    alpha: weight of the n-gram model in each token's score; default: the paper's 0.54 when ``ngram``
    is given, else 0 (the LM alone, no store needed). ngram: an n-gram store (an object with
    ``probabilities``) or its file; None with alpha > 0: the model's default store
    (edgegen.artifacts.default_store, counted from the Python standard library on first use).
    lm_temperature: temperature of the shared LM distribution (the reference's temp 0.06).
    num_candidates: tokens of that distribution each draft may continue with (default 3 x num_drafts).
    """

    name: ClassVar[str] = "superposed"
    multi_draft: ClassVar[bool] = True
    needs_embeddings: ClassVar[bool] = True

    def __init__(self, num_drafts: int = 3, alpha: float | None = None, ngram: NgramScorer | str | Path | None = None,
                 lm_temperature: float = DEFAULT_LM_TEMPERATURE, num_candidates: int | None = None) -> None:
        if num_drafts < 1:
            raise ValueError(f"num_drafts must be >= 1, got {num_drafts}")
        if alpha is None:
            alpha = PAPER_ALPHA if ngram is not None else 0.0
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if not 0 < lm_temperature < math.inf:  # inf flattens p_LM to uniform: drafts would ignore the model
            raise ValueError(f"lm_temperature must be a finite number > 0, got {lm_temperature}")
        self.num_drafts, self.alpha, self.lm_temperature = num_drafts, alpha, lm_temperature
        self.num_candidates = 3 * num_drafts if num_candidates is None else num_candidates
        if self.num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
        if isinstance(ngram, str | Path) and not Path(ngram).is_file():
            raise EdgegenError(f"n-gram store not found: {ngram}")
        self.store: NgramScorer | None = None
        if alpha > 0 and ngram is not None:
            self.store = _open_store(Path(ngram)) if isinstance(ngram, str | Path) else ngram
        self.drafts: list[RankedDraft] = []

    def decode(self, request: DecodeRequest) -> Iterator[list[int]]:
        _check_deterministic(request.sampler.config)
        store = self._resolve_store(request)
        _check_vocabulary(store, request)
        target, counters = request.target, request.counters
        k, n0 = self.num_drafts, len(request.prompt_ids)
        eos = np.fromiter(request.eos_token_ids, np.int64)
        seqs = np.empty((k, n0 + request.max_new_tokens), np.int64)  # alive drafts after the prompt
        seqs[:, :n0] = request.prompt_ids
        scores = np.zeros(1)  # cumulative log scores of the alive drafts; one (the prompt) before step 0
        finished: list[RankedDraft] = []  # the k best drafts that ended in EOS, score = mean per token
        logits = prefill(request)
        for t in range(request.max_new_tokens):
            top, log_p_lm = candidates(logits, min(self.num_candidates, logits.shape[-1]), self.lm_temperature)
            p_ngram = None
            if store is not None:
                start = time.perf_counter()
                history = seqs[: len(scores), max(0, n0 + t - HISTORY) : n0 + t]  # (alive, <=5)
                p_ngram = store.probabilities(history, np.broadcast_to(top, (len(scores), top.size)).copy())
                counters.extra["ngram_s"] = counters.extra.get("ngram_s", 0.0) + time.perf_counter() - start
            total = scores[:, None] + interpolate(log_p_lm, p_ngram, self.alpha)  # (alive, c)
            flat = total.ravel()
            order = [i for i in np.argsort(-flat, kind="stable")[: 2 * k] if np.isfinite(flat[i])]
            parent, token = np.divmod(np.asarray(order, np.int64), top.size)
            token, value = top[token], flat[order]
            ends = np.isin(token, eos)
            admit = ends & (np.arange(ends.size) < k)  # an EOS ending counts only among the k best (as HF)
            for p, tok, v in zip(parent[admit], token[admit], value[admit], strict=True):
                finished.append(RankedDraft([*seqs[p, n0 : n0 + t].tolist(), int(tok)], float(v) / (t + 1)))
            finished = sorted(finished, key=lambda d: -d.score)[:k]
            parent, token, scores = parent[~ends][:k], token[~ends][:k], value[~ends][:k]
            seqs[: len(parent)] = seqs[parent]  # fancy indexing copies before the write
            seqs[: len(parent), n0 + t] = token
            yield []  # one position decided: nothing final until all drafts are ranked
            settled = len(finished) == k and scores.max(initial=-np.inf) / (t + 1) <= finished[-1].score
            if settled or not len(parent) or t + 1 == request.max_new_tokens:
                break
            x = superposition(scores) @ target.embed(token)  # (hidden,)
            logits = step_embeddings(request, x[None, :])[0][-1]
        alive = [RankedDraft(seqs[i, n0 : n0 + t + 1].tolist(), float(s) / (t + 1)) for i, s in enumerate(scores)]
        self.drafts = sorted(alive + finished, key=lambda d: -d.score)[:k]
        yield list(self.drafts[0].tokens)

    def _resolve_store(self, request: DecodeRequest) -> NgramScorer | None:
        if self.alpha == 0 or self.store is not None:
            return self.store
        if request.model_folder is None:
            raise EdgegenError("strategy 'superposed' with alpha > 0 needs an n-gram store (ngram=PATH), "
                               "or alpha=0 for the LM alone")
        from edgegen.artifacts import default_store

        self.store = _open_store(default_store(request.model_folder))
        return self.store


def _check_vocabulary(store: NgramScorer | None, request: DecodeRequest) -> None:
    """A store counted with another tokenizer would score unrelated ids: refuse it when the sizes differ."""
    have = getattr(store, "vocab_size", None)
    manifest = getattr(request.target, "manifest", None)
    if have is not None and manifest is not None and have != manifest.vocab_size:
        raise EdgegenError(f"n-gram store {getattr(store, 'path', '')} was built for a vocabulary of {have} tokens; "
                           f"the model {manifest.name} has {manifest.vocab_size}")


def _open_store(path: Path) -> NgramScorer:
    if not path.is_file():
        raise EdgegenError(f"n-gram store not found: {path}")
    from edgegen.ngram import NgramStore

    return NgramStore.open(path)


def _check_deterministic(config: SamplingConfig) -> None:
    if not config.greedy or config.top_k or config.top_p < 1.0 or config.repetition_penalty != 1.0:
        raise EdgegenError("strategy 'superposed' is deterministic: temperature, top_k, top_p and "
                           "repetition_penalty do not apply (its LM temperature is the lm_temperature option)")
