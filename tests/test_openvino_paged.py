"""The OpenVINO CPU session's PagedAttention cache (the CPU default): rollback by position, growth past the first
blocks, snapshot/restore, agreement with the stateful path on the same IR, and embeddings that give their tokens'
rows exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgegen.manifest import read_manifest
from edgegen.runtimes import open_session


def _ids(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(200, 20000, size=n).astype(np.int64)


def test_paged_rollbacks_growth_and_restore(fp32_model: Path) -> None:
    manifest = read_manifest(fp32_model)
    session = open_session(fp32_model, manifest, "openvino")
    assert session._paged is not None  # the CPU runs the PagedAttention rewrite of the IR
    prompt, kept = _ids(530), _ids(12, seed=3)  # 530 + 12 tokens: past the 16 blocks (512) allocated up front
    straight = session.forward(np.concatenate([prompt, kept]))

    # the same rows as the stateful path gives them (same IR, another attention kernel)
    stateful = open_session(fp32_model, manifest, "openvino", paged=False).forward(prompt[:60])
    np.testing.assert_allclose(straight[:60], stateful, atol=5e-2)
    assert (straight[:60].argmax(-1) == stateful.argmax(-1)).all()

    # the prompt in three pieces (the cache grows under the second), then 1 kept + 3 rolled-back tokens a step
    session.reset()
    session.forward(prompt[:300])
    session.forward(prompt[300:520])
    rows = [session.forward(prompt[520:])[-1:]]
    for i, token in enumerate(kept):
        rows.append(session.forward(np.concatenate([[token], _ids(3, seed=10 + i)]))[:1])
        session.trim(len(prompt) + i + 1)
    assert session.position == len(prompt) + len(kept)
    rolled, expected = np.concatenate(rows), straight[len(prompt) - 1:]
    np.testing.assert_allclose(rolled, expected, atol=2e-3)
    assert (rolled.argmax(-1) == expected.argmax(-1)).all()

    # a snapshot written back into a cache that held other tokens continues bit for bit; cut shorter, it
    # continues from its first 100 positions
    snapshot = session.snapshot()
    after = session.forward(_ids(5, seed=7))
    session.reset()
    session.forward(_ids(40, seed=8))
    session.restore(snapshot)
    assert np.array_equal(session.forward(_ids(5, seed=7)), after)
    session.restore(snapshot, 100)
    assert session.position == 100
    cut = session.forward(prompt[100:110])  # 10 rows from 100 cached, against rows of one 542-row forward
    np.testing.assert_allclose(cut, straight[100:110], atol=2e-2)  # f16 cache: row counts change the sums
    assert (cut.argmax(-1) == straight[100:110].argmax(-1)).all()


def test_paged_embeddings_give_their_tokens_rows_exactly(fp32_model: Path) -> None:
    # One compiled graph takes ids and embeddings (its quantized cache blocks would turn two graphs' ~5e-5 into
    # ~8e-3): a token's embedding gives the token's rows bit for bit, also after a step of mixed embeddings.
    manifest = read_manifest(fp32_model)
    plain = open_session(fp32_model, manifest, "openvino", threads=1)
    emb = open_session(fp32_model, manifest, "openvino", embeddings=True, threads=1)
    assert plain._paged is not None and emb._paged is not None
    ids, more = _ids(24), _ids(4, seed=5)
    expected = plain.forward(ids)
    assert np.array_equal(emb.forward_embeddings(emb.embed(ids)), expected)
    a, b = emb.embed(more[:2])
    emb.forward_embeddings((0.5 * a + 0.5 * b)[None])  # a superposed step, then rolled back
    emb.trim(len(ids))
    assert np.array_equal(emb.forward(more), plain.forward(more))


def test_rows_are_computed_alike_in_every_forward_of_two_rows_or_more(fp32_model: Path) -> None:
    # Why greedy drafting on OpenVINO equals AR only up to near-ties (docs/backends.md): the CPU plugin's one-token
    # forwards take other kernels than its many-row ones, while any two forwards of >= 2 rows agree bit for bit.
    session = open_session(fp32_model, read_manifest(fp32_model), "openvino")
    prompt, tokens = _ids(100), _ids(6, seed=5)
    session.forward(prompt, last_only=True)
    many = session.forward(tokens)  # six rows at once
    session.trim(len(prompt))
    one, padded = [], []
    for i, token in enumerate(tokens):  # each token alone, then with a filler row (dropped)
        one.append(session.forward(np.array([token]))[0])
        session.trim(len(prompt) + i)
        padded.append(session.forward(np.array([token, 0]))[0])
        session.trim(len(prompt) + i + 1)
    assert np.array_equal(np.stack(padded), many)
    assert np.abs(np.stack(one) - many).max() < 0.02  # small (not zero on OpenVINO 2026.4: a near-tie can turn)
