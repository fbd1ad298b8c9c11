"""A compact n-gram store of token ids: Superposed Decoding's filter of the k x k candidate drafts.

Superposed Decoding (Shen et al., NeurIPS 2024) scores each candidate token ``v`` after each draft with
an interpolated n-gram probability (the reference implementation, RAIVNLab/SuperposedDecoding,
``superpose.py: ngram_probs``)::

    p_ng(v | draft) = sum_n  lambda_n * c(ctx_n v) / c(ctx_n)      ctx_n = the draft's last n-1 tokens

with ``lambda = {2: 0.01, 3: 0.04, 4: 0.15, 5: 0.18, 6: 0.12}`` (``DEFAULT_WEIGHTS``; they sum to 0.5
and are not renormalised). An order whose context is not available (the draft is shorter than n-1
tokens) or was never seen contributes 0: there is no smoothing and no backoff weight, so a token no
order has seen gets p_ng = 0, and the strategy drops it for that draft. The reference stores pickled
dicts of dicts and loops in Python over drafts and tokens; here every order is two sorted numpy
arrays and a look-up for all k drafts x c candidates is a handful of ``np.searchsorted`` calls.

Layout. The store counts every token window whose length m is in ``{n, n-1 : n in orders}`` (1..6
for the default orders 2..6) and keeps two parallel arrays: ``keys`` (uint64, sorted) holds a 64-bit
hash of each window seen at least ``min_count`` times, ``counts`` (uint32) how often it occurred.
The hash is a chain, ``h(t1..tm) = step(h(t1..tm-1), tm)``, from a fixed seed, so

- an n-gram's context count is simply the count of its first n-1 tokens as a window: there is no
  separate context table (12 bytes per stored window, all orders in one array);
- windows of every length share one sorted array, so the look-up of all contexts and all
  candidates of all orders for all drafts is ONE ``np.searchsorted`` call (~0.1 ms for 3 x 9).

Consequences, documented facts of the model: ``c(ctx)`` also counts a context that ends a document,
so ``sum_v P(v | ctx) <= 1`` (the rest is "the document ends here"); pruning drops a context only
together with all its n-grams (``c(ctx v) <= c(ctx)``), so kept counts stay exact; and two
different windows collide with probability about 2^-64 per pair (a few in a billion for stores of
millions of entries), which is negligible for a filter.

File. One uncompressed ``.npz`` (``np.load`` reads it): members ``header`` (uint8, UTF-8 JSON:
format, version, hash name, tokenizer identity, orders, min_count, corpus description, token and
document counts, windows kept per length), ``keys`` and ``counts``. Each member starts on a 64-byte
boundary (a padding extra field in its zip header), so :meth:`NgramStore.open` memory-maps the file
once and both arrays are zero-copy, aligned, read-only views: opening is instant and the pages the
look-ups never touch are never read.

Building streams the corpus (files read in 1 MiB blocks, tokenized, counted in chunks of about a
million tokens; per chunk the windows of each length are hashed, ``np.unique``'d and split into 64
hash-range buckets). When the buckets exceed ``memory_mb`` they are spilled to a temporary folder next to the
output; at the end each bucket is merged (sort + ``np.add.reduceat``), pruned to ``min_count`` and
appended, so peak memory is one chunk plus one bucket plus the pruned tables. The file is written to
a temporary name in the destination folder and ``os.replace``d: a failed build leaves nothing.
"""

from __future__ import annotations

import ast
import codecs
import hashlib
import io
import json
import mmap
import os
import platform
import re
import shutil
import struct
import sysconfig
import tempfile
import time
import weakref
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import EdgegenError
from edgegen.files import publish_file
from edgegen.tokenizer import TextTokenizer

FORMAT = "edgegen-ngram"
FORMAT_VERSION = 1
HASH_NAME = "splitmix64-chain-v1"
DEFAULT_ORDERS: tuple[int, ...] = (2, 3, 4, 5, 6)
# Interpolation weights of the paper's released configs (params/*.json: i_weights for i_length 1..5,
# i.e. context lengths 1..5 = orders 2..6).
DEFAULT_WEIGHTS: dict[int, float] = {2: 0.01, 3: 0.04, 4: 0.15, 5: 0.18, 6: 0.12}
PAD = -1  # histories are left-padded with any negative id; a context that contains one is "not available"
MAX_ORDER = 16

