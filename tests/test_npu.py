"""The Core Ultra NPU profile (static shapes, symmetric int4) run through NPUW on the CPU.

OpenVINO's NPUW can place the NPU graph's pieces on the CPU (NPUW_DEVICES=CPU), which exercises the same
compile path, static-shape limits, generation step length and rollback as a real NPU. A tiny random Llama
does not compile in NPUW 2026.4.1 (docs/npu.md), so the CI tests run the default model's existing int8 export
on the NPU path, with small static shapes in its manifest; the NPU export's own checks (int4, embeddings IR, superposed,
the LUD-tuned model) are marked ``real_npu`` (scripts/test.sh --all).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgegen
from edgegen.errors import EdgegenError
from edgegen.manifest import read_manifest
from edgegen.runtimes.openvino_session import NPUW_ENV

PROMPTS = (("def fibonacci(n):", False), ("Explain photosynthesis in two sentences.", True))


@pytest.fixture(autouse=True)
def _npuw_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NPUW_ENV, "CPU")


SHAPES = {"max_prompt_len": 128, "min_response_len": 64, "max_generation_len": 8}
# How far a row's logits may move with the call it is in on NPUW's CPU placement (runtimes.openvino_npu.
# npuw_device_properties; docs/npu.md): the session's row_noise for rows after a call's first; a call's first row
# (every AR token's) within FIRST_ROW_NOISE (measured: 2e-5 on a cache AR's way, 0.0042 where an earlier multi-row
# call wrote the cache: its keys and values carry that call's row noise).
NPU_ROW_NOISE, FIRST_ROW_NOISE = 0.02, 0.005


@pytest.fixture(scope="module")
def npu_int8(int8_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model's int8 export (hard links) with small static shapes in its manifest: a prefill of 128
    rows instead of the profile's 1024 keeps the tests short (a real NPU export takes minutes more)."""
    out = tmp_path_factory.mktemp("npu-int8") / "model"
    shutil.copytree(int8_model, out, copy_function=os.link)
    manifest = json.loads((out / "edgegen.json").read_text())
    (out / "edgegen.json").unlink()  # a link to the original: write a new file
    (out / "edgegen.json").write_text(json.dumps({**manifest, "static_shapes": SHAPES}))
    return out


@pytest.fixture(scope="module")
def npu_gen(npu_int8: Path) -> edgegen.Generator:
    """That export on the NPU path, the shipped drafter on the CPU (the profile's placement)."""
    from edgegen.artifacts import default_drafter_model

    os.environ[NPUW_ENV] = "CPU"  # a module fixture opens before the autouse one
    return edgegen.load(npu_int8, device="NPU", draft=default_drafter_model("cpu", progress=False))


@pytest.mark.extended  # NPUW compiles of the target and drafter (minutes): scripts/test.sh --all
def test_npu_session_steps_and_rolls_back_like_a_fresh_run(npu_gen: edgegen.Generator) -> None:
    session = npu_gen.session
    assert (session.device, session.max_step, session.max_length) == ("NPU", 8, 128 + 64)
    prompt = np.arange(40, 60, dtype=np.int64)
    tokens = np.arange(100, 112, dtype=np.int64)
    session.reset()
    session.forward(prompt, last_only=True)
    one_by_one = np.concatenate([session.forward(tokens[i : i + 1]) for i in range(len(tokens))])
    session.trim(len(prompt))  # drop all 12: NPUW still holds their entries, which must not be attended
    chunked = session.forward(tokens)  # 12 rows > max_step: two calls
    assert chunked.shape == one_by_one.shape
    # Rows move with the call they are in (NPUW places a call's keys after its static cache), by less than
    # NPU_ROW_NOISE on the CPU placement (with NPUW's f16 interconnect: up to 0.03).
    assert session.row_noise == NPU_ROW_NOISE  # what greedy verification allows for (strategies.verify)
    np.testing.assert_allclose(chunked, one_by_one, rtol=0, atol=NPU_ROW_NOISE)
    np.testing.assert_allclose(chunked[[0, 8]], one_by_one[[0, 8]], rtol=0, atol=FIRST_ROW_NOISE)  # calls' first
    session.trim(len(prompt) + 3)
    again = session.forward(tokens[3:7])
    np.testing.assert_allclose(again, one_by_one[3:7], atol=0.05)
    np.testing.assert_allclose(again[0], one_by_one[3], rtol=0, atol=FIRST_ROW_NOISE)
    assert session.position == len(prompt) + 7


@pytest.mark.extended  # NPUW compiles of the target and drafter (minutes): scripts/test.sh --all
def test_every_strategy_matches_npu_ar(npu_gen: edgegen.Generator) -> None:
    strategies = (("prompt-lookup", {}), ("speculative", {}),
                  ("prompt-lookup", {"num_draft_tokens": 16, "max_draft_tokens": 16}))  # drafts cut to one NPU call
    accepted = 0
    for prompt, chat in PROMPTS:
        want = npu_gen.generate(prompt, max_new_tokens=20, chat=chat, strategy="ar", ignore_eos=True)
        for strategy, options in strategies:
            got = npu_gen.generate(prompt, max_new_tokens=20, chat=chat, strategy=strategy, ignore_eos=True,
                                   **options)
            assert got.token_ids == want.token_ids, (strategy, options, prompt)
            assert got.stats.device == "NPU"
            accepted += got.stats.draft_accepted
    assert accepted > 0  # multi-token NPU calls were verified and rolled back


@pytest.mark.extended  # NPUW compiles of the target and drafter (minutes): scripts/test.sh --all
def test_requests_the_static_shapes_cannot_hold_are_refused_before_any_token(npu_gen: edgegen.Generator) -> None:
    with pytest.raises(EdgegenError, match="exceeds the 128 tokens"):
        npu_gen.stream(list(range(3, 132)), max_new_tokens=4)  # refused at the call, nothing streamed
    with pytest.raises(EdgegenError, match="exceeds the 192 tokens"):
        npu_gen.stream(list(range(3, 103)), max_new_tokens=100)


