"""Speculative decoding on the real default model: greedy output identical to AR, rollback exercised."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import edgegen
from edgegen.artifacts import default_drafter_model
from edgegen.errors import EdgegenError
from edgegen.integrity import sha256_file
from edgegen.manifest import read_manifest

PROMPTS = [
    ("def fibonacci(n):", False),
    ("import os\nimport sys\n\n\ndef main():\n    path = sys.argv[1]\n    if os.path.exists(path):\n", False),
    ("class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n", False),
    ("Repeat this sentence twice: the quick brown fox jumps over the lazy dog.", True),
    ("What is the capital of France?", True),
    ("List three uses of Python, one per line.", True),
    ("Rewrite in uppercase: edge devices run small language models.", True),
    ("The water cycle has four stages:", False),
]


def _assert_same_as_ar(gen: edgegen.Generator, strategy: str, **options) -> tuple[int, int]:
    proposed = accepted = 0
    for prompt, chat in PROMPTS:
        ar = gen.generate(prompt, max_new_tokens=48, chat=chat, strategy="ar")
        spec = gen.generate(prompt, max_new_tokens=48, chat=chat, strategy=strategy, **options)
        assert spec.token_ids == ar.token_ids, f"{strategy} on {gen.backend} differs from AR on {prompt!r}"
        assert spec.finish_reason == ar.finish_reason
        proposed += spec.stats.draft_proposed
        accepted += spec.stats.draft_accepted
    return proposed, accepted


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_prompt_lookup_greedy_equals_ar(backend: str, int8_model: Path) -> None:
    gen = edgegen.load(int8_model, backend=backend)
    proposed, accepted = _assert_same_as_ar(gen, "prompt-lookup")
    assert 0 < accepted < proposed  # drafts were accepted and rejected: rollback ran


@pytest.mark.extended  # a second real model as drafter (~60 s); the shipped drafter's test below stays in CI
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_model_drafter_greedy_equals_ar(backend: str, int8_model: Path, fp32_model: Path) -> None:
    # The fp32 export drafting for the int8 target: same tokenizer, close but not equal predictions.
    gen = edgegen.load(int8_model, backend=backend, draft=fp32_model)
    proposed, accepted = _assert_same_as_ar(gen, "speculative", num_draft_tokens=3)
    assert 0 < accepted < proposed


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_shipped_drafter_greedy_equals_ar(backend: str, int8_model: Path) -> None:
    # load() without model= is the default model, which int8_model is: speculative opens the shipped drafter.
    gen = edgegen.load(backend=backend)
    assert gen.folder == int8_model and gen.drafter is None
    proposed, accepted = _assert_same_as_ar(gen, "speculative", lookup=False)  # the drafter's own drafts only
    assert 0 < accepted < proposed
    shipped = read_manifest(default_drafter_model(progress=False))  # what speculative opened (exported once)
    assert shipped.extras["drafter"]["recipe"]["method"] == "fastdraft"
    assert gen.generate("hi", max_new_tokens=4).stats.strategy == "prompt-lookup"  # auto ignores the lazy drafter


def test_sampling_is_seeded_for_speculative(int8_model: Path, fp32_model: Path) -> None:
    gen = edgegen.load(int8_model, backend="onnxruntime", draft=fp32_model)
    kwargs = dict(max_new_tokens=24, temperature=0.8, top_p=0.95, seed=5, strategy="speculative")
    first, second = (gen.generate("Tell me about owls.", **kwargs) for _ in range(2))
    assert first.token_ids == second.token_ids and first.stats.draft_proposed > 0


def _copy_model(src: Path, dst: Path) -> Path:
    """A copy of an exported folder (graphs hard-linked where the file system allows: they are only read)."""

    def link_or_copy(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    dst.mkdir()
    for item in src.iterdir():
        if item.is_dir():
            shutil.copytree(item, dst / item.name, copy_function=link_or_copy)
        else:
            shutil.copy2(item, dst / item.name)
    return dst


def _rewrite(folder: Path, name: str, text: str) -> None:
    """Replace ``name`` and its size/sha256 record: another export, not a damaged one."""
    path = folder / name
    path.unlink()  # a new file, never one shared with the original folder
    path.write_text(text)
    manifest = json.loads((folder / "edgegen.json").read_text())
    if name in manifest.get("files", {}):
        manifest["files"][name] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    (folder / "edgegen.json").write_text(json.dumps(manifest))


def test_mismatched_drafter_is_refused(int8_model: Path, tmp_path: Path) -> None:
    other_vocab = _copy_model(int8_model, tmp_path / "vocab")
    manifest = json.loads((other_vocab / "edgegen.json").read_text())
    manifest["vocab_size"] = 32000
    _rewrite(other_vocab, "edgegen.json", json.dumps(manifest))
    with pytest.raises(EdgegenError, match="vocabulary"):
        edgegen.load(int8_model, backend="onnxruntime", draft=other_vocab)

    other_tokenizer = _copy_model(int8_model, tmp_path / "tokenizer")
    tok = json.loads((other_tokenizer / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = list(vocab)[300:302]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    _rewrite(other_tokenizer, "tokenizer.json", json.dumps(tok))
    with pytest.raises(EdgegenError, match="another tokenizer"):
        edgegen.load(int8_model, backend="onnxruntime", draft=other_tokenizer)


def test_speculative_without_draft_is_a_clear_error(int8_model: Path) -> None:
    with pytest.raises(EdgegenError, match="needs a draft model"):
        edgegen.load(int8_model, backend="onnxruntime").generate("hi", strategy="speculative")
