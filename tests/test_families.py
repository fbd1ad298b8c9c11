"""Every supported family: a tiny random-weight model built in-process, exported to both formats at each
precision its row lists (fp32 for all, int8 for two).

At fp32, greedy output equals transformers' for 40 new tokens on both backends (past the tiny sliding
windows of Mistral, Gemma 2 and Gemma 3: 16 positions); at int8 the export passes its quality gate and
transformers' fp32 model picks the same token at >= 90% of the 40 steps (teacher-forced: int8 rounding
flips some near-ties of a random model). Each strategy's greedy output equals AR's (superposed, which
needs the input-embedding graphs, at fp32). The families and what is checked come from
export/families.py (FAMILIES), the table `edgegen models` prints. Each family's tiny model is built once
and each (family, precision) exported once (module scope); the tests using them are marked slow.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import edgegen
from edgegen.errors import EdgegenError
from edgegen.export.families import FAMILIES, Family, family_of

NEW_TOKENS = 40
INT8_AGREEMENT = 0.9  # int8: transformers' fp32 greedy pick at this share of the steps at least (fp32: all)
WINDOW = 16  # the sliding window of the tiny configs that have one (families.py)
PROMPTS = ["def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
           "The cat sat on the mat. The cat sat on the"]
STRATEGIES = [("prompt-lookup", {}), ("speculative", {}), ("superposed", {"num_drafts": 1, "alpha": 0.0})]
BACKENDS = ["onnxruntime", "openvino"]


def _train_tokenizer(folder: Path) -> int:
    """A small byte-level BPE (512 pieces) trained on standard-library source; returns its vocabulary size."""
    import inspect
    import json as json_module
    import textwrap

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    corpus = [inspect.getsource(m) for m in (json_module, textwrap, inspect)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "add_bos_token": False}))
    return tok.get_vocab_size()


def _tiny_model(family: Family, folder: Path):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    vocab = _train_tokenizer(folder)
    config = AutoConfig.for_model(
        family.model_type, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=256, bos_token_id=0, eos_token_id=0,
        pad_token_id=0, **family.tiny)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # random init gives near-flat logits; sharper ones make greedy parity a real check
        model.get_input_embeddings().weight.mul_(4.0)
    model.save_pretrained(str(folder))
    return model


CASES = [(family, weights) for family in FAMILIES for weights in family.weights]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory):
    """family -> (its tiny transformers model, its HF folder), each built once and shared by its precisions."""
    built: dict[str, tuple] = {}

    def get(family: Family) -> tuple:
        if family.model_type not in built:
            hf = tmp_path_factory.mktemp(f"tiny-{family.model_type}")
            built[family.model_type] = (_tiny_model(family, hf), hf)
        return built[family.model_type]

    return get


@pytest.fixture(scope="module", params=CASES, ids=[f"{f.model_type}-{w}" for f, w in CASES])
def family_export(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_models):
    from edgegen.export import export_model

    family, weights = request.param
    model, hf = tiny_models(family)
    # superposed decoding (the input-embedding graphs) is checked at fp32; int8 adds the gate (CI time)
    out = export_model(hf, tmp_path_factory.mktemp(f"export-{family.model_type}-{weights}") / "model",
                       formats=family.formats, weights=weights, quality_gate=weights != "fp32", progress=False,
                       embeddings=weights == "fp32")
    return family, weights, model, out


def _hf_greedy(model, ids: list[int], n: int) -> list[int]:
    """transformers' greedy tokens, one full forward per token (no cache: the plainest reference)."""
    import torch

    seq = list(ids)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(ids):]