@pytest.mark.extended  # NPUW compiles of the target and drafter (minutes): scripts/test.sh --all
def test_cli_too_long_prompt_is_one_error_line_before_any_text(npu_int8: Path) -> None:
    code = "import sys; from edgegen.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "run", "--model", str(npu_int8), "--device", "NPU", "--raw",
                           "--max-new-tokens", "8", "cat " * 200], capture_output=True, text=True, timeout=600,
                          env={**os.environ, NPUW_ENV: "CPU"})
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and proc.stdout == ""
    assert len(lines) == 1 and lines[0].startswith("error:") and "exceeds the 128 tokens" in lines[0], proc.stderr


@pytest.mark.real_npu  # a second NPU compile of the target: outside the CI budget
def test_draft_device_override(npu_int8: Path, npu_gen: edgegen.Generator) -> None:
    from edgegen.artifacts import default_drafter_model

    assert npu_gen.drafter.session.device == "CPU"  # the profile's placement
    drafter = default_drafter_model("cpu", progress=False)
    on_npu = edgegen.load(npu_int8, device="NPU", draft=drafter, draft_device="NPU")
    assert on_npu.drafter.session.device == "NPU"
    prompt, chat = PROMPTS[1]
    got = on_npu.generate(prompt, max_new_tokens=24, chat=chat, strategy="speculative", ignore_eos=True, lookup=False)
    want = npu_gen.generate(prompt, max_new_tokens=24, chat=chat, strategy="ar", ignore_eos=True)
    assert got.token_ids == want.token_ids and got.stats.draft_proposed > 0
    with pytest.raises(EdgegenError, match="unknown draft device"):
        edgegen.load(npu_int8, device="NPU", draft=drafter, draft_device="TPU")


def test_npu_absent_without_npuw(int8_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NPUW_ENV, raising=False)
    with pytest.raises(EdgegenError, match="not present"):
        edgegen.load(int8_model, device="NPU")


# --- the real default model (scripts/test.sh --all) -----------------------------------------------------------


@pytest.fixture(scope="module")
def npu_model(hf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgegen.export import export_model

    return export_model(hf_dir, tmp_path_factory.mktemp("npu") / "model", profile="core-ultra-npu",
                        progress=False)


@pytest.mark.real_npu
def test_npu_export_is_symmetric_int4_with_static_shapes_and_embeddings(npu_model: Path) -> None:
    manifest = read_manifest(npu_model)
    graph = manifest.graph("openvino")
    assert (graph.weights, graph.sym, graph.group_size) == ("int4", True, 128)
    assert manifest.profile == "core-ultra-npu" and "onnx" not in manifest.graphs
    assert manifest.static_shapes == {"max_prompt_len": 1024, "min_response_len": 128, "max_generation_len": 8}
    assert manifest.has_embeddings()


def ar_margins(gen: edgegen.Generator, want: edgegen.GenerationResult) -> np.ndarray:
    """AR's own gap between its best and second-best logit before each token of ``want`` (one token per
    call, as AR runs)."""
    session = gen.session
    session.reset()
    rows = [session.forward(np.asarray(want.prompt_token_ids), last_only=True)[-1]]
    rows += [session.forward(np.array([t]))[-1] for t in want.token_ids[:-1]]
    top2 = np.sort(np.stack(rows), axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def assert_npu_ar_tokens(got: edgegen.GenerationResult, want: edgegen.GenerationResult, margins: np.ndarray,
                         what: object) -> None:
    """``got`` is AR's output. Verification leaves a token that a call's later row decided within the session's
    row noise to the next call's first row (strategies.verify.within_row_noise), computed as AR's, so only a tie
    within a first row's noise could turn (AR's top two within 2 * FIRST_ROW_NOISE there); nowhere else."""
    n = next((i for i, (a, b) in enumerate(zip(got.token_ids, want.token_ids, strict=True)) if a != b), None)
    if n is not None:
        assert margins[n] < 2 * FIRST_ROW_NOISE, (what, n, float(margins[n]))


@pytest.mark.real_npu
def test_real_model_every_strategy_matches_npu_ar(npu_model: Path, cache_root: Path) -> None:
    gen = edgegen.load(npu_model, device="NPU", draft="default")  # the shipped FastDraft drafter, on the CPU
    lud = edgegen.load("default-lud", device="NPU")
    for prompt, chat in (("def fibonacci(n):", False), ("Explain photosynthesis in two sentences.", True)):
        want = gen.generate(prompt, max_new_tokens=48, chat=chat, strategy="ar", ignore_eos=True)
        margins = ar_margins(gen, want)
        for strategy, options in (("prompt-lookup", {}), ("speculative", {}), ("superposed", {"num_drafts": 1})):
            got = gen.generate(prompt, max_new_tokens=48, chat=chat, strategy=strategy, ignore_eos=True, **options)
            assert_npu_ar_tokens(got, want, margins, (strategy, prompt))
        want = lud.generate(prompt, max_new_tokens=48, chat=chat, strategy="ar", ignore_eos=True)
        got = lud.generate(prompt, max_new_tokens=48, chat=chat, strategy="lexical", verified=True, ignore_eos=True)
        assert_npu_ar_tokens(got, want, ar_margins(lud, want), ("lexical", prompt))
        unverified = lud.generate(prompt, max_new_tokens=48, chat=chat, strategy="lexical", ignore_eos=True)
        assert len(unverified.token_ids) == 48 and unverified.token_ids[0] == want.token_ids[0]
