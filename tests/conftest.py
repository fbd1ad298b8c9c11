"""Shared fixtures: the real default model, exported once per test session.

Exports are the slow part of the suite (about a minute each), so each precision is exported once
into a session folder and shared. The int8 export goes through the real default-model path
(GGUF -> export) and is placed where ``--model`` omitted finds it (EDGEGEN_CACHE).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgegen.models import DEFAULT_MODEL_NAME


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("edgegen-cache")
    os.environ["EDGEGEN_CACHE"] = str(root)  # CLI subprocesses and load() find the exports here
    return root


@pytest.fixture(scope="session")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model as a Hugging Face folder (fp32, dequantized by transformers, with the
    tokenizer files repaired to match the GGUF metadata: no BOS, byte-level decoder)."""
    from edgegen.export.source import materialize_hf, resolve_source

    return materialize_hf(resolve_source(None), tmp_path_factory.mktemp("hf") / "model")


@pytest.fixture(scope="session")
def hf_model(hf_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def int8_model(cache_root: Path) -> Path:
    """The default model exported the way `edgegen run` does it on first use (cpu profile, int8)."""
    from edgegen.export import export_model

    out = cache_root / "models" / DEFAULT_MODEL_NAME / "cpu"
    return export_model(None, out, profile="cpu", progress=False)


@pytest.fixture(scope="session")
def fp32_model(hf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fp32 graphs of both formats, with their input-embedding graphs (about 30 s more than without)."""
    from edgegen.export import export_model

    out = tmp_path_factory.mktemp("fp32") / "model"
    return export_model(hf_dir, out, formats=("onnx", "openvino"), weights="fp32", quality_gate=False,
                        progress=False, embeddings=True)
