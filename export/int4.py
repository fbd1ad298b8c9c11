"""edgegen's int4 recipe, one for every model and both formats: NNCF-style mixed int4/int8 weights.

- The token embeddings and the LM head stay at int8 (a 4-bit LM head costs the most quality per byte saved).
- Of the other MatMul weights, INT4_RATIO (by parameter count) go to int4 in groups of the export's group size;
  the rest stay at int8. Which ones: NNCF's data-free mixed-precision criterion (the weights' own int8
  quantization error, no calibration data), applied by NNCF itself on OpenVINO (`ratio=`) and by
  ``int8_weight_names`` below on ONNX (the same NNCF function over the builder's fp32 MatMul weights).

This is what optimum-intel's tuned int4 configs do for many models (ratio 0.6-0.9 with an int8 backup); the
ratio is lower here because a 4-bit GGUF source dequantized to fp32 loses a second rounding at int4
(docs/models.md, Gemma 3 270M).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# Share of the ratio-defining weights (all MatMuls but the LM head) put at int4; the rest stay int8.
INT4_RATIO = 0.3


def int8_weight_names(weights: Mapping[str, np.ndarray], ratio: float = INT4_RATIO, *, reduction_axis: int = 0
                      ) -> set[str]:
    """Names of the weights to keep at int8 so that about ``ratio`` of all parameters are int4.

    NNCF's data-free criterion (nncf...mixed_precision.DataFreeCriterion): each weight scores
    1 / (its per-channel int8 quantization error, max over channels of the mean error); weights are taken
    for int4 in ascending score while the int4 share stays below ``ratio``. reduction_axis: the input axis
    (0 for an ONNX MatMul's [in, out] weight).
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
        if (count + size) / total >= ratio:
            break
        int4.add(name)
        count += size
    return set(weights) - int4
