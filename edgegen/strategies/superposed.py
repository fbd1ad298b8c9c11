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
- "lanes": each draft continues itself (no draft replaces another); a draft still identical to a
  better-ranked one branches off where a token the other did not take is within ``branch`` nats of its
  best, and at each step a draft pays ``diversity_penalty`` nats (of the model's own distribution) for a
  token a better-ranked draft took at that step (Vijayakumar et al.'s Hamming diversity, one draft per
  group).
- "sample": lanes whose tokens, except the best-ranked draft's, are drawn (Gumbel-max over the c
  candidates, ``sample_temperature``, ``seed``) instead of taken best first.
- "distance": the beam bookkeeping, but a continuation joins the kept drafts only if it differs from
  each of them in at least ``min_distance`` generated positions.

An EOS continuation among the k best moves to a pool of finished drafts. Generation ends after
``max_new_tokens`` steps, or once the pool is full and no alive draft ranks above its worst (Hugging
Face beam search's rule). With ``rescore`` (the default) every draft is then re-scored by the model
itself, so a draft's ``score`` is its mean log-probability per token under the model at temperature 1
(<= 0; exp(-score) is its perplexity) and the drafts are ranked by it. The pass already gives the exact
log-probabilities of the tokens a draft chose while the cache held exactly its tokens (superposition
weights under ``min_weight`` are dropped, so the input is usually the leading draft's own token); only
the rest is forwarded, one forward per draft at most. Without it, drafts are ranked by their mean log
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
from edgegen.runtimes.base import common_prefix_length
from edgegen.sampling import SamplingConfig
from edgegen.strategies.base import DecodeRequest, RankedDraft, Strategy, prefill, step, step_embeddings
from edgegen.strategies.drafters import PromptLookupDrafter

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
# Superposition weights below this are dropped: the input is then exactly the leading draft's token (its logits
# are the model's own, and rescoring skips them); such a draft adds under 1/1000 of an embedding.
DEFAULT_MIN_WEIGHT = 1e-3
# nats: a draft branches off its twin where a token the twin did not take is at least half as likely as the
# best one (docs/superposed.md has the sweep; inf: every draft branches at the first token)
DEFAULT_BRANCH = math.log(2)
# How a draft goes on after its branch token (rescore=True): "pass": the tokens the pass chose for it from the
# leading draft's distribution; "own": greedy from its own distribution, decoded by the model (a few lookup-proposed
# tokens verified per forward): better drafts, but ~one generation per draft (docs/superposed.md, third round).
CONTINUATIONS = ("pass", "own")
DEFAULT_CONTINUATION = "pass"
LOOKAHEAD = 4  # proposed tokens verified per forward while a draft continues from its own distribution


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


def superposition(scores: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """Weights of the alive drafts' last tokens in the next input: softmax of their scores (k,) float32.

    Weights below ``floor`` become 0 (the rest renormalised; never the best draft's): drafts the input no
    longer carries."""
    w = np.exp(scores - scores.max())
    w /= w.sum()
    if floor > 0:
        w[(w < floor) & (w < w.max())] = 0.0
        w /= w.sum()
    return w.astype(np.float32)


def logsumexp(logits: np.ndarray) -> np.ndarray:
    """log sum exp over the last axis (the log-softmax normaliser of each row, once per row), as float64.

    Terms and their pairwise sum in the logits' float32 (each term <= 1: no overflow, ~1e-7 relative error)."""
    top = logits.max(axis=-1, keepdims=True)
    return top[..., 0].astype(np.float64) + np.log(np.exp(logits - top).sum(axis=-1).astype(np.float64))


# ---- selections: which continuations the drafts keep. Each takes the drafts' cumulative scores (alive,)
# and their candidates' log scores (alive, c) and returns (parent, candidate index) pairs, best first;
# up to 2k for the beam rules (EOS endings among them go to the pool), one per draft for the lanes.


class Selection(Protocol):
    def __call__(self, scores: np.ndarray, log_s: np.ndarray, k: int, history: np.ndarray,
                 apart: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """history: the alive drafts' generated tokens (alive, t); apart: candidates (c,) that identical drafts
        may not both take (the lanes rules)."""
        ...


def beam(scores: np.ndarray, log_s: np.ndarray, k: int, history: np.ndarray,
         apart: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The paper's rule: the 2k best continuations of any draft (finite, stable order)."""
    flat = (scores[:, None] + log_s).ravel()
    order = [i for i in np.argsort(-flat, kind="stable")[: 2 * k] if np.isfinite(flat[i])]
    return np.divmod(np.asarray(order, np.int64), log_s.shape[1])


def distinct(min_distance: int) -> Selection:
    """Beam bookkeeping that keeps only continuations at least ``min_distance`` generated positions (Hamming)
    from every continuation already kept (all of them when fewer positions exist)."""

    def select(scores: np.ndarray, log_s: np.ndarray, k: int, history: np.ndarray,
               apart: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
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


def lanes(penalty: float, branch: float = math.inf, pick: Callable[[np.ndarray], int] = np.argmax) -> Selection:
    """Each draft continues itself, best-ranked first; a token already taken at this step costs ``penalty``
    (log-score units) per taking draft. A draft still identical to a better-ranked one (a twin: all k are
    twins of the prompt at the first step) branches off with the best token its twins did not take, if that
    token is within ``branch`` of its best one (inf: at once, so the k drafts start with k distinct tokens);
    otherwise it follows them for this step. A twin never shares an ``apart`` candidate (EOS; every candidate
    at the last step), so the drafts end distinct. The best-ranked draft takes its best token (with k = 1
    this is greedy decoding); ``pick`` chooses the other drafts' candidates (argmax, or a sampler)."""

    def select(scores: np.ndarray, log_s: np.ndarray, k: int, history: np.ndarray,
               apart: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        parents = np.zeros(min(k, log_s.shape[1]), np.int64) if history.shape[1] == 0 else np.arange(len(scores))
        taken = np.zeros(log_s.shape[1])
        kept: list[int] = []
        chosen: list[int] = []
        for rank, p in enumerate(parents):
            row = log_s[p]
            twins = [j for q, j in zip(kept, chosen, strict=True) if q == p or np.array_equal(history[q], history[p])]
            if rank == 0:
                j = int(np.argmax(row))
            elif twins:
                apart_row = np.where(np.isin(np.arange(row.size), twins), -np.inf, row)
                j = pick(apart_row)
                best = int(np.argmax(row))
                keep_up = best in twins and not (apart is not None and apart[best])
                if not np.isfinite(apart_row[j]) or (keep_up and apart_row[j] < row[best] - branch):
                    j = best  # no alternative close enough yet: follow the twins one more step
            else:
                j = pick(row - penalty * taken)
            if not np.isfinite(row[j]) or (twins and j in twins and apart is not None and apart[j]):
                continue
            taken[j] += 1
            kept.append(int(p))
            chosen.append(j)
        parents = np.asarray(kept, np.int64)
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
    min_weight: superposition weights below it are dropped (0: every alive draft is heard).
    branch: ("lanes", "sample") a draft identical to a better-ranked one branches off at the first step where a
    token the other did not take is within ``branch`` nats of its best (inf: all k branch at the first token).
    continuation: "pass": each draft keeps the tokens the pass chose for it; "own" (rescore, "lanes" and "sample",
    alpha 0): after the tokens that set it apart, each draft goes on greedily from its own distribution, decoded
    by the model (``lookahead`` tokens proposed by prompt lookup over the prompt and the drafts are verified per
    forward).
    """

    name: ClassVar[str] = "superposed"
    multi_draft: ClassVar[bool] = True
    needs_embeddings = True  # what the class may need (the CLI loads for it); one draft feeds only ids

    def __init__(self, num_drafts: int = 3, alpha: float | None = None, ngram: NgramScorer | str | Path | None = None,
                 lm_temperature: float = DEFAULT_LM_TEMPERATURE, num_candidates: int | None = None,
                 diversity: str = DEFAULT_DIVERSITY, diversity_penalty: float = DEFAULT_PENALTY,
                 sample_temperature: float = DEFAULT_SAMPLE_TEMPERATURE, seed: int = 0,
                 min_distance: int = DEFAULT_MIN_DISTANCE, adaptive: bool = False, rescore: bool = True,
                 min_weight: float = DEFAULT_MIN_WEIGHT, branch: float = DEFAULT_BRANCH,
                 continuation: str = DEFAULT_CONTINUATION, lookahead: int = LOOKAHEAD) -> None:
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
        if not branch >= 0:
            raise ValueError(f"branch must be a number >= 0 (inf: branch at the first token), got {branch}")
        if not 0 <= min_weight < 1:
            raise ValueError(f"min_weight must be in [0, 1), got {min_weight}")
        if continuation not in CONTINUATIONS:
            raise ValueError(f"continuation must be one of {', '.join(CONTINUATIONS)}, got {continuation!r}")
        if lookahead < 0:
            raise ValueError(f"lookahead must be >= 0, got {lookahead}")
        self.continuation, self.lookahead = continuation, lookahead
        self.needs_embeddings = num_drafts > 1
        self.num_drafts, self.alpha, self.lm_temperature = num_drafts, alpha, lm_temperature
        self.num_candidates = 3 * num_drafts if num_candidates is None else num_candidates
        if self.num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
        if isinstance(ngram, str | Path) and not Path(ngram).is_file():
            raise EdgegenError(f"n-gram store not found: {ngram}")
        self.diversity, self.adaptive, self.rescore, self.min_weight = diversity, adaptive, rescore, min_weight
        # lanes and sample take penalties and temperatures in nats of the model's own distribution;
        # log s is at lm_temperature, so they are rescaled by 1 / lm_temperature (and by lm_temperature).
        selections: dict[str, Callable[[], Selection]] = {
            "none": lambda: beam,
            "distance": lambda: distinct(min_distance),
            "lanes": lambda: lanes(diversity_penalty / lm_temperature, branch / lm_temperature),
            "sample": lambda: lanes(diversity_penalty / lm_temperature, branch / lm_temperature,
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
        finished: list[tuple[RankedDraft, np.ndarray]] = []  # the k best that ended in EOS (score: mean per token)
        exact = PassLogProbs(k, request.max_new_tokens, active=self.rescore)
        logits = prefill(request)
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
            apart = np.isin(top, eos) | (t + 1 == request.max_new_tokens)  # identical drafts must split here
            parent, j = select(scores, log_s, k, seqs[: len(scores), n0 : n0 + t], apart)
            token, value = top[j], scores[parent] + log_s[parent, j]
            known = exact.extend(logits, parent, token)
            ends = np.isin(token, eos)
            admit = ends & (np.arange(ends.size) < k)  # an EOS ending counts only among the k best (as HF)
            for i in np.flatnonzero(admit):
                ended = RankedDraft([*seqs[parent[i], n0 : n0 + t].tolist(), int(token[i])], float(value[i]) / (t + 1))
                finished.append((ended, known[i]))
            finished = sorted(finished, key=lambda f: -f[0].score)[:k]
            kept = np.flatnonzero(~ends)[:k]
            exact.keep(parent, kept, known)
            parent, token, scores = parent[kept], token[kept], value[kept]
            seqs[: len(parent)] = seqs[parent]  # fancy indexing copies before the write
            seqs[: len(parent), n0 + t] = token
            if observe is not None:
                for i in range(len(parent)):
                    observe([int(token[i])], context=seqs[i, max(0, n0 + t - HISTORY) : n0 + t].tolist())
            yield []  # one position decided: nothing final until all drafts are ranked
            settled = len(finished) == k and scores.max(initial=-np.inf) / (t + 1) <= finished[-1][0].score
            if settled or not len(parent) or t + 1 == request.max_new_tokens:
                break
            w = superposition(scores, self.min_weight)
            heard = np.unique(token[w > 0])
            exact.fed(t, token, int(heard[0]) if len(heard) == 1 else None)
            if len(heard) == 1:  # one token carries all the weight: fed as its id, what AR feeds (the same graph)
                logits = step(request, [int(heard[0])])[0][-1]
            else:
                logits = step_embeddings(request, (w @ target.embed(token))[None, :])[0][-1]
        alive = [(RankedDraft(seqs[i, n0 : n0 + t + 1].tolist(), float(s) / (t + 1)), exact.known(i))
                 for i, s in enumerate(scores)]
        ranked = sorted(alive + finished, key=lambda f: -f[0].score)[:k]
        drafts = [d for d, _ in ranked]
        if self.rescore:
            start = time.perf_counter()
            # the beam rules' drafts are what their bookkeeping kept, and with an n-gram model what the store
            # steered: those keep the pass's tokens
            own = self.continuation == "own" and self.alpha == 0 and self.diversity not in BEAMS
            scored = rescore(request, [d.tokens for d in drafts], [e for _, e in ranked], exact.held, t + 1,
                             self.lookahead if own else None)
            drafts = sorted((RankedDraft(tokens, score) for tokens, score in scored), key=lambda d: -d.score)
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


class PassLogProbs:
    """The model's own log-probabilities that the superposed pass computed anyway, so rescoring skips them.

    While every input so far was exactly one token's embedding (the other drafts' weights under
    ``min_weight``), the cache holds exactly those tokens (``held``, after the prompt) and a step's logits
    are the model's own distribution for each draft whose tokens are ``held`` (``on_held``). Such a draft's
    chosen token gets its exact log-probability (one logsumexp per step, one gathered logit per draft);
    a draft keeps the exact log-probabilities of its leading tokens (``known``).
    """

    def __init__(self, k: int, max_new_tokens: int, active: bool = True) -> None:
        self.held: list[int] = []  # generated tokens the cache holds exactly, from the first position on
        self.on_held = np.full(1, active)  # per alive draft: its tokens are ``held`` (before step 0: the prompt)
        self._logp = np.zeros((k, max_new_tokens))  # per alive draft: exact log-probs of its leading tokens
        self._count = np.zeros(1, np.int64)  # how many of them

    def extend(self, logits: np.ndarray, parent: np.ndarray, token: np.ndarray) -> list[np.ndarray]:
        """The exact leading log-probs of each continuation (parent draft, token) chosen at this step."""
        exact = self.on_held[parent]
        logp = logits[token] - logsumexp(logits) if exact.any() else None
        return [np.append(self._logp[p, : self._count[p]], logp[i]) if exact[i] and logp is not None
                else self._logp[p, : self._count[p]].copy() for i, p in enumerate(parent)]

    def keep(self, parent: np.ndarray, kept: np.ndarray, known: list[np.ndarray]) -> None:
        """The continuations ``kept`` (indices into this step's) become the alive drafts, in that order."""
        self.on_held = self.on_held[parent[kept]]
        self._count = np.array([len(known[i]) for i in kept], np.int64)
        for row, i in enumerate(kept):
            self._logp[row, : len(known[i])] = known[i]

    def fed(self, t: int, token: np.ndarray, heard: int | None) -> None:
        """The input for position ``t`` after the prompt was token ``heard``'s embedding (None: a mixture)."""
        if heard is not None and len(self.held) == t:
            self.held.append(heard)
            self.on_held &= token == heard
        else:  # the cache now holds a mixture: no later logits are any draft's own
            self.on_held[:] = False

    def known(self, i: int) -> np.ndarray:
        return self._logp[i, : self._count[i]].copy()


def rescore(request: DecodeRequest, drafts: list[list[int]], known: list[np.ndarray], held: list[int],
            length: int = 0, own: int | None = None) -> list[tuple[list[int], float]]:
    """Each draft's tokens and exact mean log-probability per token under the target (teacher forcing after the
    prompt).

    ``known[i]``: the exact log-probs of draft i's leading tokens (from the pass); ``held``: the generated tokens
    the cache holds exactly after the prompt. Only the rest is forwarded, from the first position whose log-prob
    is missing: a draft continues from the cache where it shares ``held`` (what the last forward left there), and
    takes the log-probs of a prefix it shares with a draft already scored from that draft. Drafts go in
    decreasing order of known prefix, so a forward rarely overwrites a position a later draft needs.

    ``own`` (a lookahead, None: keep every draft's tokens): a draft keeps its tokens up to the first one that sets
    it apart from every other draft (and those already scored), then goes on greedily from its own distribution
    up to ``length`` tokens or EOS: each forward also verifies ``own`` tokens proposed by prompt lookup over the
    prompt and the drafts, keeping those equal to the model's own greedy choice. The drafts stay distinct.
    """
    n0, prompt = len(request.prompt_ids), list(request.prompt_ids)
    held, current = list(held), [list(d) for d in drafts]
    done: list[tuple[list[int], list[float]]] = []  # drafts scored so far: tokens and exact log-probs
    out: dict[int, tuple[list[int], float]] = {}
    for i in sorted(range(len(drafts)), key=lambda i: (-len(known[i]), drafts[i])):
        d, logp = list(drafts[i]), list(known[i])
        proposer = None
        if own is not None and len(logp) < len(d):
            apart = max([len(logp)] + [common_prefix_length(d, o) + 1 for j, o in enumerate(current) if j != i])
            d, length_i = d[:apart], length
            proposer = PromptLookupDrafter()
            context = prompt + [t for j, o in enumerate(current) if j != i for t in o]  # what lookup copies from
        else:
            length_i = len(d)
        for tokens, scores in done:  # rows of a shared prefix, already forwarded
            while len(logp) < min(common_prefix_length(d, tokens), len(scores)):
                logp.append(scores[len(logp)])
        while True:
            grow = proposer is not None and len(d) < length_i and d[-1] not in request.eos_token_ids
            if len(logp) == len(d) and not grow:
                break
            start = min(len(logp), common_prefix_length(d, held) + 1)  # the cache must hold d[:start - 1]
            proposal = []
            if grow and own:
                proposal = proposer.propose(context + d, min(own, length_i - len(d) - 1), request.sampler).tokens
            ext = d + proposal
            feed = ([prompt[-1]] + ext)[start : len(ext) + 1 - (not grow)]  # from the token before ext[start]
            request.target.trim(n0 + start - 1)
            logits = step(request, feed)[0]
            lse = logsumexp(logits)
            held = ext[: start - 1 + len(feed)]
            base = len(d)  # tokens fixed before this forward; the rows after them choose
            for r in range(len(logits)):
                at = start + r  # the token index row r predicts
                if at < len(logp):
                    continue
                if at < base:
                    logp.append(float(logits[r, d[at]] - lse[r]))
                    continue
                token = int(np.argmax(logits[r]))
                d.append(token)
                logp.append(float(logits[r, token] - lse[r]))
                if len(d) >= length_i or token in request.eos_token_ids or at >= len(ext) or ext[at] != token:
                    break
        current[i] = d
        done.append((d, logp))
        out[i] = (d, float(np.mean(logp)))
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
