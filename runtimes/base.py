"""The one execution-provider interface every backend implements.

A session holds one model's weights and one sequence's KV cache. The decode strategies only ever
see this surface, so they never know which runtime (or device) they run on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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
    backend: str  # "onnxruntime" | "openvino" | "torch"
    device: str  # what the session really runs on, e.g. "CPUExecutionProvider", "CPU", "NPU"

    @property
    def position(self) -> int: ...

    @property
    def max_length(self) -> int:
        """Tokens the cache can hold (static shapes on NPU; a large cap elsewhere)."""
        ...

    has_hidden: bool  # forward(..., hidden=True) works: the graph outputs the final hidden state

    def forward(self, token_ids: np.ndarray, last_only: bool = False, hidden: bool = False) -> np.ndarray:
        """Run ``token_ids`` (int64, shape (n,)) at positions position..position+n-1.

        Returns float32 logits of shape (n, vocab), or (1, vocab) for the last token when
        ``last_only`` (prefill needs only that one). Advances ``position`` by n. ``hidden``: also keep
        the same rows' final hidden states for ``hidden_states`` (an EdgegenError where ``has_hidden``
        is False); a plain forward never fetches them.
        """
        ...

    def hidden_states(self) -> np.ndarray:
        """Float32 (rows, hidden_size): the last forward's final hidden states (after the final norm: the LM
        head's input), one per logits row it returned. Only after ``forward(..., hidden=True)``."""
        ...

    def trim(self, length: int) -> None:
        """Drop cache entries at positions >= length (0 <= length <= position)."""
        ...

    def common_prefix(self, token_ids: Sequence[int]) -> int:
        """How many leading ``token_ids`` the cache already holds and can keep through ``trim``.

        The session remembers the ids it was fed (forward, trim and reset keep them in step), so a
        prefill can keep the common prefix (the previous chat turn) and forward only the rest. 0 where
        the cache cannot be trimmed (the NPU's static graph).
        """
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

    # Optional: a session that can choose tokens where its logits are (the torch session on CUDA) has
    # ``forward_top``; every other session gets it on the host from ``forward`` (the function below).

    def forward_top(self, token_ids: np.ndarray, k: int = 1, last_only: bool = False,
                    hidden: bool = False) -> TopTokens:
        """Like ``forward``, but only each row's ``k`` best tokens and their logits leave the device."""
        ...

    # Optional attributes, read with getattr and a default (strategies.base): ``max_step`` (the NPU's static
    # graphs), ``prefill_chunk`` (prompt tokens per prefill forward: the NPU's whole prompt, OpenVINO's paged CPU
    # path 2048), and ``row_noise``: how far a logit of a forward's row after the first may lie
    # from the same position computed as a call's first row (0 where rows are computed alike; the NPU's rows move
    # with their place in a call), so greedy verification leaves a near-tie there to the next call's first row.

    # Optional: sessions whose cache can be copied out and back (hasattr tells; the prompt cache is off
    # without them: the NPU's static graph, the torch session, ONNX Runtime with the cache on a GPU).

    def snapshot(self) -> KVSnapshot:
        """A host copy of the cache: the ids it holds (``position`` of them) and their keys and values."""
        ...

    def restore(self, snapshot: KVSnapshot, length: int | None = None) -> None:
        """Make the cache hold the first ``length`` (default: all) positions of ``snapshot``, taken from
        this session; ``position`` becomes ``length``."""
        ...


@dataclass(frozen=True)
class KVSnapshot:
    """A session's cache copied to host memory: the token id at each position and the runtime's arrays for
    them (their layout is the session's own; only the session that took it restores it)."""

    token_ids: tuple[int, ...]
    arrays: tuple[np.ndarray, ...]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)

    def length(self, length: int | None) -> int:
        """A restore's length: ``length`` checked against the snapshot's, or all of it."""
        held = len(self.token_ids)
        if length is None:
            return held
        if not 0 <= length <= held:
            raise ValueError(f"cannot restore {length} positions of a snapshot of {held}")
        return length


@dataclass(frozen=True)
class TopTokens:
    """Each row's ``k`` highest logits, best first: all a step needs from a forward whose pick is the argmax.

    For k = 1 the id is NumPy's ``argmax`` of the row (among equal maxima, the lowest id), so a strategy that
    picks from these ids picks what it would from the full rows. For k > 1, equal logits are ordered by id;
    which of several equal logits at the k-th place are kept is the session's choice. ``finite`` says whether
    every logit of the row was finite (a NaN row from corrupt weights must still stop generation).
    """

    ids: np.ndarray  # int64 (rows, k)
    logits: np.ndarray  # float32 (rows, k)
    finite: np.ndarray  # bool (rows,)

    @property
    def argmax(self) -> list[int]:
        """Each row's best token id."""
        return self.ids[:, 0].tolist()

    @classmethod
    def ordered(cls, ids: np.ndarray, logits: np.ndarray, finite: np.ndarray) -> TopTokens:
        """From each row's k best (ids, logits) in any order: sorted best first, equal logits by id."""
        order = np.lexsort((ids, -logits.astype(np.float64)), axis=-1)
        return cls(np.take_along_axis(ids, order, -1).astype(np.int64),
                   np.take_along_axis(logits, order, -1).astype(np.float32), np.asarray(finite, bool))