_U64 = np.uint64
# 0-d arrays, not numpy scalars: ufuncs with them are ~3x faster on the tiny arrays of a decode step.
_GOLDEN, _ONE = np.array(0x9E3779B97F4A7C15, _U64), np.array(1, _U64)
_SEED = np.array(0x2545F4914F6CDD1D, _U64)  # hash of the empty window
_M1, _M2 = np.array(0xBF58476D1CE4E5B9, _U64), np.array(0x94D049BB133111EB, _U64)
_S30, _S27, _S31 = np.array(30, _U64), np.array(27, _U64), np.array(31, _U64)
_N_BUCKETS = 64  # hash-range partitions of the build (top 6 bits)
_BUCKET_SHIFT = _U64(64 - 6)
_ALIGN = 64
_PAD_EXTRA_ID = 0xD935  # zip extra-field id used for alignment padding (as Android's zipalign does)


# ---------------------------------------------------------------------------------------------- hashing


def _spread(tokens: np.ndarray) -> np.ndarray:
    """(token + 1) * golden as uint64: the token's term in the chain step (computed once per look-up)."""
    return (tokens.astype(_U64) + _ONE) * _GOLDEN


def _step(h: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Chain hash: splitmix64's finalizer of h + (token + 1) * golden. uint64 arithmetic wraps (no
    warnings for arrays). For a fixed prefix hash, token -> result is a bijection: siblings never collide."""
    return _mix(h + _spread(tokens))


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, in place on a fresh array."""
    x ^= x >> _S30
    x *= _M1
    x ^= x >> _S27
    x *= _M2
    x ^= x >> _S31
    return x


def window_hashes(windows: np.ndarray) -> np.ndarray:
    """Hashes of token windows ``(..., m)`` -> ``(...)`` uint64, as stored in ``keys_m``."""
    windows = np.asarray(windows, dtype=np.int64)
    h = np.full(windows.shape[:-1], _SEED, dtype=_U64)
    for i in range(windows.shape[-1]):
        h = _step(h, windows[..., i])
    return h


