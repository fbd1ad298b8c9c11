"""The OpenVINO CPU session's KV cache as PagedAttention blocks the session owns, as openvino-genai's default
(continuous-batching) pipeline runs the same IR.

``to_paged`` rewrites the stateful IR's SDPA layers to PagedAttention (OpenVINO's own transformation, the one
openvino-genai applies); the cache then lives in ``key_cache.i`` / ``value_cache.i`` input tensors of whatever
precision and block layout the plugin chose at compile time (u8 with per-block scales on CPU). One sequence
uses blocks 0, 1, 2, ... in order, so a step only says how many tokens the cache holds (``past_lens``):
rollback and reset move that number (the next forward overwrites the dropped slots, no copy, no mask), and a
sliding window is the kernel's (real positions, no dead slots to count).
"""

from __future__ import annotations

import numpy as np
import openvino as ov

_BLOCK = {"CPU": 32}  # tokens per cache block: openvino-genai's CPU block size, the layout the CPU plugin expects
_FIRST_BLOCKS = 16  # blocks allocated up front (512 tokens); the cache doubles when a forward needs more


def to_paged(model: ov.Model) -> bool:
    """Rewrite ``model``'s attention to PagedAttention in place; False where OpenVINO's transformation refuses it
    (then the model is left for the stateful path, re-read by the caller)."""
    from openvino._offline_transformations import paged_attention_transformation

    shapes = {v.info.variable_id: v.info.data_shape for v in model.get_variables()}
    if not shapes:
        return False
    try:
        paged_attention_transformation(model)
    except RuntimeError:
        return False
    caches = [p for p in model.get_parameters() if p.get_friendly_name().startswith(("key_cache.", "value_cache."))]
    if not caches:
        return False
    for param in caches:  # as openvino-genai does: precision and layout are the plugin's to choose
        param.set_element_type(ov.Type.dynamic)
        param.set_partial_shape(ov.PartialShape.dynamic(4))
    model.validate_nodes_and_infer_types()
    return True


class PagedCache:
    """The blocks of one sequence and the PagedAttention inputs of each forward, reused between steps."""

    def __init__(self, compiled: ov.CompiledModel, request: ov.InferRequest, device: str, limit: int) -> None:
        self._request = request
        self._block = _BLOCK[device]
        self._inputs = [(p.get_any_name(), p.get_element_type(), p.get_partial_shape()) for p in compiled.inputs
                        if p.get_any_name().startswith(("key_cache.", "value_cache."))]
        self._tensors: list[ov.Tensor] = []
        self._blocks = 0
        self._indices = np.arange(-(-limit // self._block), dtype=np.int32)
        self._past = np.zeros(1, np.int32)
        self._begins = np.zeros(2, np.int32)  # subsequence_begins: [0, tokens fed]
        self._block_begins = np.zeros(2, np.int32)  # block_indices_begins: [0, blocks used]
        self._context = np.zeros((), np.int32)  # max_context_len
        self._grow(_FIRST_BLOCKS)

    def _grow(self, blocks: int) -> None:
        """Make room for ``blocks`` blocks, keeping the ones held (doubling, so growth is rare)."""
        if blocks <= self._blocks:
            return
        blocks = max(blocks, 2 * self._blocks)
        grown = []
        for i, (name, kind, shape) in enumerate(self._inputs):
            shape = ov.PartialShape(shape)
            shape[0] = blocks
            tensor = ov.Tensor(kind, shape.to_shape())
            if self._tensors:
                tensor.data[: self._blocks] = self._tensors[i].data
            self._request.set_tensor(name, tensor)
            grown.append(tensor)
        self._tensors, self._blocks = grown, blocks

    def inputs(self, start: int, n: int) -> dict[str, np.ndarray]:
        """The PagedAttention inputs of a forward of ``n`` tokens after the ``start`` the cache holds."""
        end = start + n
        blocks = -(-end // self._block)
        self._grow(blocks)
        self._past[0], self._begins[1], self._block_begins[1], self._context[()] = start, n, blocks, end
        return {"past_lens": self._past, "subsequence_begins": self._begins, "block_indices": self._indices[:blocks],
                "block_indices_begins": self._block_begins, "max_context_len": self._context}

    def snapshot(self, length: int) -> tuple[np.ndarray, ...]:
        """Host copies of the blocks that hold the first ``length`` tokens, one array per cache input."""
        blocks = -(-length // self._block)
        return tuple(t.data[:blocks].copy() for t in self._tensors)

    def restore(self, arrays: tuple[np.ndarray, ...], length: int) -> None:
        """Write back the blocks of a ``snapshot`` that hold its first ``length`` tokens."""
        if len(arrays) != len(self._tensors):
            raise ValueError("this snapshot was not taken from this session")
        blocks = -(-length // self._block)
        self._grow(blocks)
        for tensor, saved in zip(self._tensors, arrays, strict=True):
            tensor.data[:blocks] = saved[:blocks]
