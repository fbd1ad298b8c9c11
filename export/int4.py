"""int4 that passes the quality gate: when the all-int4 graph fails it, part of the weights go back to int8.

A model whose all-int4 graph stays within the gate's limit is published as built (SmolLM2-135M: x1.03 / x1.02).
One that does not (Gemma 3 270M: x2.12 ONNX, x1.72 OpenVINO; its weights are a 4-bit GGUF dequantized, so a
second 4-bit grid stacks another rounding on a small model) is re-quantized with a decreasing share of its
weights at int4, the rest at int8, until the gate passes: INT4_SHARES, tried in order. The share is recorded in
the graph's GraphInfo (``int4_share``). Which weights stay int8: NNCF's data-free mixed-precision criterion (the
weights' own int8 quantization error, no calibration data), applied by NNCF itself on OpenVINO (``ratio=``,
embeddings and LM head in its int8 backup) and by :func:`int8_weight_names` on ONNX (the LM head at int8 too).
This is the shape of optimum-intel's tuned int4 configs (a ratio with an int8 backup) and of llama.cpp's
Q4_K_M (some tensors kept at higher precision); the gate picks the ratio instead of a table per model.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# Shares (by parameter count, LM head and embeddings aside) tried after the all-int4 graph fails the gate.
INT4_SHARES = (0.5, 0.25)


def int8_weight_names(weights: Mapping[str, np.ndarray], share: float, *, reduction_axis: int = 0) -> set[str]:
    """Names of the weights to keep at int8 so that less than ``share`` of all parameters are int4.

    NNCF's data-free criterion (nncf ... mixed_precision.DataFreeCriterion): each weight scores 1 / (its
    per-channel int8 quantization error, max over channels of the mean error); weights go to int4 in ascending
    score while the int4 share stays below ``share``. reduction_axis: the input axis (0 for an ONNX MatMul's
    [in, out] weight).
    """
    from nncf.quantization.algorithms.weight_compression.config import WeightCompressionConfig
    from nncf.quantization.algorithms.weight_compression.weight_lowering import get_integer_quantization_error
    from nncf.tensor import Tensor

    config = WeightCompressionConfig()  # int8 asymmetric per channel: NNCF's backup precision
    eps = float(np.finfo(np.float32).eps)
    scores = {
        name: 1.0 / (get_integer_quantization_error(Tensor(np.asarray(w, dtype=np.float32)), reduction_axis, config,
                                                    reduction="max_mean") + eps)
        for name, w in weights.items()
    }
    total = sum(int(np.prod(w.shape)) for w in weights.values())
    int4, count = set(), 0
    for name in sorted(scores, key=scores.__getitem__):
        size = int(np.prod(weights[name].shape))
        if (count + size) / total >= share:
            break
        int4.add(name)
        count += size
    return set(weights) - int4