def finite_rows(logits: np.ndarray) -> np.ndarray:
    """Whether every value of each (rows, vocab) row is finite: one float32 sum per row, and a closer look only at
    a row whose sum is not (a NaN or inf in it, or finite values overflowing)."""
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf, or finite values overflowing: looked at below
        finite = np.isfinite(logits.sum(-1))
    for row in np.flatnonzero(~finite):
        finite[row] = np.isfinite(logits[row]).all()
    return finite


def top_tokens(logits: np.ndarray, k: int = 1) -> TopTokens:
    """The TopTokens of float (rows, vocab) logits, on the host (the generic path)."""
    if not 1 <= k <= logits.shape[-1]:
        raise ValueError(f"k must lie in [1, {logits.shape[-1]}], got {k}")
    finite = finite_rows(logits)
    if k == 1:
        ids = np.argmax(logits, axis=-1)[:, None]
        return TopTokens(ids.astype(np.int64), np.take_along_axis(logits, ids, -1).astype(np.float32), finite)
    ids = np.argpartition(logits, -k, axis=-1)[:, -k:]
    return TopTokens.ordered(ids, np.take_along_axis(logits, ids, -1), finite)


def forward_top(session: Session, token_ids: np.ndarray, k: int = 1, last_only: bool = False,
                hidden: bool = False) -> TopTokens:
    """``session.forward`` keeping only each row's ``k`` best tokens: chosen on the session's device where it has
    its own ``forward_top`` (only those values are copied back), else on the host from the full rows."""
    own = getattr(session, "forward_top", None)
    if own is not None:
        return own(token_ids, k, last_only, hidden)
    # hidden is passed only when asked: a Session without hidden states (a test fake) serves every other step
    return top_tokens(session.forward(token_ids, last_only, **({"hidden": True} if hidden else {})), k)


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading token ids ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(np.asarray(a[:n], np.int64) != np.asarray(b[:n], np.int64))
    return int(differ[0]) if len(differ) else n


class CachePosition:
    """The bookkeeping both backends share: one integer position, a length limit and the cached token ids."""

    _position: int = 0
    _limit: int = 0
    _ids: list[int]  # the token id at each cache position; -1 for rows fed as embeddings (never matched)

    def common_prefix(self, token_ids: Sequence[int]) -> int:
        return common_prefix_length(self._ids, token_ids)

    def _held(self, length: int, fed: Sequence[int] = ()) -> None:
        """Keep the first ``length`` remembered ids and append ``fed`` (called as the cache changes)."""
        if length == 0:
            self._ids = []
        else:
            del self._ids[length:]
        self._ids.extend(fed)

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


class SlotCache(CachePosition):
    """A KV cache the next forward overwrites from the position on: rollback and reset only move the position."""

    def trim(self, length: int) -> None:
        self._check_trim(length)
        self._held(length)
        self._position = length

    def reset(self) -> None:
        self._held(0)
        self._position = 0


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
    """The forward surface shared by both backends (token ids, or input embeddings).

    A backend implements ``_forward(x, last_only)``, x being int64 ids [1, n] or float32 embeddings
    [1, n, hidden], and calls ``_open_embeddings`` when opened with embeddings=True. ``forward`` keeps
    the remembered ids (CachePosition) in step with the cache. Only with embeddings=True does the
    session have ``embed`` and ``forward_embeddings`` (instance attributes), so ``hasattr`` tells a
    strategy whether its session takes embeddings.
    """

    _table: EmbeddingTable | None = None
    has_hidden: bool = False  # a backend sets it when its graph outputs HIDDEN_STATE (manifest)
    # _forward fills _hidden with the returned rows' hidden states when _want_hidden (set per forward here)
    _want_hidden: bool = False
    _hidden: np.ndarray | None = None

    def _forward(self, x: np.ndarray, last_only: bool) -> np.ndarray:
        raise NotImplementedError

    def _ask_hidden(self, hidden: bool) -> None:
        if hidden and not self.has_hidden:
            raise EdgegenError(f"model '{self.manifest.name}' gives no hidden states on {self.backend} (an export "
                               "made before edgegen added them): re-export it, or use the openvino backend")
        self._want_hidden, self._hidden = hidden, None

    def hidden_states(self) -> np.ndarray:
        """Session.hidden_states: the rows the last forward(..., hidden=True) kept."""
        if self._hidden is None:
            raise EdgegenError("hidden_states() needs a forward(..., hidden=True) before it")
        return self._hidden

    def _open_embeddings(self, folder: Path, manifest: Manifest) -> None:
        self._table = EmbeddingTable(folder, manifest)
        self.embed = self._table.embed
        self.forward_embeddings = self._forward_embeddings

    def forward(self, token_ids: np.ndarray, last_only: bool = False, hidden: bool = False) -> np.ndarray:
        """Session.forward: the ids (or their embeddings on an embeddings graph), remembered once run."""
        ids = np.ascontiguousarray(token_ids, dtype=np.int64).reshape(1, -1)
        self._ask_hidden(hidden)
        start = self._position
        logits = self._forward(ids if self._table is None else self._table.embed(ids)[None], last_only)
        self._held(start, ids[0].tolist())
        return logits

    def _forward_embeddings(self, embeddings: np.ndarray, last_only: bool = False) -> np.ndarray:
        assert self._table is not None
        x = self._table.batch(embeddings)
        self._ask_hidden(False)
        start = self._position
        logits = self._forward(x, last_only)
        self._held(start, [-1] * x.shape[1])
        return logits
