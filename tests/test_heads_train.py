"""Hydra heads: the NumPy runtime against the torch heads it was trained as, the heads file, and the
training recipe on a tiny target (loss falls, resume is exact, checkpoints are atomic)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgegen.errors import EdgegenError  # noqa: E402
from edgegen.export.hydra.ship import random_heads  # noqa: E402
from edgegen.heads import HydraHeads, read_safetensors  # noqa: E402


@pytest.fixture(scope="module")
def heads_file(tmp_path_factory):
    return random_heads(tmp_path_factory.mktemp("heads") / "heads.safetensors", hidden_size=32, vocab_size=64,
                        head_vocab=24, num_heads=3, layers=2, seed=1)


def _torch_heads(path):
    """The torch heads holding the file's weights (the training-side computation)."""
    from safetensors.torch import load_file

    from edgegen.export.hydra.model import build_heads, load_tensors

    tensors = load_file(str(path))
    info = HydraHeads.open(path).info
    model = build_heads(tensors.pop("embed").float(), info["num_heads"], info["layers"])
    vocab = tensors.pop("vocab")
    load_tensors(model, {k: v.float() for k, v in tensors.items()})
    return model, vocab


def test_numpy_heads_match_torch(heads_file):
    model, vocab = _torch_heads(heads_file)
    heads = HydraHeads.open(heads_file)
    rng = np.random.default_rng(0)
    W = 6
    hidden = rng.standard_normal((1, W, 32)).astype(np.float32)
    tokens = rng.integers(0, 64, size=W)  # the sequence's tokens; some are outside the heads' vocabulary
    index = np.full(64, len(vocab))
    index[vocab.numpy()] = np.arange(len(vocab))
    with torch.no_grad():
        logits = model(torch.from_numpy(hidden), torch.from_numpy(index[tokens])[None])
    for t in range(W - 3):
        state = hidden[0, t][None]
        for k in range(3):  # head k+1 at position t reads tokens t+1..t+k+1
            state, lg = heads.head(k, state, tokens[t + k + 1:t + k + 2])
            np.testing.assert_allclose(lg[0], logits[k][0, t].numpy(), rtol=1e-4, atol=1e-4)


def test_chain_is_the_heads_greedy_path_and_sampling_uses_q(heads_file):
    heads = HydraHeads.open(heads_file)
    model, _ = _torch_heads(heads_file)
    h = np.random.default_rng(3).standard_normal(32).astype(np.float32)
    draft = heads.chain(h, base_token=7)
    assert len(draft.tokens) == 3 and set(draft.tokens.tolist()) <= set(heads.vocab.tolist())
    # Greedy: each token is its head's argmax given the tokens before it.
    state, prev = h[None], np.array([7])
    for k in range(3):
        state, lg = heads.head(k, state, prev)
        assert heads.vocab[int(np.argmax(lg[0]))] == draft.tokens[k]
        prev = draft.tokens[k:k + 1]
    np.testing.assert_allclose(draft.probs.sum(axis=1), 1.0, rtol=1e-5)
    full = heads.full_distribution(draft.probs)
    assert full.shape == (3, 64) and np.allclose(full.sum(axis=1), 1.0)
    assert np.all(full[:, np.setdiff1d(np.arange(64), heads.vocab)] == 0)
    # Sampling: the first token's empirical frequencies follow q (chi-square, 2000 draws).
    rng = np.random.default_rng(0)
    q = heads.chain(h, 7, n=1, temperature=1.5, rng=rng).probs[0].astype(np.float64)
    q /= q.sum()
    counts = np.bincount([heads.index[heads.chain(h, 7, n=1, temperature=1.5, rng=rng).tokens[0]]
                          for _ in range(2000)], minlength=len(q))
    from scipy.stats import chisquare

    keep = q * 2000 >= 5
    observed = np.append(counts[keep], counts[~keep].sum())
    expected = np.append(q[keep], q[~keep].sum()) * 2000
    assert chisquare(observed, expected * observed.sum() / expected.sum()).pvalue > 1e-3


def test_tree_expands_each_node_with_its_heads_top_k(heads_file):
    heads = HydraHeads.open(heads_file)
    h = np.random.default_rng(4).standard_normal(32).astype(np.float32)
    tree = heads.tree(h, 7, (3, 2))
    assert tree.depth.tolist() == [1] * 3 + [2] * 6
    assert tree.parents.tolist() == [-1, -1, -1, 0, 0, 1, 1, 2, 2]
    greedy = heads.chain(h, 7, n=2).tokens
    assert tree.tokens[0] == greedy[0] and tree.tokens[3] == greedy[1]  # the first path is the greedy chain
    _, lg = heads.head(1, heads.head(0, h[None], np.array([7]))[0], tree.tokens[1:2])
    assert tree.tokens[5] == heads.vocab[int(np.argmax(lg[0]))]  # node 1's first child: head 2 after node 1
    np.testing.assert_allclose(tree.paths_prob[3:5], tree.probs[0] * tree.probs[3:5], rtol=1e-5)


def test_heads_file_reader_matches_safetensors_and_refuses_bad_files(heads_file, tmp_path):
    from safetensors.numpy import load_file

    ours, meta = read_safetensors(heads_file)
    theirs = load_file(str(heads_file))
    assert set(ours) == set(theirs) and all(np.array_equal(ours[k], theirs[k]) for k in ours)
    assert json.loads(meta["edgegen_heads"])["feature"] == "final_norm_hidden"
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(EdgegenError, match="cannot read"):
        HydraHeads.open(bad)
    header = json.dumps({"__metadata__": {"edgegen_heads": json.dumps({"format": "other/1"})}}).encode()
    bad.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(EdgegenError, match="format"):
        HydraHeads.open(bad)
    with pytest.raises(EdgegenError, match="not found"):
        HydraHeads.open(tmp_path / "missing.safetensors")
    with pytest.raises(EdgegenError, match="hidden state"):
        HydraHeads.open(heads_file).chain(np.zeros(5, np.float32), 1)
