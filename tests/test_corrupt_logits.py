"""Corrupt weights stop generation with a clear error: NaN or infinite logits are never decoded into tokens."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from fakes import BrokenLM

import edgegen
from edgegen.errors import EdgegenError
from edgegen.sampling import Sampler, SamplingConfig
from edgegen.strategies import make_strategy
from edgegen.strategies.base import DecodeRequest, check_finite

CAUSE = "NaN or infinite logits.*corrupt or badly quantized"


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("strategy", ["ar", "prompt-lookup"])
def test_broken_logits_stop_decoding(strategy: str, value: float) -> None:
    request = DecodeRequest(BrokenLM(value, broken_at=4), [1, 2, 1, 2], Sampler(SamplingConfig()), 20)
    steps = make_strategy(strategy).decode(request)
    got: list[int] = []
    with pytest.raises(EdgegenError, match=CAUSE):
        for new in steps:
            got.extend(new)
    assert got == [4]  # the prompt's logits were fine; the first step after them was not


def test_check_finite_passes_finite_logits_through() -> None:
    logits = np.linspace(-30.0, 30.0, 49152, dtype=np.float32).reshape(2, -1)
    assert check_finite(logits) is logits
    logits[1, 7] = np.nan
    with pytest.raises(EdgegenError, match=CAUSE):
        check_finite(logits)


def _nan_in_a_scale(folder: Path) -> str:
    """Set the first value of the last MLP's output quantization scale to NaN, in place (the file keeps its size).

    That block feeds one feature of the last hidden state, which the final norm spreads to every logit."""
    import onnx

    graph = folder / "onnx" / "model.onnx"
    model = onnx.load(str(graph), load_external_data=False)
    init = [t for t in model.graph.initializer if "down_proj" in t.name and "scale" in t.name.lower()
            and t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)][-1]
    nan = np.array([np.nan], np.float32 if init.data_type == onnx.TensorProto.FLOAT else np.float16).tobytes()
    if init.data_location == onnx.TensorProto.EXTERNAL:
        where = {e.key: e.value for e in init.external_data}
        path, offset = graph.parent / where["location"], int(where.get("offset", "0"))
    else:
        path, data = graph, graph.read_bytes()
        offset = data.index(init.raw_data)
        assert data.count(init.raw_data) == 1, "the scale's bytes must be unique in the file to patch them"
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(nan)
    return init.name


def test_nan_scale_in_a_real_export_is_a_clear_error(int8_model: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt"
    shutil.copytree(int8_model, corrupt)
    _nan_in_a_scale(corrupt)
    gen = edgegen.load(corrupt, backend="onnxruntime")
    with pytest.raises(EdgegenError, match=CAUSE):
        gen.generate("The capital of France is", max_new_tokens=8, strategy="ar")


@pytest.mark.parametrize("strategy", ["ar", "prompt-lookup"])
def test_broken_prompt_logits_stop_before_the_first_token(strategy: str) -> None:
    request = DecodeRequest(BrokenLM(np.nan, broken_at=0), [1, 2, 1, 2], Sampler(SamplingConfig()), 20)
    steps = make_strategy(strategy).decode(request)
    with pytest.raises(EdgegenError, match=CAUSE):
        next(steps)  # not token 0 first, then the error
