"""Shared fixtures: the real default model, exported once per test session.

Exports are the slow part of the suite (about a minute each), so each precision is exported once
and shared. The int8 export goes through the real default-model path (GGUF -> export) and is placed
where ``--model`` omitted finds it (EDGEGEN_CACHE).

Every test that uses one of these exports (directly or through another fixture) is marked ``slow``
here, so ``scripts/test.sh --quick`` (``-m "not slow"``) leaves out exactly the tests that export.
``EDGEGEN_TEST_CACHE=DIR`` keeps the exports in DIR between runs (the inner loop); CI leaves it unset
and exports into a fresh temporary folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgegen.models import DEFAULT_MODEL_NAME

# Fixtures that export (or load) a real model: a test needing any of them is slow.
EXPORTING_FIXTURES = frozenset({"hf_dir", "hf_model", "int8_model", "fp32_model"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "real_torch: the torch backend on the real default model (scripts/test.sh "
                            "--all; its own tests on tiny models run in CI)")
    config.addinivalue_line("markers", "extended: a heavier check of something CI already covers in a cheaper form "
                            "(scripts/test.sh --all), kept out of CI's 30 minutes")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if EXPORTING_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def _persistent(name: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder kept between runs under $EDGEGEN_TEST_CACHE, else a fresh temporary one."""
    root = os.environ.get("EDGEGEN_TEST_CACHE")
    if not root:
        return tmp_path_factory.mktemp(name)
    path = Path(root).expanduser() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = _persistent("edgegen-cache", tmp_path_factory)
    os.environ["EDGEGEN_CACHE"] = str(root)  # CLI subprocesses and load() find the exports here
    return root


@pytest.fixture(scope="session")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model as a Hugging Face folder (fp32, dequantized by transformers, with the
    tokenizer files repaired to match the GGUF metadata: no BOS, byte-level decoder)."""
    from edgegen.export.source import materialize_hf, resolve_source

    out = _persistent("hf", tmp_path_factory) / "model"
    if (out / "config.json").is_file():
        return out
    return materialize_hf(resolve_source(None), out)


@pytest.fixture(scope="session")
def hf_model(hf_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def int8_model(cache_root: Path) -> Path:
    """The default model exported the way `edgegen run` does it on first use (cpu profile, int8)."""
    from edgegen.cache import build_once
    from edgegen.export import export_model

    out = cache_root / "models" / DEFAULT_MODEL_NAME / "cpu"
    # build_once: test runs sharing EDGEGEN_TEST_CACHE wait for one export instead of racing two
    return build_once(out, "the int8 test model", lambda: export_model(None, out, profile="cpu", progress=False),
                      progress=False)


@pytest.fixture(scope="session")
def fp32_model(hf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fp32 graphs of both formats, with their input-embedding graphs (about 30 s more than without)."""
    from edgegen.cache import build_once
    from edgegen.export import export_model

    out = _persistent("fp32", tmp_path_factory) / "model"
    return build_once(out, "the fp32 test model", lambda: export_model(
        hf_dir, out, formats=("onnx", "openvino"), weights="fp32", quality_gate=False, progress=False,
        embeddings=True), progress=False)
