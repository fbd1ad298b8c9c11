"""One matrix product on ONNX Runtime with int8 weights: ``x @ weight`` for small row batches (draft heads).

NumPy reads a float32 weight at every product; ONNX Runtime's MatMulNBits reads it as int8 blocks and computes on
int8 activations: one row of a 576 x 8,192 product in 0.44 ms against NumPy's 0.74 with a cold cache on the CPU
(docs/hydra.md). The result is close to the float product, not equal: activations and weights are rounded to 8 bits
(blocks of 32 along the input). Building the model needs the ``onnx`` package (0.7 s to import), running it only
ONNX Runtime: callers build once and keep the bytes on disk (edgegen.heads).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

_BLOCK = 32


def int8_linear_model(weight: np.ndarray) -> bytes:
    """The ONNX model of ``x (rows, in) -> x @ weight (rows, out)``: a float MatMul that ONNX Runtime's own
    MatMulNBitsQuantizer turns into int8 blocks of 32 (symmetric, accuracy level 4), as the exports' int8 graphs are
    quantized (export/onnx.py). Needs the ``onnx`` package."""
    from onnx import TensorProto, helper, numpy_helper

    k, n = weight.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "int8_linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", n])],
        [numpy_helper.from_array(np.ascontiguousarray(weight, np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    root = logging.getLogger()
    root_state = (root.level, list(root.handlers))
    try:  # importing the quantizer runs logging.basicConfig(level=INFO), and it logs every node: kept quiet
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.CRITICAL)
        quantizer = MatMulNBitsQuantizer(model, bits=8, block_size=_BLOCK, is_symmetric=True, accuracy_level=4,
                                         op_types_to_quantize=("MatMul",))
        quantizer.process()
    finally:
        root.setLevel(root_state[0])
        root.handlers[:] = root_state[1]
    return quantizer.model.model.SerializeToString()


class Int8Linear:
    """A model of :func:`int8_linear_model` (its bytes, or a file of them) as a callable ``x -> x @ weight``."""

    def __init__(self, model: bytes | Path, threads: int | None = None) -> None:
        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the target's sessions
        if threads:
            options.intra_op_num_threads = threads
        source = model if isinstance(model, bytes) else str(model)
        self._session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._session.run(None, {"x": np.ascontiguousarray(x, np.float32)})[0]
