"""Hydra heads: the NumPy runtime against the torch heads it was trained as, the heads file, and the
training recipe on a tiny target (loss falls, resume is exact, checkpoints are atomic)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

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


def test_token_scale_is_folded_into_the_packed_weights(tmp_path):
    """Training scales the token's embedding at each head's input (export/hydra/model.py token_scale); the packed
    file holds it folded into w_in, so the NumPy heads compute what the torch heads trained, and a checkpoint
    (packed form) loads back into the training parameters bit for bit."""
    from edgegen.export.hydra.model import build_heads, load_tensors, pack_tensors, token_scale, trained_tensors
    from edgegen.export.hydra.ship import EMBED_KEY, VOCAB_KEY, heads_info, write_heads

    g = torch.Generator().manual_seed(2)
    embed = torch.randn(25, 32, generator=g) * 0.1
    hidden = np.random.default_rng(0).standard_normal((1, 6, 32)).astype(np.float32) * 3
    scale = token_scale(hidden[0], embed)
    assert scale == 32.0  # rms 3 / rms 0.1, to the nearest power of two
    from edgegen.export.hydra import HydraConfig

    with pytest.raises(EdgegenError, match="power of two"):  # folding it must stay exact
        HydraConfig(target="default", out=str(tmp_path / "run"), token_scale=3.0).validate()
    model = build_heads(embed, 3, 2, scale)
    with torch.no_grad():
        for t in trained_tensors(model).values():
            t.copy_(torch.randn(t.shape, generator=g) * (0.5 / np.sqrt(t.shape[-1])))
    packed = pack_tensors(model)
    again = build_heads(embed, 3, 2, scale)
    load_tensors(again, packed)
    assert all(torch.equal(a, b) for a, b in zip(trained_tensors(model).values(), trained_tensors(again).values(),
                                                 strict=True))
    vocab = torch.randperm(64, generator=g)[:24]
    target = {"target_name": "random", "target_vocab_size": 64, "target_tokenizer_sha256": ""}
    heads = HydraHeads.open(write_heads({VOCAB_KEY: vocab, EMBED_KEY: embed, **packed}, heads_info(3, 2, 32, target),
                                        tmp_path / "h.safetensors", "float32"))
    tokens = np.random.default_rng(1).integers(0, 64, size=6)
    index = np.full(64, 24)
    index[vocab.numpy()] = np.arange(24)
    with torch.no_grad():
        logits = model(torch.from_numpy(hidden), torch.from_numpy(index[tokens])[None])
    state = hidden[0, 0][None]
    for k in range(3):
        state, lg = heads.head(k, state, tokens[k + 1:k + 2])
        np.testing.assert_allclose(lg[0], logits[k][0, 0].numpy(), rtol=1e-4, atol=1e-4)


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


# --- the recipe on a tiny target ------------------------------------------------------------------------------

TEXT = ("The quick brown fox jumps over the lazy dog. Rivers flow to the sea and the sea returns rain to the hills. "
        "A function takes arguments and returns a value; a class groups data with the functions that act on it. ")


def _cfg(target, out, text_dir, **kw):
    from edgegen.export.drafter.config import STDLIB
    from edgegen.export.hydra import HydraConfig

    base = dict(target=str(target), out=str(out), steps=24, seq_len=32, batch_size=4, lr=3e-3, warmup=3, heads=3,
                head_vocab=64, feature_tokens=3000, code_globs=[f"{STDLIB}/json/*.py"],
                text_globs=[f"{text_dir}/*.txt"], corpus_tokens=8000, val_tokens=600, eval_tokens=256,
                gen_prompts=8, gen_max_new_tokens=16, gen_batch=8, gen_val_every=4, ckpt_every=5,
                ckpt_minutes=1e9, eval_every=12, progress=False, seed=3)
    base.update(kw)
    return HydraConfig(**base)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from fakes import tiny_llama

    from edgegen.export.drafter.config import STDLIB
    from edgegen.export.hydra import train_heads

    root = tmp_path_factory.mktemp("hydra")
    text_dir = root / "text"
    text_dir.mkdir()
    for i in range(6):
        (text_dir / f"doc{i}.txt").write_text((TEXT + f" Document {i}. ") * (10 + i))
    code = "".join(p.read_text() for p in sorted(Path(STDLIB, "json").glob("*.py")))
    target = tiny_llama(root / "target", [TEXT * 20, code], vocab_size=320, layers=2)
    summary = train_heads(_cfg(target, root / "run-a", text_dir), echo=lambda m: None)
    return {"root": root, "text": text_dir, "target": target, "run": root / "run-a", "summary": summary}


def test_recipe_trains_the_heads(run):
    records = [json.loads(x) for x in (run["run"] / "metrics.jsonl").read_text().splitlines()]
    evals = {e["label"]: e["sets"] for e in records if e["event"] == "eval"}
    assert list(evals) == ["init", "step 12", "step 24"]
    assert {"val_code", "val_text", "gen_code", "bench_code"} <= set(evals["init"])
    train = [e for e in records if e["event"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"]
    for name in ("val_code", "gen_code"):  # held out: the heads' loss falls on text they did not train on
        assert evals["step 24"][name]["ce1"] < evals["init"][name]["ce1"]
    for sets in evals.values():
        for m in sets.values():
            assert 0 <= m["chain3"] <= m["chain2"] <= m["chain1"] == m["head1"] <= m["coverage"] <= 1
    # The packed file runs in NumPy and gives the torch heads' predictions on the run's own features.
    heads = HydraHeads.open(run["run"] / "heads.safetensors")
    assert heads.info["vocab_size"] == 320 and heads.num_heads == 3 and heads.head_vocab_size == 64
    assert heads.info["evals"][-1]["label"] == "step 24"


def test_resume_is_exact(run):
    from edgegen.export import checkpoints as ck
    from edgegen.export.hydra import train_heads

    class Stop(Exception):
        pass

    def stop_at(n):
        def hook(step):
            if step == n:
                raise Stop

        return hook

    out = run["root"] / "run-b"
    with pytest.raises(Stop):
        train_heads(_cfg(run["target"], out, run["text"]), step_hook=stop_at(8), echo=lambda m: None)
    assert ck.latest_checkpoint(out).name == "ckpt-00000005"
    with pytest.raises(EdgegenError, match="--resume"):
        train_heads(_cfg(run["target"], out, run["text"]), echo=lambda m: None)
    with pytest.raises(Stop):
        train_heads(_cfg(run["target"], out, run["text"]), resume=True, step_hook=stop_at(17), echo=lambda m: None)
    assert ck.latest_checkpoint(out).name == "ckpt-00000015"
    train_heads(_cfg(run["target"], out, run["text"]), resume=True, echo=lambda m: None)
    a = ck.load_checkpoint(ck.latest_checkpoint(run["run"]))[0]
    b = ck.load_checkpoint(ck.latest_checkpoint(out))[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_write_failure_leaves_the_last_one(run, tmp_path, monkeypatch):
    import shutil

    from edgegen.export import checkpoints as ck
    from edgegen.export.hydra import pack_heads

    out = tmp_path / "run"
    shutil.copytree(run["run"], out)
    before = ck.latest_checkpoint(out)

    def broken(obj, path, *a, **k):  # half a file, then the disk is full
        Path(path).write_bytes(b"half")
        raise OSError("disk full")


    monkeypatch.setattr(torch, "save", broken)
    tensors, state, meta = ck.load_checkpoint(before)
    with pytest.raises(OSError):
        ck.save_checkpoint(out, 99, tensors, state, meta)
    assert ck.latest_checkpoint(out) == before and not list(out.glob(".tmp-ckpt-*"))
    packed = pack_heads(out, tmp_path / "h.safetensors")  # the last complete checkpoint still packs
    assert HydraHeads.open(packed).info["checkpoint"] == before.name


def test_resume_refuses_a_pickled_state(run, tmp_path):
    import pickle
    import shutil

    from edgegen.export import checkpoints as ck
    from edgegen.export.hydra import train_heads

    out = tmp_path / "run"
    shutil.copytree(run["run"], out)
    state = ck.latest_checkpoint(out) / "state.pt"

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    state.write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(EdgegenError, match="refusing to resume"):
        train_heads(_cfg(run["target"], out, run["text"]), resume=True, echo=lambda m: None)


def test_int8_heads_file_is_half_the_size_and_close(tmp_path):
    kw = dict(hidden_size=64, vocab_size=96, head_vocab=40, num_heads=2, layers=1, seed=5)
    f16 = HydraHeads.open(random_heads(tmp_path / "f16.safetensors", dtype="float16", **kw))
    q8_path = random_heads(tmp_path / "q8.safetensors", dtype="int8", **kw)
    q8 = HydraHeads.open(q8_path)
    assert q8_path.stat().st_size < 0.6 * (tmp_path / "f16.safetensors").stat().st_size
    h = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    a, b = f16.chain(h, 3), q8.chain(h, 3)
    np.testing.assert_allclose(a.logits, b.logits, atol=0.05 * np.abs(a.logits).max())


def test_heads_with_int8_products_on_onnx_runtime_stay_close_to_numpy(tmp_path):
    # HydraHeads(int8=True), what the hydra strategy runs: the same heads, each product on ONNX Runtime with int8
    # weights and activations, so close to the float heads, not equal (each head fed the float heads' inputs)
    kw = dict(hidden_size=64, vocab_size=96, head_vocab=40, num_heads=3, layers=2, seed=7)
    path = random_heads(tmp_path / "heads.safetensors", **kw)
    exact, fast = HydraHeads.open(path), HydraHeads.open(path, int8=True)
    rng = np.random.default_rng(1)
    state, tokens = rng.standard_normal((20, 64)).astype(np.float32) * 4, rng.integers(0, 96, 20)
    same = 0
    for k in range(3):
        (want_state, want), (got_state, got) = exact.head(k, state, tokens), fast.head(k, state, tokens)
        np.testing.assert_allclose(got, want, atol=0.03 * np.abs(want).max())
        np.testing.assert_allclose(got_state, want_state, atol=0.03 * np.abs(want_state).max())
        same += int((got.argmax(1) == want.argmax(1)).sum())
        state, tokens = want_state, exact.vocab[want.argmax(1)]
    assert same >= 0.9 * 3 * 20


# --- alignment: what the heads read and what they are trained towards -------------------------------------------


def test_heads_learn_a_rule_of_the_tokens_they_read_and_draft_it_at_run_time(tmp_path):
    """A target whose greedy next token is f(current token) (f a permutation), as on its own generations: the
    label at position p is f(tokens[p]) = tokens[p + 1]; the hidden states are noise. Head 1 at position t reads
    h_t and token t+1 and is trained towards the label at t+1; head 2 reads token t+2. The training loss and
    evaluation learn the rule, and the packed NumPy heads, given h_t and the newest token (t+1) as decoding
    gives them, draft tokens t+2 and t+3: a training side that reads or labels one position off (the rule is
    learnable either way on such a sequence) drafts one token off at run time and fails here."""
    from edgegen.export.hydra.features import FeatureSet
    from edgegen.export.hydra.model import build_heads, pack_tensors
    from edgegen.export.hydra.ship import EMBED_KEY, VOCAB_KEY, heads_info, write_heads
    from edgegen.export.hydra.train import evaluate_heads, heads_loss

    rng = np.random.default_rng(0)
    vocab_size, d, rows, width = 40, 16, 64, 24
    vocab = rng.permutation(vocab_size)[:16]  # the heads' vocabulary; the sequences use only these tokens
    f = dict(zip(vocab.tolist(), rng.permutation(vocab).tolist(), strict=True))
    seqs = []
    for _ in range(rows):
        seq = [int(rng.choice(vocab))]
        for _ in range(width - 1):
            seq.append(f[seq[-1]])
        seqs.append(seq)
    tokens = np.array(seqs, np.int32).reshape(-1)
    greedy = np.array([f[t] for t in tokens.tolist()], np.int32)
    other = np.array([int(vocab[(np.nonzero(vocab == g)[0][0] + 1) % 16]) for g in greedy], np.int32)
    n = len(tokens)
    features = FeatureSet(tokens=tokens, hidden=rng.standard_normal((n, d)).astype(np.float16),
                          top_ids=np.stack([greedy, other], 1), top_logp=np.log([[0.9, 0.1]] * n).astype(np.float16),
                          count=np.ones(n, bool), lengths=np.full(rows, width, np.int32))
    index = np.full(vocab_size, len(vocab), np.int64)
    index[vocab] = np.arange(len(vocab))
    embed = torch.randn(len(vocab) + 1, d, generator=torch.Generator().manual_seed(1))
    model = build_heads(embed, 2, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batches = [features.batch(list(range(r, r + 8)), index) for r in range(0, rows, 8)]
    for step in range(150):
        loss, _ = heads_loss(model, batches[step % len(batches)], 0.8)
        opt.zero_grad()
        loss.backward()
        opt.step()
    scores = evaluate_heads(model.eval(), batches)
    assert scores["head1"] > 0.95 and scores["head2"] > 0.95 and scores["coverage"] == 1.0

    target = {"target_name": "rule", "target_vocab_size": vocab_size, "target_tokenizer_sha256": ""}
    path = write_heads({VOCAB_KEY: torch.from_numpy(vocab), EMBED_KEY: embed, **pack_tensors(model)},
                       heads_info(2, 1, d, target), tmp_path / "heads.safetensors", "float32")
    heads = HydraHeads.open(path)
    hidden = features.hidden.astype(np.float32)
    starts = [r * width + t for r in range(0, rows, 4) for t in range(width - 3)]  # t + 3 in the same row
    drafted = [heads.chain(hidden[t], base_token=int(tokens[t + 1])).tokens.tolist() for t in starts]
    assert np.mean([a == tokens[t + 2:t + 4].tolist() for a, t in zip(drafted, starts, strict=True)]) > 0.9
