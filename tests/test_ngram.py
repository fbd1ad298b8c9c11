"""The n-gram store (edgegen/ngram.py, built by edgegen/ngram_build.py): exact counts, the reference's
interpolation, vectorised look-ups, tokenizer identity, atomic writes and the `edgegen ngram build` command.
A word-level tokenizer keeps it fast; one slow test builds the real default store for the exported SmolLM2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit

from edgegen import artifacts, ngram, ngram_build
from edgegen.cli import main
from edgegen.errors import EdgegenError
from edgegen.manifest import Manifest
from edgegen.models import load_tokenizer
from edgegen.ngram import DEFAULT_WEIGHTS, NgramStore
from edgegen.ngram_build import build_store
from edgegen.tokenizer import TextTokenizer

A, B, C, D = 1, 2, 3, 4  # ids of the words a b c d in the tiny tokenizer


def make_model(folder: Path, words: list[str], name: str = "tiny") -> Path:
    """An exported-model folder with only a word-level tokenizer: enough for TextTokenizer and the CLI."""
    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(WordLevel({"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}, unk_token="[UNK]"))
    tok.pre_tokenizer = WhitespaceSplit()
    tok.save(str(folder / "tokenizer.json"))
    Manifest(name=name, architecture="llama", num_layers=1, hidden_size=8, num_heads=1, num_kv_heads=1, head_dim=8,
             vocab_size=len(words) + 1, context_length=64, bos_token_id=None, eos_token_ids=[], add_bos=False,
             chat_template=None).write(folder)
    return folder


def load(folder: Path) -> TextTokenizer:
    return load_tokenizer(folder)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TextTokenizer:
    return load(make_model(tmp_path_factory.mktemp("tiny"), ["a", "b", "c", "d"]))


@pytest.fixture(scope="module")
def hand(tiny: TextTokenizer, tmp_path_factory: pytest.TempPathFactory) -> NgramStore:
    # Two documents: no window crosses from the first into the second ("c a" is never counted).
    path = build_store(["a b a b c", "a b c"], tiny, out=tmp_path_factory.mktemp("s") / "hand.npz", progress=False)
    return NgramStore.open(path, tokenizer=tiny)


def test_exact_counts_by_hand(hand: NgramStore) -> None:
    cands = [A, B, C, D]
    assert hand.token_count == 8 and hand.header["documents"] == 2
    # Order 2, context "b": b occurs 3 times, followed by a once and by c twice.
    gram, ctx = hand.counts([[A, B]], cands, order=2)
    assert ctx.tolist() == [3] and gram.tolist() == [[1, 0, 2, 0]]
    # Order 2, context "c": c occurs twice, both at a document end, so nothing follows it.
    gram, ctx = hand.counts([[C]], cands, order=2)
    assert ctx.tolist() == [2] and gram.tolist() == [[0, 0, 0, 0]]
    # Order 3, context "a b": 3 times; "a b a" once, "a b c" twice (once per document).
    gram, ctx = hand.counts([[B, A, B]], cands, order=3)
    assert ctx.tolist() == [3] and gram.tolist() == [[1, 0, 2, 0]]
    # Orders 4 and 5: "b a b" -> c once; "a b a b" -> c once.
    gram, ctx = hand.counts([[A, B, A, B]], cands, order=4)
    assert ctx.tolist() == [1] and gram.tolist() == [[0, 0, 1, 0]]
    gram, ctx = hand.counts([[A, B, A, B]], cands, order=5)
    assert ctx.tolist() == [1] and gram.tolist() == [[0, 0, 1, 0]]
    # Order 6: the one 5-token window "a b a b c" ends the document.
    gram, ctx = hand.counts([[A, B, A, B, C]], cands, order=6)
    assert ctx.tolist() == [1] and gram.tolist() == [[0, 0, 0, 0]]
    assert hand.table_sizes() == {1: 3, 2: 3, 3: 3, 4: 2, 5: 1, 6: 0}


def test_probabilities_interpolate_like_the_reference(hand: NgramStore) -> None:
    w = DEFAULT_WEIGHTS
    assert w == {2: 0.01, 3: 0.04, 4: 0.15, 5: 0.18, 6: 0.12}
    p = hand.probabilities([[A, B, A, B]], [C, A, D])
    # c after "a b a b": P2 = 2/3, P3 = 2/3, P4 = 1/1, P5 = 1/1, P6: no 5-token context (0).
    want_c = w[2] * 2 / 3 + w[3] * 2 / 3 + w[4] * 1 + w[5] * 1
    # a after "a b a b": P2 = 1/3, P3 = 1/3, P4 = 0/1, P5 = 0/1. d: never seen anywhere.
    want_a = w[2] / 3 + w[3] / 3
    assert p.dtype == np.float32 and p.shape == (1, 3)
    np.testing.assert_allclose(p[0], [want_c, want_a, 0.0], rtol=1e-6)
    per_order = hand.order_probabilities([[A, B, A, B]], [C])
    np.testing.assert_allclose(per_order[:, 0, 0], [2 / 3, 2 / 3, 1, 1, 0], rtol=1e-6)
    # Custom weights are used as given (not renormalised).
    p = hand.probabilities([[A, B, A, B]], [C], weights={2: 1, 3: 0, 4: 0, 5: 0, 6: 0})
    np.testing.assert_allclose(p, [[2 / 3]], rtol=1e-6)


def test_unseen_context_gives_the_backoff_value(hand: NgramStore) -> None:
    w = DEFAULT_WEIGHTS
    # "d a b": the 3-token context was never seen, so order 4 adds 0 and the lower orders remain.
    p = hand.probabilities([[D, A, B]], [C])
    np.testing.assert_allclose(p, [[w[2] * 2 / 3 + w[3] * 2 / 3]], rtol=1e-6)
    # No order has seen its context: 0 (the strategy then drops the candidate for that draft).
    assert hand.probabilities([[D, D]], [A, B, C]).tolist() == [[0, 0, 0]]
    # Left padding (negative ids) and short histories mean "no context for the higher orders".
    np.testing.assert_array_equal(hand.probabilities([[-1, -1, -1, A, B]], [A, C]),
                                  hand.probabilities([[A, B]], [A, C]))
    assert hand.probabilities(np.zeros((2, 0), np.int64), [A]).tolist() == [[0], [0]]


def test_min_count_prunes_and_keeps_exact_counts(tiny: TextTokenizer, tmp_path: Path) -> None:
    store = NgramStore.open(build_store(["a b a b c", "a b c"], tiny, out=tmp_path / "p.npz", min_count=2,
                                        progress=False))
    gram, ctx = store.counts([[A, B]], [A, C], order=3)
    assert ctx.tolist() == [3] and gram.tolist() == [[0, 2]]  # "a b a" (once) is gone, "a b c" stays exact
    assert store.table_sizes() == {1: 3, 2: 2, 3: 1, 4: 0, 5: 0, 6: 0}  # "b a" (once) is gone too
    assert store.header["min_count"] == 2


def count_windows(docs: list[list[int]], max_len: int) -> Counter[tuple[int, ...]]:
    windows: Counter[tuple[int, ...]] = Counter()
    for doc in docs:
        for m in range(1, max_len + 1):
            for i in range(len(doc) - m + 1):
                windows[tuple(doc[i:i + m])] += 1
    return windows


def reference_probability(windows: Counter, history: list[int], cand: int, orders: tuple[int, ...]) -> float:
    """The reference's loop: sum over orders of weight * c(ctx v) / c(ctx), unseen or short contexts skipped."""
    p = 0.0
    for n in orders:
        ctx = history[len(history) - (n - 1):]
        if len(history) < n - 1 or min(ctx) < 0:  # too short or padded: this order adds nothing
            continue
        if windows[tuple(ctx)]:
            p += DEFAULT_WEIGHTS[n] * windows[(*ctx, cand)] / windows[tuple(ctx)]
    return p


