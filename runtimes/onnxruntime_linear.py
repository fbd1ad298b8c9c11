"""One matrix product on ONNX Runtime with int8 weights: ``x @ weight`` for small row batches (draft heads).

NumPy reads a float32 weight at every product; ONNX Runtime's MatMulNBits reads it as int8 blocks and computes on
int8 activations: one row of a 576 x 8,192 product in 0.44 ms against NumPy's 0.74 with a cold cache on the CPU
(docs/hydra.md). The result is close to the float product, not equal: activations and weights are rounded to 8 bits
(blocks of 32 along the input). Building the model needs the ``onnx`` package (0.7 s to import), running it only
ONNX Runtime: callers build once and keep the bytes on disk (edgegen.heads).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

_BLOCK = 32


def int8_linear_model(weight: np.ndarray) -> bytes:
    """The ONNX model of ``x (rows, in) -> x @ weight (rows, out)``, ``weight (in, out)`` quantized symmetrically to
    int8 per block of 32 inputs and output column: one MatMulNBits node (needs the ``onnx`` package)."""
    from onnx import TensorProto, helper, numpy_helper

    k, n = weight.shape
    blocks = -(-k // _BLOCK)
    padded = np.zeros((blocks * _BLOCK, n), np.float32)
    padded[:k] = weight
    grouped = padded.T.reshape(n, blocks, _BLOCK)  # (out, blocks, 32): MatMulNBits' layout of B
    scale = np.abs(grouped).max(axis=2) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(grouped / scale[..., None]), -127, 127).astype(np.int16) + 128  # zero point 128
    node = helper.make_node("MatMulNBits", ["x", "w", "scale"], ["y"], domain="com.microsoft", K=k, N=n, bits=8,
                            block_size=_BLOCK, accuracy_level=4)
    graph = helper.make_graph(
        [node], "int8_linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", n])],
        [numpy_helper.from_array(q.astype(np.uint8), "w"),
         numpy_helper.from_array(scale.astype(np.float32).reshape(-1), "scale")])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


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
