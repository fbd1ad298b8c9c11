"""Speculative verification in NumPy: which draft tokens the target accepts, and what comes next.

One rule serves greedy and sampling (Leviathan et al. 2023; Chen et al. 2023): accept draft token x
with probability min(1, p(x) / q(x)); at the first rejection draw from norm(max(0, p - q)); if every
draft token is accepted, draw a bonus token from p. p and q are the *fully processed* distributions
(sampling.distribution). Greedy configs make p one-hot at the argmax, and a deterministic drafter
(prompt lookup, greedy drafting) has one-hot q, so the rule becomes "accept while the draft equals
the target's argmax, then take the argmax": lossless and token-identical to AR greedy.

Under a constraint (a grammar) the Sampler masks every row by the constraint's state after the
tokens before it, so p is the constrained p' of AR, and each token that joins the sequence advances
the constraint: acceptance and the residual follow p', and the output is constrained AR's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from edgegen.sampling import Sampler, sample


def accept_or_resample(p: np.ndarray, q: np.ndarray | None, x: int, rng: np.random.Generator) -> int | None:
    """Accept draft token ``x`` (return None) or return the replacement token drawn from the residual.

    ``q`` None means the draft was deterministic (q is one-hot at x).
    """
    q_x = 1.0 if q is None else q[x]
    if p[x] >= q_x or rng.random() * q_x < p[x]:  # u < p(x)/q(x), without dividing by a zero q
        return None
    residual = p.copy()
    if q is None:
        residual[x] = 0.0
    else:
        np.subtract(residual, q, out=residual)
        np.maximum(residual, 0.0, out=residual)
    total = residual.sum()
    if total <= 0.0:  # p == q up to rounding: any draw from p is exact
        return sample(p, rng)
    return sample(residual / total, rng)


def verify(target_logits: np.ndarray, draft: Sequence[int], q: np.ndarray | None, history: list[int],
           sampler: Sampler) -> list[int]:
    """Tokens to append after one target pass over [last token] + draft.

    target_logits: (len(draft) + 1, vocab); row i is the target's next-token logits after
    history + draft[:i]. q: (len(draft), vocab) draft distributions, or None if deterministic.
    Returns the accepted draft prefix followed by one target token (the correction or the bonus).
    """
    if q is None and sampler.config.greedy and sampler.constraint is None:
        return _verify_greedy(target_logits, draft, history, sampler)
    context = list(history)
    for i, x in enumerate(draft):
        p = sampler.distribution(target_logits[i], context)  # under a constraint: p' at this row's state
        replacement = accept_or_resample(p, None if q is None else q[i], x, sampler.rng)
        if replacement is not None:
            sampler.advance([replacement])
            return [*draft[:i], replacement]
        sampler.advance([x])
        context.append(x)
    return [*draft, sampler.pick(target_logits[len(draft)], context)]


def verify_argmax(argmax: Sequence[int], draft: Sequence[int]) -> list[int]:
    """``verify`` for a deterministic draft when the pick is the argmax (Sampler.picks_argmax), from the target's
    best token per row alone (runtimes.base.forward_top: no logits row needs to leave the device).

    ``argmax``: at least len(draft) + 1 ids, row i's after history + draft[:i]. Accept while the draft is the
    argmax, then take the argmax: what the general rule gives with p and q one-hot.
    """
    return _accept_while_best(lambda i: int(argmax[i]), draft)


def within_row_noise(new: list[int], margins: np.ndarray, noise: float) -> list[int]:
    """``new`` cut before its first token that a row other than the call's first decided by less than its noise.

    ``new[i]`` was decided by row i of the verification call; ``margins[i]``: that row's best logit minus its
    second. A session whose rows after the first may move by up to ``noise`` per logit (Session.row_noise) can
    turn a near-tie there, so AR, which decides every token as a call's first row, might pick the other token.
    A margin above 2 * noise cannot turn. The cut leaves the token for the next call's first row, as AR computes it.
    """
    for i in range(1, len(new)):
        if margins[i] <= 2 * noise:
            return new[:i]
    return new


def _verify_greedy(target_logits: np.ndarray, draft: Sequence[int], history: list[int], sampler: Sampler) -> list[int]:
    """``verify`` for a deterministic draft under unconstrained greedy: accept while the draft is the argmax
    (after the repetition penalty, which reads each row's own context; rows past the first miss are not picked)."""
    if sampler.picks_argmax:
        return verify_argmax(np.argmax(target_logits, axis=-1).tolist(), draft)
    return _accept_while_best(lambda i: sampler.pick(target_logits[i], [*history, *draft[:i]]), draft)


def _accept_while_best(best: Callable[[int], int], draft: Sequence[int]) -> list[int]:
    """The draft's tokens while each is row i's ``best(i)``, then that row's best (correction or bonus)."""
    for i, x in enumerate(draft):
        pick = best(i)
        if pick != x:
            return [*draft[:i], pick]
    return [*draft, best(len(draft))]
