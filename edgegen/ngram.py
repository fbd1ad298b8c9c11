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

Building: :mod:`edgegen.ngram_build`; the default store of a model: :mod:`edgegen.artifacts`.
"""

from __future__ import annotations

import hashlib
import io
import json
import mmap
import re
import struct
import weakref
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import EdgegenError
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
CHAIN_SEED = np.array(0x2545F4914F6CDD1D, _U64)  # hash of the empty window
_M1, _M2 = np.array(0xBF58476D1CE4E5B9, _U64), np.array(0x94D049BB133111EB, _U64)
_S30, _S27, _S31 = np.array(30, _U64), np.array(27, _U64), np.array(31, _U64)
_ALIGN = 64
_PAD_EXTRA_ID = 0xD935  # zip extra-field id used for alignment padding (as Android's zipalign does)


# ---------------------------------------------------------------------------------------------- hashing


def _spread(tokens: np.ndarray) -> np.ndarray:
    """(token + 1) * golden as uint64: the token's term in the chain step (computed once per look-up)."""
    return (tokens.astype(_U64) + _ONE) * _GOLDEN


def chain_step(h: np.ndarray, tokens: np.ndarray) -> np.ndarray:
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


def window_lengths(orders: Sequence[int]) -> tuple[int, ...]:
    return tuple(sorted({m for n in orders for m in (n, n - 1)}))


# ---------------------------------------------------------------------------------------------- the store


class NgramCounts:
    """The interpolated n-gram model over window counts; a subclass says where the counts come from (``_find``).

    Look-ups take ``histories`` (k, L) int64, each row a draft's token ids with the most recent last,
    left-padded with negative ids (``PAD``) when drafts have different lengths; ``L`` may be shorter
    than the highest order (those orders then contribute nothing). ``candidates`` is (k, c), or (c,)
    for candidates shared by every draft.
    """

    _ctx_len: np.ndarray  # context length (n - 1) of each order n, (O,) int64

    @property
    def orders(self) -> tuple[int, ...]:
        raise NotImplementedError

    def _find(self, hashes: np.ndarray) -> np.ndarray:
        """Count (int64) of each window hash, 0 when never seen."""
        raise NotImplementedError

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
        ctx_hash = np.full((len(start), k), CHAIN_SEED, dtype=_U64)
        for j in range(width):
            ctx_hash = np.where((j >= start)[:, None], _mix(ctx_hash + spread[:, j]), ctx_hash)
        gram_hash = _mix(ctx_hash[:, :, None] + _spread(np.maximum(c, 0))[None])
        found = self._find(np.concatenate([ctx_hash.ravel(), gram_hash.ravel()]))
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



class NgramStore(NgramCounts):
    """A read-only, memory-mapped n-gram store; see the module docstring for the model and the file.

    Look-ups: :class:`NgramCounts`.
    """

    def __init__(self, path: Path, header: dict[str, Any], keys: np.ndarray, counts: np.ndarray) -> None:
        self.path = Path(path)
        self.header = header
        self._keys, self._counts = keys, counts
        self._ctx_len = np.array(self.orders, np.int64) - 1

    def _find(self, hashes: np.ndarray) -> np.ndarray:
        return _lookup(self._keys, self._counts, hashes)

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


class AdaptiveNgram(NgramCounts):
    """N-gram counts that grow with the text being generated (ADED-style), on top of an optional store.

    ``observe`` counts the windows of the prompt and of the model's own output as it appears, in an
    in-memory table keyed by the store's window hash; a look-up adds these counts to ``base``'s (a
    file store), so the filter knows the conversation's own words without a large offline corpus.
    Counts are exact (a window counted twice counts 2). Orders: ``base``'s, else 2..6.
    """

    def __init__(self, base: NgramStore | None = None, orders: Sequence[int] = DEFAULT_ORDERS) -> None:
        self.base = base
        self._orders = base.orders if base is not None else parse_orders(orders)
        self._ctx_len = np.array(self._orders, np.int64) - 1
        self._lengths = window_lengths(self._orders)
        self._table: dict[int, int] = {}  # window hash -> occurrences observed

    @property
    def orders(self) -> tuple[int, ...]:
        return self._orders

    @property
    def vocab_size(self) -> int | None:
        return self.base.vocab_size if self.base is not None else None

    @property
    def windows(self) -> int:
        """Distinct windows observed (all lengths)."""
        return len(self._table)

    def observe(self, tokens: Sequence[int], context: Sequence[int] = ()) -> None:
        """Count every window that ends in ``tokens``; ``context`` holds the tokens just before them (a
        draft's history, not counted again). Windows never reach into tokens before ``context``."""
        reach = max(self._lengths) - 1  # context tokens a window ending in a new token can include
        seq = np.asarray([*list(context)[max(0, len(context) - reach):], *tokens], np.int64)
        first_end = seq.size - len(tokens)  # index of the first new token
        h = np.full(seq.size, CHAIN_SEED, dtype=_U64)
        for m in range(1, max(self._lengths) + 1):
            width = seq.size - m + 1
            if width <= 0:
                break
            h = chain_step(h[:width], seq[m - 1 : m - 1 + width])  # h[p]: window seq[p : p + m]
            if m in self._lengths:
                ends_new = np.arange(width) + m - 1 >= first_end
                keys, counts = np.unique(h[ends_new], return_counts=True)
                for key, n in zip(keys.tolist(), counts.tolist(), strict=True):
                    self._table[key] = self._table.get(key, 0) + n

    def _find(self, hashes: np.ndarray) -> np.ndarray:
        found = np.fromiter((self._table.get(h, 0) for h in hashes.tolist()), np.int64, hashes.size)
        return found if self.base is None else found + self.base._find(hashes)

    def __repr__(self) -> str:
        return f"AdaptiveNgram(base={self.base!r}, orders={self.orders}, windows={self.windows})"


# ------------------------------------------------------------------------------------------- npz with aligned members


def write_aligned_npz(fileobj: io.BufferedWriter, arrays: Mapping[str, np.ndarray]) -> None:
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