def _hf_agreement(model, ids: list[int], tokens: list[int]) -> float:
    """The share of ``tokens`` (generated after ``ids``) that are transformers' fp32 argmax given the tokens
    before them (one forward over the whole sequence, teacher-forced)."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([list(ids) + list(tokens)])).logits[0, len(ids) - 1:-1]
    return float((logits.argmax(-1) == torch.tensor(tokens)).float().mean())


@pytest.mark.slow  # exports (conftest marks only its own fixtures)
@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_equals_transformers_and_strategies_equal_ar(family_export, backend: str) -> None:
    family, weights, model, folder = family_export
    fp32 = weights == "fp32"
    gen = edgegen.load(folder, backend=backend, draft=folder, embeddings=fp32)  # the model drafts for itself
    graph = gen.manifest.graph("onnx" if backend == "onnxruntime" else "openvino")
    if graph.weights != "fp32":  # a quantized export records its gate, and passes it
        assert graph.quality["ratio"] > 0 and not graph.quality["flagged"], graph.quality
    for prompt in PROMPTS:
        ar = gen.generate(prompt, max_new_tokens=NEW_TOKENS, chat=False, strategy="ar", ignore_eos=True)
        assert len(ar.prompt_token_ids) + NEW_TOKENS > WINDOW  # decoding runs past the sliding window
        if fp32:
            expected = _hf_greedy(model, ar.prompt_token_ids, NEW_TOKENS)
            assert ar.token_ids == expected, f"{family.model_type} on {backend} diverged from transformers: {prompt!r}"
        else:  # quantized weights move near-ties of a random model: transformers' fp32 pick at >= 90% of the steps
            agreement = _hf_agreement(model, ar.prompt_token_ids, ar.token_ids)
            assert agreement >= INT8_AGREEMENT, (f"{family.model_type} {graph.weights} on {backend}: fp32 "
                                                 f"transformers agrees on {agreement:.0%} of {prompt!r}")
        for strategy, options in STRATEGIES if fp32 else STRATEGIES[:-1]:  # superposed needs the embeddings graphs
            out = gen.generate(prompt, max_new_tokens=NEW_TOKENS, chat=False, strategy=strategy, ignore_eos=True,
                               **options)
            assert out.token_ids == ar.token_ids, f"{strategy} differs from AR: {family.model_type} on {backend}"


def test_unsupported_architecture_is_refused_before_any_work(tmp_path: Path) -> None:
    from edgegen.export import export_model

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba", "architectures": ["MambaForCausalLM"]}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(EdgegenError) as e:
        export_model(tmp_path, tmp_path / "out", progress=False)
    message = str(e.value)
    assert "\n" not in message and "'mamba'" in message and "gemma3_text" in message and "llama" in message
    assert not (tmp_path / "out").exists()


def test_family_of_reads_a_multimodal_wrapper() -> None:
    assert family_of({"model_type": "gemma3", "text_config": {"model_type": "gemma3_text"}}).model_type == "gemma3_text"
    with pytest.raises(EdgegenError, match="unsupported model architecture 'gpt2'"):
        family_of({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})


@pytest.mark.parametrize("doc", ["README.md", "docs/models.md"])
def test_models_table_in_the_docs_is_the_generated_one(doc: str) -> None:
    from edgegen.export.families import models_table

    text = (Path(__file__).resolve().parents[1] / doc).read_text()
    assert models_table() in text, f"{doc}: paste the output of `edgegen models`"


# --- the real Gemma 3 270M, from its GGUF --------------------------------------------------------------

GEMMA_PROMPTS = [("The capital of France is", False), ("def fibonacci(n):\n", False),
                 ("Photosynthesis is the process", False), ("What is the boiling point of water?", True)]


@pytest.fixture(scope="module")
def gemma3_fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Gemma 3 270M exported from its GGUF at fp32, both formats (kept under EDGEGEN_TEST_CACHE between runs)."""
    import os

    from test_gguf_tokenizer import gemma_gguf

    from edgegen.export import export_model
    from edgegen.manifest import is_model_folder

    root = os.environ.get("EDGEGEN_TEST_CACHE")
    out = (Path(root) / "gemma3-fp32" if root else tmp_path_factory.mktemp("gemma3-fp32")) / "model"
    if not is_model_folder(out):
        export_model(gemma_gguf(), out, weights="fp32", quality_gate=False, progress=False)
    return out


@pytest.fixture(scope="module")
def gemma3_hf():
    import torch
    from test_gguf_tokenizer import gemma_gguf
    from transformers import AutoModelForCausalLM

    path = gemma_gguf()
    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