def _lookup(keys: np.ndarray, counts: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Count of each hash in ``query`` (0 when absent) by binary search in the sorted ``keys``."""
    if keys.size == 0:
        return np.zeros(query.shape, dtype=np.int64)
    idx = np.minimum(np.searchsorted(keys, query), keys.size - 1)
    return np.where(keys[idx] == query, counts[idx].astype(np.int64), 0)


# ---------------------------------------------------------------------------------------------- orders and identity


def parse_orders(text: str | Iterable[int]) -> tuple[int, ...]:
    """``"2..6"`` -> (2, 3, 4, 5, 6); ``"2,4,6"`` or ``"3"`` or an iterable of ints also work."""
    if isinstance(text, str):
        s = text.replace(" ", "")
        m = re.fullmatch(r"(\d+)\.\.(\d+)", s)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if lo > hi:
                raise EdgegenError(f"bad n-gram orders '{text}': empty range")
            values = list(range(lo, hi + 1))
        elif re.fullmatch(r"\d+(,\d+)*", s):
            values = [int(v) for v in s.split(",")]
        else:
            raise EdgegenError(f"bad n-gram orders '{text}': use a range like 2..6 or a list like 2,3,4")
    else:
        values = [int(v) for v in text]
    if not values:
        raise EdgegenError("no n-gram orders given")
    if min(values) < 2 or max(values) > MAX_ORDER:
        raise EdgegenError(f"n-gram orders must be between 2 and {MAX_ORDER} (got {text})")
    return tuple(sorted(set(values)))


_IDENTITIES: weakref.WeakKeyDictionary[TextTokenizer, dict[str, Any]] = weakref.WeakKeyDictionary()


def tokenizer_identity(tokenizer: TextTokenizer) -> dict[str, Any]:
    """Name, vocabulary size and SHA-256 of the vocabulary (``id NUL token NUL`` in id order, special
    tokens included). Cached per tokenizer object: opening a store checks it."""
    if tokenizer not in _IDENTITIES:
        vocab = sorted(tokenizer.vocabulary().items(), key=lambda item: item[1])
        blob = "".join(f"{i}\0{t}\0" for t, i in vocab).encode("utf-8", "surrogatepass")
        _IDENTITIES[tokenizer] = {"name": tokenizer.manifest.name, "vocab_size": len(vocab),
                                  "vocab_sha256": hashlib.sha256(blob).hexdigest()}
    return dict(_IDENTITIES[tokenizer])


def _tables_for(orders: Sequence[int]) -> tuple[int, ...]:
    return tuple(sorted({m for n in orders for m in (n, n - 1)}))


# ---------------------------------------------------------------------------------------------- the store


class NgramStore:
    """A read-only, memory-mapped n-gram store; see the module docstring for the model and the file.

    Look-ups take ``histories`` (k, L) int64, each row a draft's token ids with the most recent last,
    left-padded with negative ids (``PAD``) when drafts have different lengths; ``L`` may be shorter
    than the highest order (those orders then contribute nothing). ``candidates`` is (k, c), or (c,)
    for candidates shared by every draft.
    """

    def __init__(self, path: Path, header: dict[str, Any], keys: np.ndarray, counts: np.ndarray) -> None:
        self.path = Path(path)
        self.header = header
        self._keys, self._counts = keys, counts
        self._ctx_len = np.array(self.orders, np.int64) - 1

    # -- opening

    @classmethod
    def open(cls, path: str | Path, tokenizer: TextTokenizer | None = None) -> NgramStore:
        """Memory-map a store; with ``tokenizer``, refuse a store built for another vocabulary."""
        path = Path(path)
        if not path.is_file():
            raise EdgegenError(f"n-gram store not found: {path}")
        try:
            arrays = _mmap_npz(path)
            header = json.loads(bytes(arrays.pop("header")).decode())
        except (OSError, ValueError, zipfile.BadZipFile, KeyError, struct.error) as e:
            raise EdgegenError(f"{path} is not a readable n-gram store ({e})") from None
        if header.get("format") != FORMAT:
            raise EdgegenError(f"{path} is not an edgegen n-gram store")
        if header.get("version") != FORMAT_VERSION or header.get("hash") != HASH_NAME:
            raise EdgegenError(f"{path} is n-gram store version {header.get('version')} ({header.get('hash')}); "
                               f"this edgegen reads version {FORMAT_VERSION}: rebuild it")
        if "keys" not in arrays or "counts" not in arrays or arrays["keys"].shape != arrays["counts"].shape:
            raise EdgegenError(f"n-gram store {path} is incomplete: no keys/counts arrays")
        store = cls(path, header, arrays["keys"], arrays["counts"])
        if tokenizer is not None:
            store.check_tokenizer(tokenizer)
        return store

    def check_tokenizer(self, tokenizer: TextTokenizer) -> None:
        """Raise EdgegenError unless the store was built with this tokenizer's vocabulary."""
        want, have = self.header["tokenizer"], tokenizer_identity(tokenizer)
        if (want["vocab_size"], want["vocab_sha256"]) != (have["vocab_size"], have["vocab_sha256"]):
            raise EdgegenError(
                f"n-gram store {self.path} was built for tokenizer '{want['name']}' (vocab {want['vocab_size']}, "
                f"{want['vocab_sha256'][:12]}), not '{have['name']}' (vocab {have['vocab_size']}, "
                f"{have['vocab_sha256'][:12]}): rebuild it with 'edgegen ngram build --tokenizer ...'")

    # -- facts

    @property
    def orders(self) -> tuple[int, ...]:
        return tuple(self.header["orders"])

    @property
    def vocab_size(self) -> int:
        return int(self.header["tokenizer"]["vocab_size"])

    @property
    def token_count(self) -> int:
        """Corpus tokens counted (every window of the store starts at one of them)."""
        return int(self.header["token_count"])

    @property
    def corpus(self) -> str:
        return str(self.header["corpus"])

    def table_sizes(self) -> dict[int, int]:
        """Windows kept per window length (n-grams of order m, and contexts of order m + 1)."""
        return {int(m): int(v) for m, v in self.header["tables"].items()}

    def __repr__(self) -> str:
        return (f"NgramStore({str(self.path)!r}, orders={self.orders}, tokens={self.token_count}, "
                f"min_count={self.header['min_count']})")

    # -- look-ups

    @staticmethod
    def _inputs(histories: Any, candidates: Any) -> tuple[np.ndarray, np.ndarray]:
        h = np.asarray(histories, dtype=np.int64)
        if h.ndim == 1:
            h = h[None, :]
        if h.ndim != 2:
            raise ValueError(f"histories must be (k, L), got shape {h.shape}")
        c = np.asarray(candidates, dtype=np.int64)
        if c.ndim == 1:
            c = np.broadcast_to(c, (h.shape[0], c.size))
        if c.ndim != 2 or c.shape[0] != h.shape[0]:
            raise ValueError(f"candidates must be (c,) or ({h.shape[0]}, c), got shape {c.shape}")
        return h, c

    def _all_orders(self, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(c(ctx_n v) (O, k, c), c(ctx_n) (O, k)) for every order n of the store, with one search.

        The contexts of all orders end at the same token, so they are hashed together: row n starts
        its chain at column ``width - (n-1)`` of the right-aligned tail (a where() per column)."""
        k, length = h.shape
        width = int(self._ctx_len.max())
        tail = h[:, -width:] if length >= width else np.concatenate([np.full((k, width - length), PAD), h], axis=1)
        start = width - self._ctx_len  # (O,)
        # A context is available when none of its tokens is padding: all() over each row's suffix.
        ok = np.logical_and.accumulate(tail[:, ::-1] >= 0, axis=1)[:, ::-1][:, start].T  # (O, k)
        spread = _spread(np.maximum(tail, 0))
        ctx_hash = np.full((len(start), k), _SEED, dtype=_U64)
        for j in range(width):
            ctx_hash = np.where((j >= start)[:, None], _mix(ctx_hash + spread[:, j]), ctx_hash)
        gram_hash = _mix(ctx_hash[:, :, None] + _spread(np.maximum(c, 0))[None])
        found = _lookup(self._keys, self._counts, np.concatenate([ctx_hash.ravel(), gram_hash.ravel()]))
        ctx = np.where(ok, found[:ctx_hash.size].reshape(ctx_hash.shape), 0)
        gram = np.where(ok[:, :, None] & (c >= 0)[None], found[ctx_hash.size:].reshape(gram_hash.shape), 0)
        return gram, ctx

    def counts(self, histories: Any, candidates: Any, order: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact corpus counts for one ``order`` n: ``(c(ctx v)`` (k, c) int64, ``c(ctx)`` (k,) int64),
        ctx = each history's last n-1 tokens. A context that is unavailable (too short, padded) or was
        pruned counts 0. ``c(ctx)`` counts every occurrence of ctx, also one that ends a document."""
        if order not in self.orders:
            raise ValueError(f"order {order} is not in this store (orders {self.orders})")
        h, c = self._inputs(histories, candidates)
        gram, ctx = self._all_orders(h, c)
        i = self.orders.index(order)
        return gram[i], ctx[i]

    def order_probabilities(self, histories: Any, candidates: Any) -> np.ndarray:
        """Maximum-likelihood ``P_n(v | ctx_n)`` per order: (len(orders), k, c) float32, 0 where ctx_n is
        unavailable or unseen (for callers that want their own interpolation)."""
        h, c = self._inputs(histories, candidates)
        gram, ctx = self._all_orders(h, c)
        out = np.zeros(gram.shape, np.float32)
        np.divide(gram, ctx[:, :, None], out=out, where=ctx[:, :, None] > 0, casting="unsafe")
        return out

    def probabilities(self, histories: Any, candidates: Any, weights: Mapping[int, float] | None = None) -> np.ndarray:
        """Interpolated n-gram probability of each candidate after each history: (k, c) float32.

        ``sum_n weights[n] * c(ctx_n v) / c(ctx_n)`` over the store's orders, as the reference does
        it: orders with an unavailable or unseen context add 0, weights are not renormalised, so a
        candidate no order has seen gets 0. ``weights`` defaults to ``DEFAULT_WEIGHTS`` (orders 2..6);
        a store with other orders needs explicit weights for them.
        """
        w = dict(DEFAULT_WEIGHTS if weights is None else weights)
        missing = [n for n in self.orders if n not in w]
        if missing:
            raise ValueError(f"no interpolation weight for orders {missing}: pass weights={{order: weight}}")
        per_order = self.order_probabilities(histories, candidates)
        coef = np.array([w[n] for n in self.orders], np.float32)
        return (coef @ per_order.reshape(len(coef), -1)).reshape(per_order.shape[1:])


# ------------------------------------------------------------------------------------------- npz with aligned members


def _write_aligned_npz(fileobj: io.BufferedWriter, arrays: Mapping[str, np.ndarray]) -> None:
    """An uncompressed .npz whose member data start on 64-byte boundaries (zip extra-field padding)."""
    with zipfile.ZipFile(fileobj, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            arr = np.ascontiguousarray(arr)
            fname = f"{name}.npy"
            info = zipfile.ZipInfo(fname, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            # Local header: 30 bytes + name + our extra (4 + pad) + zip64 extra (20, force_zip64 below).
            # The .npy header is itself a multiple of 64 bytes, so the array data ends up aligned too.
            base = fileobj.tell() + 30 + len(fname.encode()) + 20 + 4
            pad = (-base) % _ALIGN
            info.extra = struct.pack("<HH", _PAD_EXTRA_ID, pad) + b"\0" * pad
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, arr, allow_pickle=False)


def _mmap_npz(path: Path) -> dict[str, np.ndarray]:
    """Every member of an uncompressed .npz as a read-only view of one memory map of the file."""
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    out: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError(f"member {info.filename} is compressed; stores are written uncompressed")
            name_len, extra_len = struct.unpack_from("<HH", mm, info.header_offset + 26)
            start = info.header_offset + 30 + name_len + extra_len
            fp = io.BytesIO(mm[start:start + min(info.file_size, 1 << 16)])
            version = np.lib.format.read_magic(fp)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
            if fortran or dtype.hasobject:
                raise ValueError(f"member {info.filename} has an unsupported layout")
            count = int(np.prod(shape))
            arr = (np.frombuffer(mm, dtype=dtype, count=count, offset=start + fp.tell()) if count
                   else np.empty(0, dtype))
            out[info.filename.removesuffix(".npy")] = arr.reshape(shape)
    return out


# ---------------------------------------------------------------------------------------------- counting


class _Counter:
    """Counts every window of length m in ``tables`` over a stream of token pieces, in bounded memory."""

    def __init__(self, tables: Sequence[int], chunk_tokens: int, memory_bytes: int, spill_parent: Path) -> None:
        self.tables = tuple(tables)
        self.max_len = max(self.tables)
        self.chunk_tokens = max(chunk_tokens, 4 * self.max_len)
        self.memory_bytes = memory_bytes
        self.spill_parent = spill_parent
        self.spill_dir: Path | None = None
        self.tokens = 0
        self.documents = 0
        self._pieces: list[np.ndarray] = []
        self._starts: list[int] = []  # buffer positions where a document (or a carried document tail) starts
        self._buffered = 0
        self._held = 0  # bytes in the in-memory buckets
        self._buckets: dict[int, list[list[tuple[np.ndarray, np.ndarray]]]] = {
            m: [[] for _ in range(_N_BUCKETS)] for m in self.tables}
        self._edges = (np.arange(1, _N_BUCKETS, dtype=_U64) << _BUCKET_SHIFT)

    def add(self, ids: np.ndarray, new_document: bool) -> None:
        if ids.size == 0:
            return
        if new_document or not self._starts:
            self._starts.append(self._buffered)
            self.documents += new_document
        self._pieces.append(ids)
        self._buffered += ids.size
        if self._buffered >= self.chunk_tokens:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if not self._buffered:
            return
        tokens = np.concatenate(self._pieces).astype(_U64)
        n = tokens.size
        starts = np.asarray(self._starts, np.int64)
        ends = np.append(starts[1:], n)
        seg_end = np.repeat(ends, np.diff(np.append(starts, n)))  # end of each position's document
        # Positions near the end of a document that goes on are counted in the next chunk, where the
        # tokens that follow them are present: every window is counted exactly once.
        cut = n if final else max(int(starts[-1]), n - (self.max_len - 1))
        pos = np.arange(n)
        h = np.full(n, _SEED, dtype=_U64)
        for m in range(1, self.max_len + 1):
            width = n - m + 1
            if width <= 0:
                break
            h = _step(h[:width], tokens[m - 1:m - 1 + width])
            if m in self._buckets:
                valid = (pos[:width] < cut) & (pos[:width] + m <= seg_end[:width])
                keys, counts = np.unique(h[valid], return_counts=True)
                self._add_run(m, keys, counts.astype(np.uint32))
        self.tokens += cut
        self._pieces = [tokens[cut:].astype(np.int64)] if cut < n else []
        self._starts = [0] if cut < n else []
        self._buffered = n - cut
        if self._held > self.memory_bytes:
            self._spill()

    def _add_run(self, m: int, keys: np.ndarray, counts: np.ndarray) -> None:
        # keys are sorted: the hash-range buckets are contiguous slices.
        bounds = np.concatenate([[0], np.searchsorted(keys, self._edges), [keys.size]])
        for b in range(_N_BUCKETS):
            lo, hi = bounds[b], bounds[b + 1]
            if hi > lo:
                self._buckets[m][b].append((keys[lo:hi], counts[lo:hi]))
        self._held += keys.nbytes + counts.nbytes

    def _spill(self) -> None:
        if self.spill_dir is None:
            self.spill_dir = Path(tempfile.mkdtemp(prefix=".ngram-spill-", dir=self.spill_parent))
        for m, buckets in self._buckets.items():
            for b, runs in enumerate(buckets):
                if runs:
                    with open(self.spill_dir / f"{m}-{b}.keys", "ab") as fk, \
                            open(self.spill_dir / f"{m}-{b}.counts", "ab") as fc:
                        for keys, counts in runs:
                            keys.tofile(fk)
                            counts.tofile(fc)
                    runs.clear()
        self._held = 0

    def finish(self, min_count: int, progress: bool) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
        """Merge each bucket (all lengths), drop windows seen fewer than ``min_count`` times.

        Returns the sorted keys, their counts and the windows kept per length. Buckets are hash
        ranges, so concatenating them in order keeps the result sorted."""
        from tqdm import tqdm

        self._flush(final=True)
        sizes = dict.fromkeys(self.tables, 0)
        out_k, out_c = [], []
        for b in tqdm(range(_N_BUCKETS), desc="merging n-gram counts", unit="bucket", disable=not progress,
                      leave=False):
            parts_k, parts_c = [], []
            for m in self.tables:
                keys, counts = self._bucket(m, b)
                if keys.size:
                    order = np.argsort(keys, kind="stable")
                    keys, counts = keys[order], counts[order].astype(np.int64)
                    first = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
                    keys, counts = keys[first], np.add.reduceat(counts, first)
                    keep = counts >= min_count
                    parts_k.append(keys[keep])
                    parts_c.append(np.minimum(counts[keep], np.iinfo(np.uint32).max).astype(np.uint32))
                    sizes[m] += int(keep.sum())
            if parts_k:
                keys, counts = np.concatenate(parts_k), np.concatenate(parts_c)
                order = np.argsort(keys, kind="stable")
                out_k.append(keys[order])
                out_c.append(counts[order])
        keys = np.concatenate(out_k) if out_k else np.zeros(0, _U64)
        counts = np.concatenate(out_c) if out_c else np.zeros(0, np.uint32)
        return keys, counts, sizes

    def _bucket(self, m: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        keys = [k for k, _ in self._buckets[m][b]]
        counts = [c for _, c in self._buckets[m][b]]
        self._buckets[m][b] = []
        if self.spill_dir is not None and (self.spill_dir / f"{m}-{b}.keys").exists():
            keys.append(np.fromfile(self.spill_dir / f"{m}-{b}.keys", dtype=_U64))
            counts.append(np.fromfile(self.spill_dir / f"{m}-{b}.counts", dtype=np.uint32))
        if not keys:
            return np.zeros(0, _U64), np.zeros(0, np.uint32)
        return np.concatenate(keys), np.concatenate(counts)

    def cleanup(self) -> None:
        if self.spill_dir is not None:
            shutil.rmtree(self.spill_dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- corpus reading


def _is_text_file(path: Path) -> bool:
    with open(path, "rb") as f:
        return b"\0" not in f.read(8192)


def corpus_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files of the corpus in a deterministic order: each file as given, each folder's non-hidden text
    files (no NUL byte in the first 8 KiB) recursively in sorted order. A missing path is an error."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file()
                           and not any(part.startswith(".") for part in q.relative_to(p).parts))
            files.extend(q for q in found if _is_text_file(q))
        else:
            raise EdgegenError(f"corpus path not found: {p}")
    return files


_READ_BLOCK = 1 << 20


def _file_pieces(path: Path, block: int | None = None) -> Iterator[tuple[str, int]]:
    """(text, bytes consumed) pieces of a file, cut after a newline where possible (BPE rarely merges
    across one), decoded incrementally as UTF-8 (invalid bytes become U+FFFD)."""
    block = block or _READ_BLOCK
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    with open(path, "rb") as f:
        while True:
            data = f.read(block)
            text = pending + decoder.decode(data, final=not data)
            if not data:
                if text:
                    yield text, 0
                return
            cut = text.rfind("\n") + 1
            if cut == 0 and len(text) < 4 * block:  # no newline yet: keep reading, a bounded amount
                pending = text
                yield "", len(data)
                continue
            cut = cut or len(text)
            pending = text[cut:]
            yield text[:cut], len(data)


# ---------------------------------------------------------------------------------------------- building


def _check_out(out: Path) -> None:
    """Fail before the (long) build when the output cannot be written."""
    if out.is_dir():
        raise EdgegenError(f"--out {out} is a folder; give a file name such as {out / 'store.npz'}")
    blocker = next((p for p in out.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise EdgegenError(f"cannot write {out}: {blocker} is a file, not a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgegenError(f"cannot create the folder of {out}: {e.strerror or e}") from None
    if not os.access(out.parent, os.W_OK):
        raise EdgegenError(f"cannot write {out}: {out.parent} is not writable")


def build_store(corpus: Iterable[str | Path], tokenizer: TextTokenizer, *, out: str | Path,
                orders: Iterable[int] | str = DEFAULT_ORDERS, min_count: int = 1, max_tokens: int | None = None,
                progress: bool = True, description: str | None = None, chunk_tokens: int = 1 << 20,
                memory_mb: int = 256) -> Path:
    """Count the n-grams of ``corpus`` and write a store to ``out`` (atomically); return ``out``.

    ``corpus`` items that are ``Path`` objects are files or folders (read in sorted order, see
    :func:`corpus_files`); ``str`` items are texts. Each file or text is one document: no window
    crosses two. ``min_count`` drops windows seen fewer times (the store gets much smaller; the counts
    that remain are exact). ``max_tokens`` stops after that many corpus tokens (deterministic cap).
    """
    from tqdm import tqdm

    out = Path(out)
    if isinstance(corpus, str | Path):
        corpus = [corpus]
    orders = parse_orders(orders) if isinstance(orders, str) else parse_orders(tuple(orders))
    if min_count < 1:
        raise EdgegenError(f"--min-count must be at least 1 (got {min_count})")
    if max_tokens is not None and max_tokens < 1:
        raise EdgegenError(f"--max-tokens must be at least 1 (got {max_tokens})")
    streaming = isinstance(corpus, Iterator)  # an iterator of texts is consumed once, never held in memory
    items: Iterable[str | Path] = corpus if streaming else [
        f for i in corpus for f in (corpus_files([i]) if isinstance(i, Path) else [str(i)])]
    files = [] if streaming else [i for i in items if isinstance(i, Path)]
    if not streaming and not items:
        raise EdgegenError("the corpus is empty: no text files in " + ", ".join(map(str, corpus)))
    _check_out(out)

    identity = tokenizer_identity(tokenizer)
    bos = tokenizer.manifest.bos_token_id if tokenizer.manifest.add_bos else None
    t0 = time.perf_counter()
    counter = _Counter(_tables_for(orders), chunk_tokens, memory_mb << 20, out.parent)
    added = 0
    total_bytes = sum(f.stat().st_size for f in files) if files else None
    bar = tqdm(total=total_bytes, unit="B" if files else " docs", unit_scale=bool(files), disable=not progress,
               desc=f"n-gram store ({'..'.join(map(str, (orders[0], orders[-1])))})")
    try:
        def documents() -> Iterator[Iterator[tuple[str, int]]]:
            for item in items:
                if isinstance(item, Path):
                    yield from (_file_pieces(f) for f in corpus_files([item]))  # already expanded unless streaming
                else:
                    yield iter([(str(item), 0)])
                    if not files:
                        bar.update(1)

        for doc in documents():
            first = True
            for text, consumed in doc:
                if max_tokens is not None and added >= max_tokens:
                    break
                ids = tokenizer.encode(text) if text else []
                if not first and bos is not None and ids and ids[0] == bos:
                    ids = ids[1:]  # BOS starts a document, not each 1 MiB block of it
                if max_tokens is not None:
                    ids = ids[:max_tokens - added]
                if ids:
                    counter.add(np.asarray(ids, np.int64), new_document=first)
                    added += len(ids)
                    first = False
                if files:
                    bar.update(consumed)
                bar.set_postfix_str(f"{added:,} tokens", refresh=False)
            if max_tokens is not None and added >= max_tokens:
                break
        bar.close()
        keys, counts, sizes = counter.finish(min_count, progress)
    finally:
        bar.close()
        counter.cleanup()
    if counter.tokens == 0:
        raise EdgegenError("the corpus is empty: it has no tokens")

    import edgegen

    header = {
        "format": FORMAT, "version": FORMAT_VERSION, "hash": HASH_NAME, "tokenizer": identity,
        "orders": list(orders), "min_count": min_count, "max_tokens": max_tokens,
        "corpus": description or _describe(corpus if streaming else list(items)), "documents": counter.documents,
        "token_count": counter.tokens, "tables": {str(m): n for m, n in sizes.items()},
        "build_seconds": round(time.perf_counter() - t0, 2), "edgegen_version": edgegen.__version__,
    }
    arrays = {"header": np.frombuffer(json.dumps(header).encode(), np.uint8), "keys": keys, "counts": counts}
    _atomic_write(out, arrays)
    return out


def _describe(items: Iterable[str | Path]) -> str:
    if isinstance(items, Iterator):
        return "texts from an iterator"
    files = [i for i in items if isinstance(i, Path)]
    texts = sum(isinstance(i, str) for i in items)
    folders = sorted({str(os.path.commonpath([str(f.resolve()) for f in files]))}) if files else []
    parts = [f"{len(files)} files under {folders[0]}"] if files else []
    return "; ".join(parts + ([f"{texts} texts"] if texts else []))


def _atomic_write(out: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write to a temporary file in the same folder, fsync, then os.replace: readers see the old
    store or the whole new one, and a failure leaves no partial file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            _write_aligned_npz(f, arrays)
            f.flush()
            os.fsync(f.fileno())
        publish_file(tmp, out)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise EdgegenError(f"cannot write n-gram store {out}: {e.strerror or e}") from None
        raise


# ---------------------------------------------------------------------------------------------- the default store

DEFAULT_STORE_MAX_TOKENS = 4_000_000  # the whole 3.11 stdlib is 2.7M tokens: a cap for bigger ones
DEFAULT_STORE_MIN_COUNT = 2
_STDLIB_SKIP = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "encodings",
                "pydoc_data", "ensurepip"}
_CORPUS_RULE = "stdlib-v1"


def stdlib_corpus() -> tuple[list[str | Path], str]:
    """The default store's corpus: text that every Python install has, in a deterministic order.

    First the prose of the Python reference topics (``pydoc_data/topics.py``, read as data with
    ``ast.literal_eval``: one document per topic), then the standard library's own ``.py`` files
    (code + docstrings) sorted by relative path, without tests, codec tables, bundled wheels and
    third-party packages.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    items: list[str | Path] = []
    topics = root / "pydoc_data" / "topics.py"
    if topics.is_file():
        try:
            tree = ast.parse(topics.read_text(encoding="utf-8"))
            value = next(n.value for n in tree.body if isinstance(n, ast.Assign))
            items.extend(str(v) for _, v in sorted(ast.literal_eval(value).items()))
        except (SyntaxError, ValueError, StopIteration):
            pass  # an unusual install: the code alone is still a corpus
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _STDLIB_SKIP and not d.startswith(".")]  # never walk site-packages
        files.extend(Path(folder) / n for n in names if n.endswith(".py"))
    items.extend(sorted(files, key=lambda p: p.relative_to(root).as_posix()))
    return items, f"Python {platform.python_version()} standard library at {root}: reference topics + .py sources"


def default_store_path(model_folder: str | Path) -> Path:
    """Where :func:`default_store` keeps the store for this model's tokenizer and this Python.

    Keyed by the tokenizer file's bytes (cheap: no tokenizer is loaded when the store exists) and by
    everything that defines the corpus and the build; the header still records the vocabulary hash."""
    from edgegen.manifest import read_manifest
    from edgegen.models import cache_dir

    folder = Path(model_folder)
    manifest = read_manifest(folder)
    tok_sha = hashlib.sha256((folder / manifest.tokenizer).read_bytes()).hexdigest()
    key = json.dumps([_CORPUS_RULE, FORMAT_VERSION, platform.python_version(), sysconfig.get_paths()["stdlib"],
                      list(DEFAULT_ORDERS), DEFAULT_STORE_MIN_COUNT, DEFAULT_STORE_MAX_TOKENS])
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", manifest.name) or "model"
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return cache_dir() / "ngram" / f"{name}-{tok_sha[:10]}-stdlib-{digest}.npz"


def default_store(model_folder: str | Path, progress: bool = True) -> Path:
    """A store for the model in ``model_folder`` that needs no user step: built on first use into the
    cache from the Python standard library (:func:`stdlib_corpus`; 2.7M tokens, 18.6 MB and 12-30 s
    for SmolLM2 on 2 cores), then reused."""
    from edgegen.manifest import read_manifest

    folder = Path(model_folder)
    path = default_store_path(folder)
    if path.is_file():
        return path
    tokenizer = TextTokenizer(folder, read_manifest(folder))
    items, description = stdlib_corpus()
    if progress:
        import sys

        print(f"building the default n-gram store for {tokenizer.manifest.name} (once, into {path.parent})",
              file=sys.stderr)
    return build_store(items, tokenizer, out=path, orders=DEFAULT_ORDERS, min_count=DEFAULT_STORE_MIN_COUNT,
                       max_tokens=DEFAULT_STORE_MAX_TOKENS, progress=progress,
                       description=f"{description}; first {DEFAULT_STORE_MAX_TOKENS:,} tokens")


def load_tokenizer(model: str | Path) -> TextTokenizer:
    """The tokenizer of an exported model folder, or of the default model ("default", exported to the
    cache with the cpu profile on first use)."""
    from edgegen.manifest import read_manifest
    from edgegen.models import resolve_model
    from edgegen.profiles import load_profile

    folder = resolve_model(None if str(model) == "default" else model, load_profile("cpu"))
    return TextTokenizer(folder, read_manifest(folder))
