"""Superposed Decoding (Shen et al., NeurIPS 2024): k drafts for the cost of one generation.

One KV cache serves all k drafts. After the prompt, each step feeds ONE position whose input is the
superposition sum_i w_i E[last token of draft i], w = softmax(draft scores). The shared next-token
distribution p_LM (softmax at ``lm_temperature``) is cut to its top c tokens and renormalised; each
draft scores those tokens with the n-gram model on its own context:

    log s = (1 - alpha) log p_LM + alpha log p_ngram

Tokens the n-gram model gives probability 0 are dropped for that draft; a draft left with none keeps
(1 - alpha) log p_LM - 200. How the k drafts continue is the ``diversity`` rule:

- "none": the paper's beam bookkeeping over the k x c continuations (top 2k; the k best alive stay).
  The best draft's continuations take over all k slots, so drafts end up near-copies.
- "lanes": each draft continues itself (no draft replaces another); the k drafts start with k
  distinct tokens and at each step a draft pays ``diversity_penalty`` nats (of the model's own
  distribution) for a token a better-ranked draft took at that step (Vijayakumar et al.'s Hamming
  diversity, one draft per group).
- "sample": lanes whose tokens, except the best-ranked draft's, are drawn (Gumbel-max over the c
  candidates, ``sample_temperature``, ``seed``) instead of taken best first.
- "distance": the beam bookkeeping, but a continuation joins the kept drafts only if it differs from
  each of them in at least ``min_distance`` generated positions.

An EOS continuation among the k best moves to a pool of finished drafts. Generation ends after
``max_new_tokens`` steps, or once the pool is full and no alive draft ranks above its worst (Hugging
Face beam search's rule). With ``rescore`` (the default) every draft is then re-scored by the model
itself: one forward over each draft (drafts sharing a prefix share its forward), so a draft's
``score`` is its mean log-probability per token under the model at temperature 1 (<= 0; exp(-score)
is its perplexity) and the drafts are ranked by it. Without it, drafts are ranked by their mean log
score from the superposed pass (``log s`` at ``lm_temperature``: not comparable across prompts).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np

from edgegen.errors import EdgegenError
from edgegen.sampling import SamplingConfig
from edgegen.strategies.base import DecodeRequest, RankedDraft, Strategy, prefill, step, step_embeddings

# The paper's n-gram weight, used when a store is given. Without one the default is the LM alone: the
# default store is counted from the Python standard library, and with it any alpha > 0 made drafts worse
# under the target (docs/superposed.md).
PAPER_ALPHA = 0.54
DEFAULT_LM_TEMPERATURE = 0.06  # the paper's temperature of the shared LM distribution
NO_NGRAM_PENALTY = 200.0  # the reference's log-score penalty for a draft whose candidates the n-gram model all rejects
HISTORY = 5  # tokens of context an n-gram lookup sees (orders 2..6)
DEFAULT_DIVERSITY = "lanes"
DEFAULT_PENALTY = 1.0  # nats; docs/superposed.md has the sweep
DEFAULT_SAMPLE_TEMPERATURE = 0.6  # the nucleus baseline's temperature
DEFAULT_MIN_DISTANCE = 4


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


def interpolate(log_p_lm: np.ndarray, p_ngram: np.ndarray | None, alpha: float, drop: bool = True) -> np.ndarray:
    """Per-draft log scores (k, c) of the candidates: log p_LM (c,) and p_ngram (k, c) mixed by alpha.

    ``drop``: an unseen n-gram is -inf (dropped) unless the draft has no seen candidate; without it every
    unseen candidate keeps the penalised LM score (the lanes rules, where no draft can take another's place)."""
    if p_ngram is None:
        return log_p_lm[None, :]
    with np.errstate(divide="ignore"):
        scores = (1.0 - alpha) * log_p_lm + alpha * np.log(p_ngram.astype(np.float64))  # -inf: unseen n-gram
    penalised = np.broadcast_to((1.0 - alpha) * log_p_lm - NO_NGRAM_PENALTY, scores.shape)
    rejected = ~np.isfinite(scores) & ((not drop) | ~np.isfinite(scores).any(axis=1, keepdims=True))
    scores[rejected] = penalised[rejected]
    return scores


def superposition(scores: np.ndarray) -> np.ndarray:
    """Weights of the alive drafts' last tokens in the next input: softmax of their scores (k,) float32."""
    w = np.exp(scores - scores.max())
    return (w / w.sum()).astype(np.float32)


# ---- selections: which continuations the drafts keep. Each takes the drafts' cumulative scores (alive,)
# and their candidates' log scores (alive, c) and returns (parent, candidate index) pairs, best first;
# up to 2k for the beam rules (EOS endings among them go to the pool), one per draft for the lanes.


class Selection(Protocol):
    def __call__(self, scores: np.ndarray, log_s: np.ndarray, k: int,
                 history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """history: the alive drafts' generated tokens (alive, t)."""
        ...


def beam(scores: np.ndarray, log_s: np.ndarray, k: int, history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The paper's rule: the 2k best continuations of any draft (finite, stable order)."""
    flat = (scores[:, None] + log_s).ravel()
    order = [i for i in np.argsort(-flat, kind="stable")[: 2 * k] if np.isfinite(flat[i])]
    return np.divmod(np.asarray(order, np.int64), log_s.shape[1])


def distinct(min_distance: int) -> Selection:
    """Beam bookkeeping that keeps only continuations at least ``min_distance`` generated positions (Hamming)
    from every continuation already kept (all of them when fewer positions exist)."""

    def select(scores: np.ndarray, log_s: np.ndarray, k: int, history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flat = (scores[:, None] + log_s).ravel()
        c, t = log_s.shape[1], history.shape[1]
        apart = (history[:, None, :] != history[None, :, :]).sum(axis=2)  # (alive, alive) parents' distances
        need = min(min_distance, t + 1)
        kept: list[int] = []
        for i in np.argsort(-flat, kind="stable"):
            if not np.isfinite(flat[i]) or len(kept) == 2 * k:
                break
            p, j = divmod(int(i), c)
            if all(apart[p, q // c] + (j != q % c) >= need for q in kept):
                kept.append(int(i))
        return np.divmod(np.asarray(kept, np.int64), c)

    return select


def lanes(penalty: float, pick: Callable[[np.ndarray], int] = np.argmax) -> Selection:
    """Each draft continues itself, best-ranked first; a token already taken at this step costs ``penalty``
    (log-score units) per taking draft. The first step splits the prompt into k drafts with k distinct tokens.
    The best-ranked draft takes its best token (with k = 1 this is greedy decoding); ``pick`` chooses the
    other drafts' candidates from their penalised scores (argmax, or a sampler)."""

    def select(scores: np.ndarray, log_s: np.ndarray, k: int, history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        first = history.shape[1] == 0
        parents = np.zeros(min(k, log_s.shape[1]), np.int64) if first else np.arange(len(scores))
        taken = np.zeros(log_s.shape[1])
        chosen = []
        for rank, p in enumerate(parents):
            cost = np.where(taken > 0, np.inf, 0.0) if first else penalty * taken
            j = int(np.argmax(log_s[p] - cost)) if rank == 0 else pick(log_s[p] - cost)
            if not np.isfinite(log_s[p, j] - cost[j]):
                continue
            taken[j] += 1
            chosen.append(j)
        parents = parents[: len(chosen)]
        rank = np.argsort(-(scores[parents] + log_s[parents, chosen]), kind="stable")
        return parents[rank], np.asarray(chosen, np.int64)[rank]

    return select


def gumbel_pick(rng: np.random.Generator, scale: float) -> Callable[[np.ndarray], int]:
    """A sampler for ``lanes``: argmax of log-scores x ``scale`` plus Gumbel noise (draws from their softmax)."""

    def pick(row: np.ndarray) -> int:
        return int(np.argmax(row * scale + rng.gumbel(size=row.shape)))

    return pick


DIVERSITY = ("lanes", "sample", "distance", "none")
BEAMS = ("distance", "none")  # rules where a draft may lose its slot to another's continuation


class Superposed(Strategy):
    """Superposed decoding: ``num_drafts`` ranked drafts from one autoregressive pass.

    alpha: weight of the n-gram model in each token's score; default: the paper's 0.54 when ``ngram``
    is given (or ``adaptive``), else 0 (the LM alone, no store needed). ngram: an n-gram store (an
    object with ``probabilities``) or its file; None with alpha > 0: the model's default store
    (edgegen.artifacts.default_store, counted from the Python standard library on first use), unless
    ``adaptive``. adaptive: count the prompt and the drafts' own tokens as they are generated
    (edgegen.ngram.AdaptiveNgram), on top of ``ngram`` when given.
    lm_temperature: temperature of the shared LM distribution (the reference's temp 0.06).
    num_candidates: tokens of that distribution each draft may continue with (default 3 x num_drafts).
    diversity: how drafts are kept apart (module docstring): "lanes" (default), "sample", "distance",
    "none" (the paper's beam bookkeeping). diversity_penalty: nats a draft pays per better-ranked draft
    that took the same token at a step ("lanes", "sample"); sample_temperature and seed: "sample"'s
    draws; min_distance: "distance"'s minimum Hamming distance between drafts.
    rescore: score each draft by the model itself at the end (mean log-probability per token).
    """

    name: ClassVar[str] = "superposed"
    multi_draft: ClassVar[bool] = True
    needs_embeddings: ClassVar[bool] = True

    def __init__(self, num_drafts: int = 3, alpha: float | None = None, ngram: NgramScorer | str | Path | None = None,
                 lm_temperature: float = DEFAULT_LM_TEMPERATURE, num_candidates: int | None = None,
                 diversity: str = DEFAULT_DIVERSITY, diversity_penalty: float = DEFAULT_PENALTY,
                 sample_temperature: float = DEFAULT_SAMPLE_TEMPERATURE, seed: int = 0,
                 min_distance: int = DEFAULT_MIN_DISTANCE, adaptive: bool = False, rescore: bool = True) -> None:
        if num_drafts < 1:
            raise ValueError(f"num_drafts must be >= 1, got {num_drafts}")
        if alpha is None:
            alpha = PAPER_ALPHA if ngram is not None or adaptive else 0.0
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if not 0 < lm_temperature < math.inf:  # inf flattens p_LM to uniform: drafts would ignore the model
            raise ValueError(f"lm_temperature must be a finite number > 0, got {lm_temperature}")
        if diversity not in DIVERSITY:
            raise ValueError(f"diversity must be one of {', '.join(DIVERSITY)}, got {diversity!r}")
        if not 0 <= diversity_penalty < math.inf:
            raise ValueError(f"diversity_penalty must be a finite number >= 0, got {diversity_penalty}")
        if not 0 < sample_temperature < math.inf:
            raise ValueError(f"sample_temperature must be a finite number > 0, got {sample_temperature}")
        if min_distance < 1:
            raise ValueError(f"min_distance must be >= 1, got {min_distance}")
        self.num_drafts, self.alpha, self.lm_temperature = num_drafts, alpha, lm_temperature
        self.num_candidates = 3 * num_drafts if num_candidates is None else num_candidates
        if self.num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
        if isinstance(ngram, str | Path) and not Path(ngram).is_file():
            raise EdgegenError(f"n-gram store not found: {ngram}")
        self.diversity, self.adaptive, self.rescore = diversity, adaptive, rescore
        # lanes and sample take penalties and temperatures in nats of the model's own distribution;
        # log s is at lm_temperature, so they are rescaled by 1 / lm_temperature (and by lm_temperature).
        selections: dict[str, Callable[[], Selection]] = {
            "none": lambda: beam,
            "distance": lambda: distinct(min_distance),
            "lanes": lambda: lanes(diversity_penalty / lm_temperature),
            "sample": lambda: lanes(diversity_penalty / lm_temperature,
                                    gumbel_pick(np.random.default_rng(seed), lm_temperature / sample_temperature)),
        }
        self._select = selections[diversity]
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
        select = self._select()
        seqs = np.empty((k, n0 + request.max_new_tokens), np.int64)  # alive drafts after the prompt
        seqs[:, :n0] = request.prompt_ids
        scores = np.zeros(1)  # cumulative log scores of the alive drafts; one (the prompt) before step 0
        finished: list[RankedDraft] = []  # the k best drafts that ended in EOS, score = mean per token
        logits = first = prefill(request)
        observe = getattr(store, "observe", None) if self.adaptive else None
        if observe is not None:
            observe(request.prompt_ids)
        for t in range(request.max_new_tokens):
            top, log_p_lm = candidates(logits, min(self.num_candidates, logits.shape[-1]), self.lm_temperature)
            p_ngram = None
            if store is not None:
                start = time.perf_counter()
                history = seqs[: len(scores), max(0, n0 + t - HISTORY) : n0 + t]  # (alive, <=5)
                p_ngram = store.probabilities(history, np.broadcast_to(top, (len(scores), top.size)).copy())
                counters.extra["ngram_s"] = counters.extra.get("ngram_s", 0.0) + time.perf_counter() - start
            log_s = np.broadcast_to(interpolate(log_p_lm, p_ngram, self.alpha, drop=self.diversity in BEAMS),
                                    (len(scores), top.size))
            parent, j = select(scores, log_s, k, seqs[: len(scores), n0 : n0 + t])
            token, value = top[j], scores[parent] + log_s[parent, j]
            ends = np.isin(token, eos)
            admit = ends & (np.arange(ends.size) < k)  # an EOS ending counts only among the k best (as HF)
            for p, tok, v in zip(parent[admit], token[admit], value[admit], strict=True):
                finished.append(RankedDraft([*seqs[p, n0 : n0 + t].tolist(), int(tok)], float(v) / (t + 1)))
            finished = sorted(finished, key=lambda d: -d.score)[:k]
            parent, token, scores = parent[~ends][:k], token[~ends][:k], value[~ends][:k]
            seqs[: len(parent)] = seqs[parent]  # fancy indexing copies before the write
            seqs[: len(parent), n0 + t] = token
            if observe is not None:
                for i in range(len(parent)):
                    observe([int(token[i])], context=seqs[i, max(0, n0 + t - HISTORY) : n0 + t].tolist())
            yield []  # one position decided: nothing final until all drafts are ranked
            settled = len(finished) == k and scores.max(initial=-np.inf) / (t + 1) <= finished[-1].score
            if settled or not len(parent) or t + 1 == request.max_new_tokens:
                break
            x = superposition(scores) @ target.embed(token)  # (hidden,)
            logits = step_embeddings(request, x[None, :])[0][-1]
        alive = [RankedDraft(seqs[i, n0 : n0 + t + 1].tolist(), float(s) / (t + 1)) for i, s in enumerate(scores)]
        drafts = sorted(alive + finished, key=lambda d: -d.score)[:k]
        if self.rescore:
            start = time.perf_counter()
            exact = rescore(request, first, [d.tokens for d in drafts])
            drafts = sorted((RankedDraft(d.tokens, s) for d, s in zip(drafts, exact, strict=True)),
                            key=lambda d: -d.score)
            counters.extra["rescore_s"] = counters.extra.get("rescore_s", 0.0) + time.perf_counter() - start
        self.drafts = drafts
        yield list(self.drafts[0].tokens)

    def _resolve_store(self, request: DecodeRequest) -> NgramScorer | None:
        if self.alpha == 0:
            return self.store
        if self.adaptive:
            from edgegen.ngram import AdaptiveNgram, NgramStore

            if self.store is None or isinstance(self.store, NgramStore):
                return AdaptiveNgram(self.store)  # counts of this generation only, over the offline store
            return self.store
        if self.store is not None:
            return self.store
        if request.model_folder is None:
            raise EdgegenError("strategy 'superposed' with alpha > 0 needs an n-gram store (ngram=PATH), "
                               "adaptive=True, or alpha=0 for the LM alone")
        from edgegen.artifacts import default_store

        self.store = _open_store(default_store(request.model_folder))
        return self.store


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log softmax over the last axis, in float64."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def rescore(request: DecodeRequest, first: np.ndarray, drafts: list[list[int]]) -> list[float]:
    """Each draft's mean log-probability per token under the target (teacher forcing after the prompt).

    ``first`` is the prefill's last logits (the first token's distribution). The cache keeps the prompt;
    drafts are forwarded in sorted order so a draft reuses the cache and the rows of the prefix it
    shares with the previous one: drafts that share nothing cost one forward of their length each.
    """
    n0 = len(request.prompt_ids)
    rows = [log_softmax(first)]  # rows[j]: distribution of token j of the previous draft
    previous: list[int] = []
    out: dict[int, float] = {}
    for i in sorted(range(len(drafts)), key=lambda i: drafts[i]):
        d = drafts[i]
        shared = next((j for j, (a, b) in enumerate(zip(d, previous, strict=False)) if a != b),
                      min(len(d), len(previous)))
        valid = min(shared + 1, len(rows))  # rows that depend only on the common prefix
        request.target.trim(n0 + valid - 1)
        rows = rows[:valid]
        if len(d) > valid:
            rows += list(log_softmax(step(request, d[valid - 1 : -1])[0]))
        out[i] = float(np.mean([rows[j][tok] for j, tok in enumerate(d)]))
        previous = d
    return [out[i] for i in range(len(drafts))]


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
                           "repetition_penalty do not apply (its LM temperature is the lm_temperature option; "
                           "diversity='sample' draws with its own seed)")
