"""Hydra draft heads in NumPy (their products optionally on ONNX Runtime, int8): small MLPs that draft from the
target's own last hidden state.

A heads file (safetensors; trained by ``edgegen heads train``, export/hydra/) holds K sequentially dependent
heads. Head k (1-based) proposes the token k+1 places after the last accepted position t, reading:

- ``hidden``: the target's LAST DECODER HIDDEN STATE AFTER THE FINAL NORM (the LM head's input) at position t,
  shape (hidden_size,) float32 (``feature`` in the metadata: ``"final_norm_hidden"``);
- ``base_token``: the target's own next token at t (its argmax under greedy decoding, its sample otherwise),
  which head 1 conditions on; head k also conditions on the tokens heads 1..k-1 drafted.

Architecture (one head; ``d`` = hidden_size, ``V`` = the reduced output vocabulary, ``E`` its embedding rows)::

    r_0 = hidden
    u   = W_in,k [r_{k-1}; E[x_{t+k}]] + b_in,k          # the state so far and the last token (2d -> d)
    u   = u + silu(W_j u + b_j)       for each block j    # residual MLP blocks (d -> d)
    r_k = u;  logits_k = E r_k + bias_k                   # scored by the target's own (tied) embedding rows

so head k sees the hidden state and, through r_{k-1}, every token drafted before it (Hydra's sequential
dependence) at the cost of one 2d x d matmul, the blocks and one V x d matmul. The output vocabulary is the
V most frequent target tokens (the target's special tokens always kept; ``vocab`` maps head index ->
target id); a token outside it (only ever the base token) is embedded as the ``unknown`` row (the mean of
the other tokens' embeddings). Drafts are always in ``vocab``; their distributions spread back over the full
vocabulary with zeros elsewhere (:meth:`HydraHeads.full_distribution`), so the target verifies over the
whole vocabulary and speculative sampling stays lossless.

The file is read without torch or safetensors (neither is a runtime dependency): a safetensors file is an
8-byte little-endian header length, a JSON header (dtype, shape, byte offsets; ``__metadata__``) and the
raw little-endian tensors, read here with ``np.frombuffer`` (no pickle). Weights (fp32, fp16 or int8 blocks
of 32 with fp16 scales) are kept as float32, or quantized again to int8 for ONNX Runtime (``int8=True``).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import EdgegenError

FORMAT = "edgegen-hydra-heads/1"
METADATA_KEY = "edgegen_heads"
_INT8_RULE = "MatMulNBitsQuantizer 8-bit blocks of 32, symmetric, accuracy 4"  # in the int8 graphs' cache key
FEATURE = "final_norm_hidden"  # what ``hidden`` must be: the target's last hidden state after its final norm
_DTYPES = {"F32": np.float32, "F16": np.float16, "I32": np.int32, "I64": np.int64, "I8": np.int8,
           "BF16": None}


def read_safetensors(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, metadata) of a safetensors file, as NumPy arrays (copies; bf16 is refused)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + n])
    except (OSError, struct.error, ValueError) as e:
        raise EdgegenError(f"cannot read {path} as a safetensors file: {e}") from None
    meta = header.pop("__metadata__", None) or {}
    data = memoryview(raw)[8 + n:]
    tensors = {}
    for name, spec in header.items():
        dtype = _DTYPES.get(spec.get("dtype"))
        begin, end = spec["data_offsets"]
        if dtype is None or not 0 <= begin <= end <= len(data):
            raise EdgegenError(f"{path}: tensor {name} has an unsupported dtype or a bad extent")
        arr = np.frombuffer(data[begin:end], dtype=np.dtype(dtype).newbyteorder("<"))
        tensors[name] = arr.reshape(spec["shape"]).astype(dtype, copy=True)
    return tensors, meta


def dequantize(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """float32 weights from a heads file: int8 blocks (``NAME.q8`` (rows, cols) with ``NAME.scale`` (rows,
    cols / block) fp16) are multiplied out; other float tensors are widened; integer tensors kept."""
    out = {}
    for name, t in tensors.items():
        if name.endswith(".scale"):
            continue
        if name.endswith(".q8"):
            base = name[: -len(".q8")]
            scale = tensors[base + ".scale"].astype(np.float32)
            block = t.shape[1] // scale.shape[1]
            out[base] = (t.astype(np.float32).reshape(t.shape[0], -1, block) * scale[..., None]).reshape(t.shape)
        else:
            out[name] = t.astype(np.float32) if t.dtype.kind == "f" else t
    return out


@dataclass(frozen=True)
class HeadsDraft:
    """A chain drafted by the heads: ``tokens[k]`` (target ids) came from head k+1.

    ``logits`` (n, V): each head's raw scores over the reduced vocabulary (``HydraHeads.vocab``);
    ``probs`` (n, V): the distribution each token was drawn from (softmax(logits / T); at T = 0 softmax(logits),
    the token being its argmax)."""

    tokens: np.ndarray
    logits: np.ndarray
    probs: np.ndarray


@dataclass(frozen=True)
class HeadsTree:
    """Candidates for tree verification, in breadth-first order: node i is ``tokens[i]`` (a target id) at
    ``depth[i]`` (1 = head 1's candidates, children of the base token) whose parent is node ``parents[i]``
    (-1: the base token). ``probs[i]``: the token's probability under its head's distribution given the path
    to it; ``paths_prob[i]``: the product along the path (the heads' own estimate that the whole path is
    accepted)."""

    tokens: np.ndarray
    parents: np.ndarray
    depth: np.ndarray
    probs: np.ndarray
    paths_prob: np.ndarray


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


Product = Callable[[np.ndarray], np.ndarray]  # x (rows, in) -> x @ W (rows, out)


class _Dense:
    """``x @ weight`` in NumPy float32: the exact products (the training side's reference)."""

    def __init__(self, weight: np.ndarray) -> None:
        self.weight = np.ascontiguousarray(weight, np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x @ self.weight


def _numpy_products(weights: dict[str, np.ndarray]) -> dict[str, Product]:
    return {name: _Dense(w) for name, w in weights.items()}


def _int8_products(path: Path, weights: dict[str, np.ndarray]) -> dict[str, Product]:
    """The products on ONNX Runtime with int8 weights, their graphs built once per heads file into the cache (building
    imports ``onnx``, 0.7 s; loading them does not). One thread: a one-row product does not pay for waking a pool."""
    from edgegen.cache import build_once, cache_dir, input_key
    from edgegen.files import atomic_folder
    from edgegen.runtimes.onnxruntime_linear import Int8Linear, int8_linear_model

    folder = cache_dir() / "heads-int8" / f"{path.stem}-{input_key([path], [_INT8_RULE])}"

    def build() -> Path:
        with atomic_folder(folder, check=False) as tmp:
            for name, w in weights.items():
                (tmp / f"{name}.onnx").write_bytes(int8_linear_model(w))
        return folder

    build_once(folder, f"the int8 graphs of {path.name}", build, progress=False, complete=Path.is_dir)  # atomic
    return {name: Int8Linear(folder / f"{name}.onnx", threads=1) for name in weights}


class HydraHeads:
    """K Hydra heads for one target, run in NumPy (float32), or with ``products`` computing their matrix products
    (``open(path, int8=True)``: ONNX Runtime with int8 weights, a head in 0.67x NumPy's time with a cold cache,
    close but not equal; docs/hydra.md). Open with :meth:`open`."""

    def __init__(self, tensors: dict[str, np.ndarray], info: dict[str, Any],
                 products: Callable[[dict[str, np.ndarray]], dict[str, Product]] | None = None) -> None:
        self.info = info
        self.num_heads = int(info["num_heads"])
        self.layers = int(info["layers"])
        self.hidden_size = d = int(info["hidden_size"])
        self.vocab_size = int(info["vocab_size"])  # the target's
        self.vocab = tensors["vocab"].astype(np.int64)  # head index -> target token id
        embed = tensors["embed"].astype(np.float32)
        V = len(self.vocab)
        if embed.shape != (V + 1, d) or self.vocab.min() < 0 or self.vocab.max() >= self.vocab_size:
            raise EdgegenError("heads file: the embedding or the vocabulary does not fit its metadata")
        self.embed = np.ascontiguousarray(embed)  # (V + 1, d): the unknown token's row last
        self.index = np.full(self.vocab_size, V, dtype=np.int64)  # target id -> head index (V: unknown)
        self.index[self.vocab] = np.arange(V)
        # Products as x @ W with W (in, out): the tied output projection, and per head its input layer over
        # [state ; token embedding] and its blocks.
        weights = {"out": embed[:V].T}
        for k in range(self.num_heads):
            w_in = tensors[f"heads.{k}.w_in"].astype(np.float32)
            if w_in.shape != (d, 2 * d):
                raise EdgegenError(f"heads file: heads.{k}.w_in has shape {w_in.shape}, expected {(d, 2 * d)}")
            weights[f"w_in.{k}"] = w_in.T
            weights.update({f"block.{k}.{j}": tensors[f"heads.{k}.blocks.{j}.w"].astype(np.float32).T
                            for j in range(self.layers)})
        dense = (products or _numpy_products)(weights)
        self.out = dense["out"]
        self.w_in = [dense[f"w_in.{k}"] for k in range(self.num_heads)]
        self.blocks = [[(dense[f"block.{k}.{j}"], tensors[f"heads.{k}.blocks.{j}.b"].astype(np.float32))
                        for j in range(self.layers)] for k in range(self.num_heads)]
        self.b_in = [tensors[f"heads.{k}.b_in"].astype(np.float32) for k in range(self.num_heads)]
        self.bias = [tensors[f"heads.{k}.bias"].astype(np.float32) for k in range(self.num_heads)]

    @classmethod
    def open(cls, path: str | Path, int8: bool = False) -> HydraHeads:
        """Load a heads file (``int8``: products on ONNX Runtime, see the class); one EdgegenError for a missing,
        foreign or malformed file."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise EdgegenError(f"heads file not found: {path}")
        tensors, meta = read_safetensors(path)
        tensors = dequantize(tensors)
        try:
            info = json.loads(meta[METADATA_KEY])
        except (KeyError, ValueError):
            raise EdgegenError(f"{path} is not a Hydra heads file (no {METADATA_KEY} metadata)") from None
        if info.get("format") != FORMAT:
            raise EdgegenError(f"{path} has format {info.get('format')!r}; this edgegen reads {FORMAT}")
        if info.get("feature") != FEATURE:
            raise EdgegenError(f"{path} reads feature {info.get('feature')!r}; this edgegen provides {FEATURE}")
        try:
            return cls(tensors, info, partial(_int8_products, path) if int8 else None)
        except KeyError as e:
            raise EdgegenError(f"{path}: heads file lacks tensor {e}") from None

    @property
    def head_vocab_size(self) -> int:
        """V: the size of the heads' reduced output vocabulary."""
        return len(self.vocab)

    def head(self, k: int, state: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Head ``k`` (0-based) on rows: ``state`` (n, d) = r_k (the hidden state for k = 0), ``tokens`` (n,)
        target ids of the token each row just drafted; returns (r_{k+1} (n, d), logits (n, V))."""
        x = self.w_in[k](np.concatenate([state, self.embed[self.index[tokens]]], axis=1)) + self.b_in[k]
        for dense, b in self.blocks[k]:
            x = x + _silu(dense(x) + b)
        return x, self.out(x) + self.bias[k]

    def _check(self, hidden: np.ndarray, base_token: int) -> np.ndarray:
        h = np.asarray(hidden, dtype=np.float32).reshape(-1)
        if h.shape != (self.hidden_size,):
            raise EdgegenError(f"heads need a hidden state of {self.hidden_size} values, got {h.shape}")
        if not 0 <= int(base_token) < self.vocab_size:
            raise EdgegenError(f"base token {base_token} is outside the target's vocabulary")
        return h[None, :]

    def chain(self, hidden: np.ndarray, base_token: int, n: int | None = None, temperature: float = 0.0,
              rng: np.random.Generator | None = None) -> HeadsDraft:
        """Draft up to ``n`` (default: every head) tokens after ``base_token``, one per head in order.

        ``temperature`` 0: each token is its head's argmax (greedy verification). Above 0: each token is sampled
        from softmax(logits / temperature) with ``rng``, and ``probs`` is that distribution (q of speculative
        sampling, over ``vocab``; :meth:`full_distribution` spreads it over the target's vocabulary)."""
        n = self.num_heads if n is None else min(int(n), self.num_heads)
        if temperature < 0:
            raise EdgegenError(f"temperature must be >= 0, got {temperature}")
        if temperature > 0 and rng is None:
            raise EdgegenError("sampling draft tokens needs an rng")
        state, token = self._check(hidden, base_token), np.array([int(base_token)])
        tokens = np.zeros(n, dtype=np.int64)
        logits = np.zeros((n, self.head_vocab_size), dtype=np.float32)
        probs = np.zeros_like(logits)
        for k in range(n):
            state, lg = self.head(k, state, token)
            logits[k] = lg[0]
            if temperature == 0:
                probs[k] = _softmax(lg[0].astype(np.float64))
                pick = int(np.argmax(lg[0]))
            else:
                q = _softmax(lg[0].astype(np.float64) / temperature)
                probs[k] = q
                pick = min(int(np.searchsorted(np.cumsum(q), rng.random() * q.sum(), side="right")), len(q) - 1)
            tokens[k] = self.vocab[pick]
            token = tokens[k:k + 1]
        return HeadsDraft(tokens, logits, probs)

    def tree(self, hidden: np.ndarray, base_token: int, widths: tuple[int, ...]) -> HeadsTree:
        """A candidate tree: every node at depth k gets its head's top ``widths[k]`` tokens as children
        (len(widths) <= num_heads; e.g. (3, 2, 1): 3 + 6 + 6 nodes). Each level is one batched head call."""
        if not widths or len(widths) > self.num_heads or min(widths) < 1:
            raise EdgegenError(f"tree widths must be 1..{self.num_heads} positive numbers, got {widths}")
        state, last = self._check(hidden, base_token), np.array([int(base_token)])
        rows = np.array([-1])  # node index of each row (-1: the base token)
        row_prob = np.ones(1)
        tokens: list[np.ndarray] = []
        parents: list[np.ndarray] = []
        depth: list[np.ndarray] = []
        probs: list[np.ndarray] = []
        paths: list[np.ndarray] = []
        count = 0
        for k, w in enumerate(widths):
            state, lg = self.head(k, state, last)
            p = _softmax(lg.astype(np.float64))
            top = np.argsort(-lg, axis=1, kind="stable")[:, :w]  # (rows, w)
            pick_p = np.take_along_axis(p, top, axis=1)
            n_new = top.size
            tokens.append(self.vocab[top.reshape(-1)])
            parents.append(np.repeat(rows, w))
            depth.append(np.full(n_new, k + 1))
            probs.append(pick_p.reshape(-1))
            paths.append((row_prob[:, None] * pick_p).reshape(-1))
            state = np.repeat(state, w, axis=0)
            last, row_prob = tokens[-1], paths[-1]
            rows = np.arange(count, count + n_new)
            count += n_new
        return HeadsTree(np.concatenate(tokens), np.concatenate(parents), np.concatenate(depth),
                         np.concatenate(probs).astype(np.float32), np.concatenate(paths).astype(np.float32))

    def full_distribution(self, probs: np.ndarray) -> np.ndarray:
        """A distribution over ``vocab`` (..., V) as one over the target's vocabulary (..., vocab_size), zero
        for tokens outside the heads' vocabulary."""
        probs = np.asarray(probs)
        out = np.zeros((*probs.shape[:-1], self.vocab_size), dtype=probs.dtype)
        out[..., self.vocab] = probs
        return out