def test_vectorised_equals_a_slow_loop_on_random_data(tmp_path: Path) -> None:
    words = [f"w{i}" for i in range(6)]
    tok = load(make_model(tmp_path / "m", words))
    rng = np.random.default_rng(0)
    docs = [rng.integers(1, 7, rng.integers(1, 60)).tolist() for _ in range(40)]
    texts = [" ".join(words[t - 1] for t in doc) for doc in docs]
    # A small chunk size forces carries between chunks; memory_mb=0 forces the disk spill path.
    store = NgramStore.open(build_store(texts, tok, out=tmp_path / "r.npz", progress=False, chunk_tokens=7,
                                       memory_mb=0))
    assert store.token_count == sum(map(len, docs))
    k, length, c = 5, 8, 4
    windows = count_windows(docs, max(store.orders))
    for _ in range(20):
        hist = rng.integers(1, 8, (k, length))  # id 7 is outside the corpus: unseen contexts
        hist[rng.random((k, length)) < 0.1] = -1
        hist[np.cumsum(hist[:, ::-1] < 0, axis=1)[:, ::-1] > 0] = -1  # padding is on the left
        cands = rng.integers(0, 8, (k, c))
        got = store.probabilities(hist, cands)
        want = [[reference_probability(windows, hist[i].tolist(), int(cands[i, j]), store.orders)
                 for j in range(c)] for i in range(k)]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
        for n in store.orders:
            gram, ctx = store.counts(hist, cands, order=n)
            for i in range(k):
                h = hist[i].tolist()[length - (n - 1):]
                if min(h) < 0:
                    assert ctx[i] == 0 and not gram[i].any()
                    continue
                assert ctx[i] == windows[tuple(h)]
                assert gram[i].tolist() == [windows[(*h, int(v))] for v in cands[i]]


