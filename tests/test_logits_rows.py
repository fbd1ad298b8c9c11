"""A greedy drafter with a reduced head picks from its own head row, never building a target-vocabulary row (262k
floats for Gemma 3): the same tokens as the spread-and-argmax it replaces, ties and NaN included."""

from __future__ import annotations

import numpy as np
import pytest
from fakes import ListSession

from edgegen.sampling import Sampler, SamplingConfig, distribution
from edgegen.strategies.drafters import ModelDrafter


class RowsSession(ListSession):
    """Logits over a small head: row i of ``table`` after i cached tokens (cycled)."""

    def __init__(self, table: np.ndarray) -> None:
        super().__init__(max_length=64)
        self.table = table

    def _row(self, cache: list) -> np.ndarray:
        return self.table[(len(cache) - 1) % len(self.table)]


def _spread_argmax(row: np.ndarray, head: np.ndarray, vocab: int) -> int:
    """What the drafter did before: the head row spread over the target vocabulary, a one-hot q, its argmax."""
    full = np.full(vocab, -np.inf, np.float32)
    full[head] = row
    return int(np.argmax(distribution(full, [], SamplingConfig())))


@pytest.mark.parametrize("seed", range(5))
def test_greedy_head_argmax_equals_the_spread_row(seed: int) -> None:
    rng = np.random.default_rng(seed)
    vocab, head = 50, rng.permutation(50)[:12]  # head order is not target-id order: ties must resolve by target id
    table = rng.integers(-2, 3, size=(6, len(head))).astype(np.float32)  # many exact ties
    table[3, 5] = np.nan  # a NaN row: the first NaN in target-id order, as np.argmax of the spread row
    drafter = ModelDrafter(RowsSession(table), head_vocab=head, target_vocab=vocab)
    drafter.begin([1, 2])
    draft = drafter.propose([1, 2], 6, Sampler(SamplingConfig()))
    expected = [_spread_argmax(table[(1 + i) % len(table)], head, vocab) for i in range(6)]
    assert draft.tokens == expected and draft.q is None


def test_penalised_greedy_still_reads_the_spread_row() -> None:
    head = np.array([3, 0, 2])
    table = np.array([[1.0, 3.0, 2.0]], np.float32)  # target ids 3:1, 0:3, 2:2 -> best 0, penalised -> 2
    drafter = ModelDrafter(RowsSession(table), head_vocab=head, target_vocab=4)
    drafter.begin([0])
    draft = drafter.propose([0], 1, Sampler(SamplingConfig(repetition_penalty=10.0)))
    assert draft.tokens == [2]
