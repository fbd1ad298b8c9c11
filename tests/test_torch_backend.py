"""The torch backend (runtimes/torch_session.py) on the CPU: greedy equal to transformers, every strategy
equal to AR, rollback and prefix reuse, and the runtime path without torch.

Tiny random-weight models (test_families' configs) exported to the ``torch`` format only, which saves the
weights and builds no graph: seconds. The families checked are those whose attention reaches the cache
differently: full attention (Llama; Qwen and Phi-3 attend alike), a sliding window on every layer (Mistral),
alternating sliding and full layers with soft-capping (Gemma 2) and with a scaled embedding (Gemma 3); the
windows are 16 positions and decoding runs past them. The real default model against transformers and the ONNX
Runtime backend is marked real_torch (scripts/test.sh --all).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_cli import assert_one_line_error, edgegen
from test_families import PROMPTS, WINDOW, _hf_greedy, _tiny_model

import edgegen as eg
from edgegen.errors import EdgegenError
from edgegen.export.families import FAMILIES
from edgegen.manifest import read_manifest
from edgegen.runtimes import open_session

NEW_TOKENS = 40
CACHE_FAMILIES = [f for f in FAMILIES if f.model_type in ("llama", "mistral", "gemma2", "gemma3_text")]
STRATEGIES = [("prompt-lookup", {}), ("speculative", {}), ("superposed", {"num_drafts": 1, "alpha": 0.0})]
TORCH_ONLY = {"formats": ("torch",), "weights": "fp32", "quality_gate": False, "progress": False}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models: one thread is faster, and idle OpenMP threads spinning on a shared CI machine double the CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _export(hf: Path, out: Path) -> Path:
    from edgegen.export import export_model

    return export_model(hf, out, **TORCH_ONLY)


@pytest.fixture(scope="module")
def tiny_exports(tmp_path_factory: pytest.TempPathFactory):
    """model_type -> (transformers model, torch-format export), each built on first use."""
    built: dict[str, tuple[object, Path]] = {}

    def get(family):
        if family.model_type not in built:
            hf = tmp_path_factory.mktemp(f"tiny-{family.model_type}")
            model = _tiny_model(family, hf)
            built[family.model_type] = model, _export(hf, tmp_path_factory.mktemp(f"torch-{family.model_type}") / "m")
        return built[family.model_type]

    return get


@pytest.fixture(params=CACHE_FAMILIES, ids=[f.model_type for f in CACHE_FAMILIES])
def family_torch(request: pytest.FixtureRequest, tiny_exports):
    return (request.param, *tiny_exports(request.param))


@pytest.fixture
def llama_torch(tiny_exports):
    """The tiny Llama of the family tests, exported to the torch format, and its transformers model."""
    return tiny_exports(FAMILIES[0])


def test_greedy_equals_transformers_and_strategies_equal_ar(family_torch) -> None:
    family, model, folder = family_torch
    gen = eg.load(folder, backend="torch", draft=folder)  # the model drafts for itself
    assert gen.backend == "torch" and gen.session.device == "cpu"
    for prompt in PROMPTS:
        ar = gen.generate(prompt, max_new_tokens=NEW_TOKENS, chat=False, strategy="ar", ignore_eos=True)
        assert len(ar.prompt_token_ids) + NEW_TOKENS > WINDOW  # decoding runs past the sliding window
        assert ar.token_ids == _hf_greedy(model, ar.prompt_token_ids, NEW_TOKENS), \
            f"{family.model_type} on torch diverged from transformers on {prompt!r}"
        for strategy, options in STRATEGIES:
            out = gen.generate(prompt, max_new_tokens=NEW_TOKENS, chat=False, strategy=strategy, ignore_eos=True,
                               **options)
            assert out.token_ids == ar.token_ids, f"{strategy} differs from AR: {family.model_type} on torch"


def test_greedy_equals_transformers_generate(llama_torch) -> None:
    import torch

    model, folder = llama_torch
    gen = eg.load(folder, backend="torch")
    for prompt in PROMPTS:
        ar = gen.generate(prompt, max_new_tokens=NEW_TOKENS, chat=False, strategy="ar", ignore_eos=True)
        ids = ar.prompt_token_ids
        with torch.no_grad():  # transformers' own decode loop, with its own cache; EOS never stops it here
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                                 eos_token_id=None, pad_token_id=0)
        assert ar.token_ids == out[0, len(ids):].tolist()


def _ids(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, 500, size=n).astype(np.int64)


def test_trim_rolls_back_and_the_cache_remembers_its_ids(llama_torch) -> None:
    _, folder = llama_torch
    session = open_session(folder, read_manifest(folder), "torch")
    prompt, cont = _ids(12), _ids(8, seed=1)
    straight = session.forward(np.concatenate([prompt, cont]))
    assert straight.shape == (20, session.manifest.vocab_size) and straight.dtype == np.float32
    session.reset()
    session.forward(prompt)
    session.forward(_ids(5, seed=2))  # a rejected draft
    session.trim(len(prompt))
    assert session.position == len(prompt) and session.common_prefix(list(prompt) + [1]) == len(prompt)
    rolled = session.forward(cont)
    np.testing.assert_allclose(rolled, straight[len(prompt):], atol=1e-4)
    assert (rolled.argmax(-1) == straight[len(prompt):].argmax(-1)).all()
    ids = np.concatenate([prompt, cont])
    assert session.common_prefix(list(ids)) == 20
    assert session.common_prefix([*ids[:7], 1, *ids[8:]]) == 7
    session.trim(9)
    assert session.common_prefix(list(ids)) == 9
    session.reset()
    assert session.common_prefix(list(ids)) == 0 and session.position == 0


def test_forward_top_picks_on_the_device_what_numpy_picks_from_the_rows(llama_torch) -> None:
    import torch

    from edgegen.runtimes.base import top_tokens
    from edgegen.runtimes.torch_session import top_on_device

    _, folder = llama_torch
    session = open_session(folder, read_manifest(folder), "torch")
    prompt, cont = _ids(12), _ids(6, seed=1)
    session.forward(prompt)
    rows = session.forward(cont)
    for k in (1, 3):
        session.trim(len(prompt))
        top, want = session.forward_top(cont, k), top_tokens(rows, k)
        assert top.ids.tolist() == want.ids.tolist() and top.finite.all() and session.position == 18
        np.testing.assert_allclose(top.logits, want.logits, atol=1e-4)
    session.trim(len(prompt))
    assert session.forward_top(cont, last_only=True).argmax == [int(rows[-1].argmax())]
    with pytest.raises(ValueError):
        session.forward_top(cont, 0)
    assert session.position == 18  # a refused k runs nothing
    # equal maxima and a NaN row as NumPy has them: the lowest id; the NaN row flagged
    tied = np.array([[1, 5, 5, 0], [2, 2, 2, 2], [0, np.nan, 9, 9]], np.float32)
    got = top_on_device(torch.from_numpy(tied), 1)
    assert got.argmax == np.argmax(tied, -1).tolist() and got.finite.tolist() == [True, True, False]
    assert top_on_device(torch.from_numpy(tied[:1]), 2).ids.tolist() == [[1, 2]]
    # greedy AR and prompt lookup copy back the prefill's last row only: every step after it asks forward_top
    gen = eg.load(folder, backend="torch")
    calls: list[int] = []
    forward = gen.session.forward
    gen.session.forward = lambda token_ids, *a, **k: calls.append(len(token_ids)) or forward(token_ids, *a, **k)
    for strategy in ("ar", "prompt-lookup"):
        calls.clear()
        out = gen.generate(PROMPTS[0], max_new_tokens=12, chat=False, ignore_eos=True, strategy=strategy)
        assert len(out.token_ids) == 12 and len(calls) == 1, strategy


def test_last_only_embeddings_hidden_states_and_limits(llama_torch) -> None:
    import torch

    model, folder = llama_torch
    session = open_session(folder, read_manifest(folder), "torch", max_length=24)
    ids = _ids(16)
    full = session.forward(ids)
    session.reset()
    last = session.forward(ids, last_only=True)
    assert last.shape == (1, session.manifest.vocab_size)
    np.testing.assert_allclose(last, full[-1:], atol=1e-4)
    session.reset()  # input embeddings give what ids give: superposed decoding feeds mixes of these rows
    np.testing.assert_allclose(session.forward_embeddings(session.embed(ids)), full, atol=1e-4)
    assert session.common_prefix(list(ids)) == 0  # rows fed as embeddings are never matched as ids
    session.reset()
    session.forward(ids, hidden=True)
    with torch.no_grad():
        reference = model.model(torch.tensor([ids])).last_hidden_state[0].numpy()
    np.testing.assert_allclose(session.hidden_states(), reference, atol=1e-4)
    with pytest.raises(EdgegenError, match="exceeds"):
        session.forward(_ids(9))
    with pytest.raises(ValueError):
        session.trim(17)
    with pytest.raises(EdgegenError, match="shape"):
        session.forward_embeddings(np.zeros((2, 3), np.float32))


def test_prefix_reuse_equals_a_cold_run(llama_torch) -> None:
    _, folder = llama_torch
    gen = eg.load(folder, backend="torch")
    rows: list[int] = []
    forward = gen.session.forward
    gen.session.forward = lambda token_ids, *a, **k: rows.append(len(token_ids)) or forward(token_ids, *a, **k)
    first = gen.generate(PROMPTS[1], max_new_tokens=12, chat=False, ignore_eos=True)
    longer = PROMPTS[1] + gen.tokenizer.decode(first.token_ids) + " The cat"
    rows.clear()
    warm = gen.generate(longer, max_new_tokens=20, chat=False, ignore_eos=True, strategy="ar")
    cold = eg.load(folder, backend="torch").generate(longer, max_new_tokens=20, chat=False, ignore_eos=True,
                                                     strategy="ar")
    assert warm.token_ids == cold.token_ids
    assert rows[0] < len(warm.prompt_token_ids) - 10  # the previous prompt and answer stayed in the cache


def test_cli_runs_the_torch_backend(llama_torch) -> None:
    _, folder = llama_torch
    proc = edgegen("run", "--model", str(folder), "--backend", "torch", "--max-new-tokens", "6", "--raw", "--json",
                   "The cat", env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert '"backend": "torch"' in proc.stdout


def test_torch_absent_runtime_imports_and_backend_is_one_line(llama_torch) -> None:
    _, folder = llama_torch
    block = "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None; "
    check = ("import edgegen, edgegen.runtimes as r; "
             "assert r.available_devices()['torch'] == [] and r.available_devices()['onnxruntime'] == ['CPU']; "
             "r.check_backend('onnxruntime'); assert sys.modules['torch'] is None; ")
    proc = edgegen("run", "--model", str(folder), "--backend", "torch", "--raw", "The cat", prelude=block + check)
    assert_one_line_error(proc, "edgegen[torch]")


def test_torch_format_refuses_quantized_weights(tmp_path: Path) -> None:
    from edgegen.export import export_model

    (tmp_path / "hf").mkdir()
    with pytest.raises(EdgegenError, match="fp32 or fp16") as e:
        export_model(tmp_path / "hf", tmp_path / "out", formats=("torch",), weights="int8", progress=False)
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


@pytest.mark.real_torch  # ~2 min of CPU: beyond CI's budget, run by scripts/test.sh --all
def test_default_model_equals_transformers_and_onnxruntime(hf_dir: Path, hf_model, fp32_model: Path,
                                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    from test_parity import NEW_TOKENS as PARITY_TOKENS
    from test_parity import PROMPTS as PARITY_PROMPTS
    from test_parity import _hf_greedy as hf_generate

    folder = _export(hf_dir, tmp_path_factory.mktemp("default-torch") / "model")
    torch_gen, ort_gen = eg.load(folder, backend="torch"), eg.load(fp32_model, backend="onnxruntime")
    eos = set(torch_gen.manifest.eos_token_ids)
    for prompt, chat in PARITY_PROMPTS:
        ar = torch_gen.generate(prompt, max_new_tokens=PARITY_TOKENS, chat=chat, strategy="ar")
        assert ar.token_ids == hf_generate(hf_model, ar.prompt_token_ids, eos), f"torch diverged on {prompt!r}"
        ort = ort_gen.generate(prompt, max_new_tokens=PARITY_TOKENS, chat=chat, strategy="ar")
        assert ar.token_ids == ort.token_ids
        lookup = torch_gen.generate(prompt, max_new_tokens=PARITY_TOKENS, chat=chat, strategy="prompt-lookup")
        assert lookup.token_ids == ar.token_ids