def test_chunking_and_file_blocks_do_not_change_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tok = load(make_model(tmp_path / "m", ["a", "b", "c", "d"]))
    rng = np.random.default_rng(1)
    lines = [" ".join(rng.choice(list("abcd"), rng.integers(0, 12))) for _ in range(300)]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "one.txt").write_text("\n".join(lines[:200]) + "\n")
    (corpus / "two.md").write_text("\n".join(lines[200:]))
    (corpus / ".hidden.txt").write_text("d d d d d d")
    (corpus / "binary.bin").write_bytes(b"a b\0c")
    whole = NgramStore.open(build_store([corpus], tok, out=tmp_path / "whole.npz", progress=False))
    monkeypatch.setattr(ngram_build, "_READ_BLOCK", 64)  # files read in many pieces
    small = NgramStore.open(build_store([corpus], tok, out=tmp_path / "small.npz", progress=False,
                                        chunk_tokens=1, memory_mb=0))
    np.testing.assert_array_equal(whole._keys, small._keys)
    np.testing.assert_array_equal(whole._counts, small._counts)
    assert whole.header["documents"] == 2  # hidden and binary files are skipped
    capped = NgramStore.open(build_store([corpus], tok, out=tmp_path / "cap.npz", progress=False, max_tokens=100))
    assert capped.token_count == 100


def test_file_format_is_a_plain_aligned_npz(hand: NgramStore) -> None:
    with np.load(hand.path) as z:
        assert sorted(z.files) == ["counts", "header", "keys"]
        header = json.loads(bytes(z["header"]))
        np.testing.assert_array_equal(z["keys"], hand._keys)
    assert header["format"] == "edgegen-ngram" and header["orders"] == [2, 3, 4, 5, 6]
    assert header["tokenizer"]["vocab_size"] == 5 and len(header["tokenizer"]["vocab_sha256"]) == 64
    assert "2 texts" in header["corpus"]
    assert hand._keys.flags.aligned and not hand._keys.flags.writeable  # a view of the memory map
    assert hand._keys.ctypes.data % 64 == 0 and np.all(np.diff(hand._keys) > 0)


def test_tokenizer_mismatch_is_refused(hand: NgramStore, tmp_path: Path) -> None:
    other = load(make_model(tmp_path / "other", ["b", "a", "c", "d"], name="other"))  # same size, other ids
    with pytest.raises(EdgegenError, match="built for tokenizer 'tiny'.*not 'other'"):
        NgramStore.open(hand.path, tokenizer=other)
    bigger = load(make_model(tmp_path / "bigger", ["a", "b", "c", "d", "e"], name="bigger"))
    with pytest.raises(EdgegenError, match="vocab 5.*vocab 6"):
        hand.check_tokenizer(bigger)


