"""The one execution-provider interface every backend implements.

A session holds one model's weights and one sequence's KV cache. The decode strategies only ever
see this surface, so they never know which runtime (or device) they run on.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from edgegen.manifest import Manifest


class Session(Protocol):
    """A model plus the KV cache of one sequence.

    ``position`` is the number of tokens in the cache. ``forward`` appends tokens at ``position``;
    ``trim`` rolls the cache back (speculative rejection). Rollback never copies the whole cache
    where the runtime allows it: the next forward overwrites the dropped slots.
    """

    manifest: Manifest
    backend: str  # "onnxruntime" | "openvino"
    device: str  # what the session really runs on, e.g. "CPUExecutionProvider", "CPU", "NPU"

    @property
    def position(self) -> int: ...

    @property
    def max_length(self) -> int:
        """Tokens the cache can hold (static shapes on NPU; a large cap elsewhere)."""
        ...

    def forward(self, token_ids: np.ndarray, last_only: bool = False) -> np.ndarray:
        """Run ``token_ids`` (int64, shape (n,)) at positions position..position+n-1.

        Returns float32 logits of shape (n, vocab), or (1, vocab) for the last token when
        ``last_only`` (prefill needs only that one). Advances ``position`` by n.
        """
        ...

    def trim(self, length: int) -> None:
        """Drop cache entries at positions >= length (0 <= length <= position)."""
        ...

    def reset(self) -> None:
        """Empty the cache (a new sequence)."""
        ...


class CachePosition:
    """The bookkeeping both backends share: one integer position and a length limit."""

    _position: int = 0
    _limit: int = 0

    @property
    def position(self) -> int:
        return self._position

    @property
    def max_length(self) -> int:
        return self._limit

    def _check_trim(self, length: int) -> bool:
        """Validate a trim target; True when it actually drops entries."""
        if not 0 <= length <= self._position:
            raise ValueError(f"cannot trim a cache of {self._position} tokens to {length}")
        return length < self._position
