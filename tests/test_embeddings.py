"""Input-embedding graphs (superposed decoding) on both backends, on the real default model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgegen.errors import EdgegenError
from edgegen.manifest import Manifest, read_manifest
from edgegen.runtimes import open_session

BACKENDS = ["onnxruntime", "openvino"]
GREEDY_TOKENS = 40
# The check at export time found the fp32 embeddings graphs bit-identical to the ids graphs; allow
# for kernel choices that may differ between runs.
ATOL = 1e-3
THREADS = 1  # the machine is shared


def _ids(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(200, 20000, size=n).astype(np.int64)


def _prompt(folder: Path) -> np.ndarray:
    from edgegen.tokenizer import TextTokenizer

    manifest = read_manifest(folder)
    return np.asarray(TextTokenizer(folder, manifest).encode_prompt("def fibonacci(n):", False), np.int64)


def _greedy(step, prompt: np.ndarray, n: int) -> list[int]:
    """n greedy tokens; step(ids) returns the logits of its last row."""
    tokens = [int(step(prompt).argmax())]
    for _ in range(n - 1):
        tokens.append(int(step(np.array([tokens[-1]])).argmax()))
    return tokens


@pytest.mark.parametrize("backend", BACKENDS)
def test_embeddings_graph_equals_ids_graph(backend: str, fp32_model: Path) -> None:
    manifest = read_manifest(fp32_model)
    plain = open_session(fp32_model, manifest, backend, threads=THREADS)
    emb = open_session(fp32_model, manifest, backend, embeddings=True, threads=THREADS)
    ids = _ids(24)
    table = emb.embed(ids)
    assert table.shape == (24, manifest.hidden_size) and table.dtype == np.float32
    np.testing.assert_allclose(emb.forward_embeddings(table), plain.forward(ids), atol=ATOL)
    assert emb.position == 24

    prompt = _prompt(fp32_model)
    plain.reset()
    emb.reset()
    expected = _greedy(lambda x: plain.forward(x, last_only=True)[-1], prompt, GREEDY_TOKENS)
    fed = _greedy(lambda x: emb.forward_embeddings(emb.embed(x), last_only=True)[-1], prompt, GREEDY_TOKENS)
    assert fed == expected
    emb.reset()
    # Plain token ids on an embeddings session: embedded, then forwarded (so every strategy runs on it).
    assert _greedy(lambda x: emb.forward(x, last_only=True)[-1], prompt, GREEDY_TOKENS) == expected


@pytest.mark.parametrize("backend", BACKENDS)
def test_superposed_input_and_rollback(backend: str, fp32_model: Path) -> None:
    emb = open_session(fp32_model, read_manifest(fp32_model), backend, embeddings=True, threads=THREADS)
    prompt, cont = _ids(12), _ids(6, seed=1)
    straight = emb.forward(np.concatenate([prompt, cont]))[-len(cont):]

    emb.reset()
    emb.forward(prompt)
    a, b = emb.embed(np.array([1000, 2000]))
    alone = []
    for x in (a, b):
        alone.append(emb.forward_embeddings(x[None])[0])
        emb.trim(len(prompt))
    mixed = emb.forward_embeddings((0.5 * a + 0.5 * b)[None])[0]
    assert emb.position == len(prompt) + 1
    assert np.isfinite(mixed).all()
    for logits in alone:
        assert np.abs(mixed - logits).max() > 0.1

    # Rolling the superposed step (and more) back leaves the cache as if it never happened.
    emb.forward_embeddings(np.stack([a, b, 0.3 * a + 0.7 * b]))
    emb.trim(len(prompt))
    assert emb.position == len(prompt)
    np.testing.assert_allclose(emb.forward_embeddings(emb.embed(cont)), straight, atol=2e-2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_embeddings_and_bad_input(backend: str, fp32_model: Path) -> None:
    manifest = read_manifest(fp32_model)
    without = replace(manifest, embeddings=None)  # what an export without --embeddings declares
    with pytest.raises(EdgegenError, match=r"re-export it with `edgegen export --embeddings`"):
        open_session(fp32_model, without, backend, embeddings=True)
    plain = open_session(fp32_model, manifest, backend, threads=THREADS)
    assert not hasattr(plain, "forward_embeddings")  # strategies tell the two kinds of session apart

    emb = open_session(fp32_model, manifest, backend, embeddings=True, threads=THREADS)
    with pytest.raises(EdgegenError, match="shape"):
        emb.forward_embeddings(np.zeros((3, manifest.hidden_size + 1), np.float32))
    with pytest.raises(EdgegenError, match="token ids"):
        emb.embed(np.array([manifest.vocab_size]))
    assert emb.position == 0


def test_manifest_round_trip_and_old_manifests(fp32_model: Path) -> None:
    manifest = read_manifest(fp32_model)
    assert manifest.has_embeddings() and manifest.embeddings is not None
    assert manifest.embeddings.scale == 1.0  # SmolLM2 does not scale its embeddings
    assert {g.inputs.get("inputs_embeds") for g in manifest.embeddings.graphs.values()} == {"inputs_embeds"}
    assert all(g.quality["embeddings_check"]["argmax_agreement"] == 1.0 for g in manifest.embeddings.graphs.values())
    import json
    from dataclasses import asdict

    assert Manifest.from_dict(json.loads(manifest.to_json())) == manifest
    old = asdict(manifest)
    del old["embeddings"]  # a manifest written before input-embedding graphs existed
    assert Manifest.from_dict(old).embeddings is None and not Manifest.from_dict(old).has_embeddings()


def test_default_model_gets_embeddings_on_demand(int8_model: Path, hf_dir: Path, monkeypatch) -> None:
    """resolve_model(embeddings=True) adds the graphs to the cached default export, keeping its graphs."""
    import edgegen
    from edgegen.export import source
    from edgegen.models import resolve_model
    from edgegen.profiles import load_profile

    before = read_manifest(int8_model)
    if not before.has_embeddings():
        # The session's converted copy of the same GGUF: saves converting it again (a minute or two).
        monkeypatch.setattr(source, "materialize_hf", lambda src, dest: hf_dir)
    assert resolve_model(None, load_profile("cpu"), embeddings=True) == int8_model
    after = read_manifest(int8_model)
    assert after.has_embeddings() and after.graphs == before.graphs
    assert after.embeddings.dtype == "float32"

    prompt = _prompt(int8_model)
    for backend in BACKENDS:
        gen = edgegen.load(None, backend=backend, embeddings=True, threads=THREADS)
        assert hasattr(gen.session, "forward_embeddings")
        plain = open_session(int8_model, after, backend, threads=THREADS)
        tokens = _greedy(lambda x, s=plain: s.forward(x, last_only=True)[-1], prompt, 24)
        # Teacher-forced: the next-token choice of both graphs along the same sequence.
        seq = np.concatenate([prompt, tokens[:-1]])
        plain.reset()
        ids_next = plain.forward(seq).argmax(-1)
        emb_next = gen.session.forward_embeddings(gen.session.embed(seq)).argmax(-1)
        agreement = (ids_next == emb_next).mean()
        # ONNX int8 keeps a float embedding lookup: exact. OpenVINO int8 quantizes its lookup (NNCF).
        assert agreement == 1.0 if backend == "onnxruntime" else agreement >= 0.9, (backend, agreement)