def test_bad_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(EdgegenError, match="not found"):
        NgramStore.open(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(EdgegenError, match="not a readable n-gram store"):
        NgramStore.open(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", keys=np.zeros(1))
    with pytest.raises(EdgegenError):
        NgramStore.open(tmp_path / "other.npz")


def test_atomic_write_leaves_nothing_after_a_failure(tiny: TextTokenizer, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "store.npz"
    build_store(["a b c"], tiny, out=out, progress=False)
    before = out.read_bytes()

    def broken(fileobj, arrays):  # writes half a file, then fails
        fileobj.write(b"PK\x03\x04 partial")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(ngram_build, "write_aligned_npz", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        build_store(["a b a b c", "c c"], tiny, out=out, progress=False, memory_mb=0)
    with pytest.raises(RuntimeError):
        build_store(["a b"], tiny, out=tmp_path / "new.npz", progress=False)
    assert out.read_bytes() == before  # the old store is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.npz"]  # no temp file, no spill folder


def test_build_input_errors(tiny: TextTokenizer, tmp_path: Path) -> None:
    with pytest.raises(EdgegenError, match="empty"):
        build_store(["", "   "], tiny, out=tmp_path / "e.npz", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgegenError, match="empty"):
        build_store([tmp_path / "empty"], tiny, out=tmp_path / "e.npz", progress=False)
    with pytest.raises(EdgegenError, match="not found"):
        build_store([tmp_path / "nope.txt"], tiny, out=tmp_path / "e.npz", progress=False)
    with pytest.raises(EdgegenError, match="min-count"):
        build_store(["a b"], tiny, out=tmp_path / "e.npz", min_count=0, progress=False)
    with pytest.raises(EdgegenError, match="is a folder"):
        build_store(["a b"], tiny, out=tmp_path, progress=False)
    assert not (tmp_path / "e.npz").exists()
    assert ngram.parse_orders("2..6") == (2, 3, 4, 5, 6) and ngram.parse_orders("4,2, 3") == (2, 3, 4)
    for bad in ("1..3", "6..2", "2-6", "", "a", "2..99"):
        with pytest.raises(EdgegenError):
            ngram.parse_orders(bad)


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_build(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = make_model(tmp_path / "model", ["a", "b", "c", "d"])
    (tmp_path / "c.txt").write_text("a b a b c\n")
    out = tmp_path / "stores" / "s.npz"
    code, stdout, _ = run_cli(capsys, "ngram", "build", "--corpus", str(tmp_path / "c.txt"), "--tokenizer",
                              str(model), "--orders", "2..4", "--out", str(out), "--quiet")
    assert code == 0 and "wrote" in stdout and "5 tokens" in stdout
    store = NgramStore.open(out, tokenizer=load(model))
    assert store.orders == (2, 3, 4) and store.counts([[A, B]], [A], order=3)[0].tolist() == [[1]]
    # The installed console script, end to end.
    exe = Path(sys.executable).with_name("edgegen")
    proc = subprocess.run([str(exe), "ngram", "build", "--corpus", str(tmp_path / "c.txt"), "--tokenizer",
                           str(model), "--out", str(tmp_path / "t.npz"), "--min-count", "2"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "TQDM_DISABLE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert NgramStore.open(tmp_path / "t.npz").table_sizes()[2] == 1  # only "a b" (twice) is kept


@pytest.mark.parametrize("case, needle", [
    ("missing-corpus", "corpus path not found"),
    ("empty-corpus", "corpus is empty"),
    ("low-order", "between 2 and"),
    ("bad-orders", "bad n-gram orders"),
    ("unwritable-out", "is a file"),
    ("missing-model", "model not found"),
])
def test_cli_bad_input_is_one_error_line(case: str, needle: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    model = make_model(tmp_path / "model", ["a", "b"])
    (tmp_path / "c.txt").write_text("a b a\n")
    (tmp_path / "empty.txt").write_text("")
    args = {"corpus": str(tmp_path / "c.txt"), "tokenizer": str(model), "orders": "2..6",
            "out": str(tmp_path / "s.npz")}
    args.update({"missing-corpus": {"corpus": str(tmp_path / "nope")},
                 "empty-corpus": {"corpus": str(tmp_path / "empty.txt")},
                 "low-order": {"orders": "1..3"}, "bad-orders": {"orders": "two..six"},
                 "unwritable-out": {"out": str(tmp_path / "c.txt" / "s.npz")},
                 "missing-model": {"tokenizer": str(tmp_path / "no-model")}}[case])
    code, _, err = run_cli(capsys, "ngram", "build", "--quiet", *[x for k, v in args.items() for x in (f"--{k}", v)])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    assert not (tmp_path / "s.npz").exists()


def test_default_store_builds_once_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(artifacts, "DEFAULT_STORE_MAX_TOKENS", 5000)  # the real cap takes ~15 s
    model = make_model(tmp_path / "model", ["def", "self", "return", "the", "a", "of", "import"])
    items, description = ngram_build.stdlib_corpus()
    assert "standard library" in description and isinstance(items[0], str)  # reference topics (prose) first
    files = [i for i in items if isinstance(i, Path)]
    assert files and not any("site-packages" in f.parts or "test" in f.parts for f in files)
    path = artifacts.default_store(model, progress=False)
    assert path.is_relative_to(tmp_path / "cache" / "ngram") and path.is_file()
    store = NgramStore.open(path, tokenizer=load(model))
    assert store.token_count == 5000 and store.header["min_count"] == artifacts.DEFAULT_STORE_MIN_COUNT
    mtime = path.stat().st_mtime_ns
    assert artifacts.default_store(model, progress=False) == path and path.stat().st_mtime_ns == mtime  # reused


@pytest.mark.slow
def test_default_store_for_the_real_default_model(int8_model: Path, monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    monkeypatch.setenv("EDGEGEN_CACHE", str(tmp_path))
    monkeypatch.setattr(artifacts, "DEFAULT_STORE_MAX_TOKENS", 300_000)
    path = artifacts.default_store(int8_model, progress=False)
    tok = load(int8_model)
    store = NgramStore.open(path, tokenizer=tok)
    assert store.vocab_size == 49152
    hist = np.array([tok.encode("    def __init__(self")], np.int64)
    cands = np.array([tok.encode(",")[0], tok.encode(")")[0], tok.encode(" zebra")[0]])
    p = store.probabilities(hist, cands)
    assert p[0, 0] > 0.1 and p[0, 1] > 0 and p[0, 2] == 0


def test_adaptive_counts_are_exact_and_add_to_the_base_store(hand: NgramStore) -> None:
    """AdaptiveNgram (ADED-style counts of the prompt and the model's own output): every window counted once,
    pieces observed with their context count exactly as the whole text would, on top of the file store."""
    from edgegen.ngram import AdaptiveNgram

    rng = np.random.default_rng(0)
    text = rng.integers(1, 5, size=60).tolist()  # ids of a b c d: dense enough for repeats at every order
    alone, over = AdaptiveNgram(), AdaptiveNgram(hand)
    for store in (alone, over):
        store.observe(text[:20])  # the prompt
        for i in range(20, 60, 7):  # the output, a few tokens at a time, each piece with its history
            store.observe(text[i : i + 7], context=text[:i])
    windows = Counter(tuple(text[i : i + m]) for m in range(1, 7) for i in range(len(text) - m + 1))
    assert alone.windows == len(windows)
    for window, count in windows.items():
        if len(window) < 2:
            continue
        history, token, order = list(window[:-1]), window[-1], len(window)
        gram, ctx = alone.counts([history], [token], order=order)
        assert (int(gram[0, 0]), int(ctx[0])) == (count, windows[window[:-1]])
        base_gram, base_ctx = hand.counts([history], [token], order=order)
        gram, ctx = over.counts([history], [token], order=order)
        assert (int(gram[0, 0]), int(ctx[0])) == (count + int(base_gram[0, 0]), windows[window[:-1]] + int(base_ctx[0]))
    # the interpolation is the store's: same formula over the summed counts
    p = over.probabilities([text[-5:]], [1, 2, 3, 4])
    per_order = over.order_probabilities([text[-5:]], [1, 2, 3, 4])
    weights = np.array([DEFAULT_WEIGHTS[n] for n in over.orders], np.float32)
    assert np.allclose(p, np.tensordot(weights, per_order, axes=1))
    assert alone.vocab_size is None and over.vocab_size == hand.vocab_size