@pytest.mark.slow
@pytest.mark.real_gemma
@pytest.mark.parametrize("backend", BACKENDS)
def test_gemma3_270m_gguf_greedy_equals_transformers(gemma3_fp32: Path, gemma3_hf, backend: str) -> None:
    import torch

    gen = edgegen.load(gemma3_fp32, backend=backend)
    assert gen.manifest.add_bos and gen.tokenizer.id_to_token(gen.manifest.eos_token_ids[-1]) == "<end_of_turn>"
    for prompt, chat in GEMMA_PROMPTS:
        ar = gen.generate(prompt, max_new_tokens=NEW_TOKENS, chat=chat, strategy="ar")
        ids = ar.prompt_token_ids
        assert ids[0] == gen.manifest.bos_token_id and ids.count(gen.manifest.bos_token_id) == 1
        eos = gen.manifest.eos_token_ids
        with torch.no_grad():
            out = gemma3_hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                     max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=eos, pad_token_id=0)
        expected = out[0, len(ids):].tolist()
        expected = expected[:next((i for i, t in enumerate(expected) if t in eos), len(expected))]
        assert len(ar.token_ids) >= min(32, len(expected))
        assert ar.token_ids == expected, f"{backend} diverged from transformers on {prompt!r}"
        lookup = gen.generate(prompt, max_new_tokens=NEW_TOKENS, chat=chat, strategy="prompt-lookup")
        assert lookup.token_ids == ar.token_ids


GEMMA3 = next(f for f in FAMILIES if f.model_type == "gemma3_text")


@pytest.fixture(scope="module", params=GEMMA3.gated, ids=lambda w: f"gemma3-{w}")
def gemma3_quantized(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Gemma 3 270M exported from its GGUF at int8 / int4 as a user would (default settings, quality gate on), both
    formats (kept under EDGEGEN_TEST_CACHE between runs)."""
    import os

    from test_gguf_tokenizer import gemma_gguf

    from edgegen.export import export_model
    from edgegen.manifest import is_model_folder

    root = os.environ.get("EDGEGEN_TEST_CACHE")
    name = f"gemma3-{request.param}"
    out = (Path(root) / name if root else tmp_path_factory.mktemp(name)) / "model"
    if not is_model_folder(out):
        export_model(gemma_gguf(), out, weights=request.param, progress=False)
    return out


@pytest.mark.slow
@pytest.mark.real_gemma
def test_gemma3_270m_quantized_passes_the_quality_gate_and_strategies_equal_ar(gemma3_quantized: Path) -> None:
    from edgegen.export.quality import THRESHOLDS
    from edgegen.manifest import read_manifest

    manifest = read_manifest(gemma3_quantized)
    assert set(manifest.graphs) == {"onnx", "openvino"}
    for fmt, graph in manifest.graphs.items():  # the gate's record: perplexity over fp32 torch, within the limit
        q = graph.quality
        assert q["ppl_fp32"] > 0 and q["ratio"] == pytest.approx(q["ppl"] / q["ppl_fp32"], abs=1e-3)
        assert q["ratio"] <= THRESHOLDS[graph.weights] and not q["flagged"], f"{fmt} {graph.weights}: {q}"
    for backend in BACKENDS:
        gen = edgegen.load(gemma3_quantized, backend=backend)
        for prompt, chat in GEMMA_PROMPTS[:2]:
            ar = gen.generate(prompt, max_new_tokens=NEW_TOKENS, chat=chat, strategy="ar", ignore_eos=True)
            lookup = gen.generate(prompt, max_new_tokens=NEW_TOKENS, chat=chat, strategy="prompt-lookup",
                                  ignore_eos=True)
            assert lookup.token_ids == ar.token_ids, f"{manifest.graphs['onnx'].weights} {backend} {prompt!r}"


def test_a_builder_failure_is_one_line_naming_stage_and_model(tmp_path: Path, monkeypatch) -> None:
    import edgegen.export.onnx as onnx_export
    from edgegen.export import export_model

    hf = tmp_path / "tiny-llama"
    hf.mkdir()
    _tiny_model(FAMILIES[0], hf)

    def broken(*args, **kwargs):
        raise KeyError("rope_type")

    monkeypatch.setattr(onnx_export, "build_onnx", broken)
    with pytest.raises(EdgegenError) as e:
        export_model(hf, tmp_path / "out", formats=("onnx",), weights="fp32", quality_gate=False, progress=False)
    assert str(e.value) == "build ONNX (fp32) failed for tiny-llama: KeyError: 'rope_type'"
    assert not (tmp_path / "out").exists()
