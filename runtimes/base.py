"""The one execution-provider interface every backend implements.

A session holds one model's weights and one sequence's KV cache. The decode strategies only ever
see this surface, so they never know which runtime (or device) they run on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from edgegen.errors import EdgegenError
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

    # Optional: only sessions opened with embeddings=True (the export's input-embedding graph) have
    # these two; ``forward`` then embeds the ids and runs forward_embeddings, so every strategy works.

    def embed(self, token_ids: np.ndarray) -> np.ndarray:
        """The input embeddings of ``token_ids``, float32 (n, hidden), scaled as the graph expects.

        Mixing is linear, so a weighted sum of rows is the embedding of a superposed token.
        """
        ...

    def forward_embeddings(self, embeddings: np.ndarray, last_only: bool = False) -> np.ndarray:
        """Like ``forward``, fed input embeddings (n, hidden) float32 (e.g. from ``embed``) instead of ids."""
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


class EmbeddingTable:
    """An export's token-embedding table (``embeddings.npy``, memory-mapped) and its scale."""

    def __init__(self, folder: Path, manifest: Manifest) -> None:
        info = manifest.embeddings
        if info is None:
            raise EdgegenError(f"model '{manifest.name}' has no input embeddings: "
                               "re-export it with `edgegen export --embeddings`")
        try:
            self._rows = np.load(Path(folder) / info.table, mmap_mode="r")  # only the rows used are read
        except (OSError, ValueError) as e:
            raise EdgegenError(f"cannot read the embedding table {Path(folder) / info.table}: {e}") from None
        self.hidden = manifest.hidden_size
        if self._rows.ndim != 2 or self._rows.shape[1] != self.hidden:
            raise EdgegenError(f"embedding table {info.table} has shape {self._rows.shape}, "
                               f"expected (rows, {self.hidden})")
        self.scale = np.float32(info.scale)

    def embed(self, token_ids: np.ndarray) -> np.ndarray:
        """Rows of ``token_ids`` as float32 (n, hidden), times the scale."""
        ids = np.asarray(token_ids).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self._rows)):
            raise EdgegenError(f"token ids must lie in [0, {len(self._rows)})")
        rows = self._rows[ids].astype(np.float32)
        if self.scale != 1:
            rows *= self.scale
        return rows

    def batch(self, embeddings: np.ndarray) -> np.ndarray:
        """Validate (n, hidden) embeddings and shape them as the graph input [1, n, hidden] float32."""
        x = np.asarray(embeddings)
        if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] != self.hidden:
            raise EdgegenError(f"embeddings must have shape (n, {self.hidden}) with n >= 1, got {x.shape}")
        return np.ascontiguousarray(x, dtype=np.float32)[None]


class EmbeddingInputs:
    """The input-embedding surface shared by both backends.

    A backend implements ``_forward(x, last_only)``, x being int64 ids [1, n] or float32 embeddings
    [1, n, hidden], and calls ``_open_embeddings`` when opened with embeddings=True. Only then does the
    session have ``embed`` and ``forward_embeddings`` (instance attributes), so ``hasattr`` tells a
    strategy whether its session takes embeddings.
    """

    _table: EmbeddingTable | None = None

    def _forward(self, x: np.ndarray, last_only: bool) -> np.ndarray:
        raise NotImplementedError

    def _open_embeddings(self, folder: Path, manifest: Manifest) -> None:
        self._table = EmbeddingTable(folder, manifest)
        self.embed = self._table.embed
        self.forward_embeddings = self._forward_embeddings

    def _input(self, token_ids: np.ndarray) -> np.ndarray:
        """What ``forward(token_ids)`` feeds the graph: the ids, or their embeddings on an embeddings graph."""
        ids = np.ascontiguousarray(token_ids, dtype=np.int64).reshape(1, -1)
        return ids if self._table is None else self._table.embed(ids)[None]

    def _forward_embeddings(self, embeddings: np.ndarray, last_only: bool = False) -> np.ndarray:
        assert self._table is not None
        return self._forward(self._table.batch(embeddings), last_only)
