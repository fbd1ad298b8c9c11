"""torch backend: the export's ``torch`` format (the Hugging Face model, safetensors) run by transformers.

For a machine where torch is the runtime that has the accelerator (a CUDA server without onnxruntime-gpu),
or to check the other backends against transformers itself. An optional extra (``pip install
'edgegen[torch]'``): torch is imported when a session is opened, never when this module is, so listing
devices or choosing another backend does not load it.

The KV cache is preallocated once on the session's device, [1, kv_heads, max_length, head_dim] per layer
(our own transformers cache layer). A forward writes its rows at ``position`` and attends over the first
``position + n`` slots (a view, no copy); rolling back (``trim``) only moves ``position``: the next forward
overwrites the dropped slots, and nothing ever reads past its own end. The cache never leaves the device.

On CUDA each step copies back only what it returns: ``forward`` the logits rows it asked for (one row at
prefill: ``last_only`` also cuts the LM head to that row), ``forward_top`` only each row's best token ids, their
logits and a finiteness flag, chosen on the device (greedy AR and greedy verification use it: a few bytes a
row instead of a vocab row of float32, ~200 KB for a 49k vocabulary); token ids go in as a few bytes. Sampling,
penalties and constraints choose on the host from full rows (the Sampler): docs/backends.md has the figures.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import EdgegenError
from edgegen.manifest import Manifest
from edgegen.runtimes.base import SlotCache, TopTokens

FORMAT = "torch"
# The libraries a session needs: missing ones make this module an ImportError, like the other backends'
# (runtimes lists no device for it and names the extra to install).
_NEEDS = ("torch", "transformers", "safetensors")
_missing = [name for name in _NEEDS if importlib.util.find_spec(name) is None]
if _missing:
    raise ModuleNotFoundError(f"the torch backend needs {', '.join(_missing)}", name=_missing[0])

DEVICES = {"CPU": "cpu", "CUDA": "cuda"}
_NVIDIA_DRIVER = (Path("/proc/driver/nvidia/version"), Path("/dev/nvidiactl"))  # either: a driver is loaded
# stored weights -> the dtype a session computes in, per device: the CPU upcasts fp16 (no fast fp16 kernels)
_DTYPES = {"cpu": {"fp32": "float32", "fp16": "float32"}, "cuda": {"fp32": "float32", "fp16": "float16"}}


def available_devices() -> list[str]:
    """CPU, and CUDA where torch already sees a GPU, or (torch not loaded yet) where an NVIDIA driver is present.

    Not importing torch here keeps device listing cheap for every other backend's user; opening a CUDA
    session is the definite check (a CPU-only torch build is one clear error then)."""
    if "torch" in sys.modules:
        return ["CPU", "CUDA"] if sys.modules["torch"].cuda.is_available() else ["CPU"]
    return ["CPU", "CUDA"] if any(p.exists() for p in _NVIDIA_DRIVER) else ["CPU"]


class TorchSession(SlotCache):
    """A Session (see runtimes.base) over a transformers causal LM with a static, device-resident KV cache.

    The model takes input embeddings itself, so every session has ``embed`` and ``forward_embeddings``
    (superposed decoding needs no second graph); ``embeddings`` is accepted for the common signature.
    """

    backend = "torch"
    has_hidden = True  # the LM head's input is read with a hook for the forwards that ask

    def __init__(self, folder: Path, manifest: Manifest, device: str = "CPU", max_length: int | None = None,
                 threads: int | None = None, embeddings: bool = False) -> None:
        graph = manifest.graph(FORMAT)
        where = DEVICES.get(device.upper())
        if where is None:
            raise EdgegenError(f"unknown torch device '{device}' (known: {', '.join(DEVICES)})")
        torch = importlib.import_module("torch")
        transformers = importlib.import_module("transformers")
        if where == "cuda" and not torch.cuda.is_available():
            raise EdgegenError(f"device '{device}' is not present: this torch ({torch.__version__}) sees no CUDA GPU")
        if graph.weights not in _DTYPES[where]:
            raise EdgegenError(f"{folder}: torch weights '{graph.weights}' are not fp32 or fp16; re-export the model")
        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        dtype = getattr(torch, _DTYPES[where][graph.weights])
        bars = transformers.utils.logging.is_progress_bar_enabled()
        transformers.utils.logging.disable_progress_bar()  # a session opens quietly, like the other backends'
        try:
            # safetensors only (no pickle), no code from the folder, nothing fetched
            model = transformers.AutoModelForCausalLM.from_pretrained(
                str(folder / Path(graph.path).parent), dtype=dtype, use_safetensors=True, local_files_only=True,
                trust_remote_code=False)
        except (OSError, ValueError, KeyError) as e:
            raise EdgegenError(f"cannot load {folder / graph.path}: {str(e).strip().splitlines()[0]}") from None
        finally:
            if bars:
                transformers.utils.logging.enable_progress_bar()
        self._model = model.to(where).eval()
        self.manifest = manifest
        self.device = str(next(self._model.parameters()).device)
        self._limit = min(max_length or manifest.context_length, manifest.context_length)
        self._cache = _static_cache(manifest, self._limit, dtype, torch.device(where))
        self._positions = torch.arange(self._limit, device=where).reshape(1, -1)  # position_ids are views of it
        self._embedding = self._model.get_input_embeddings()
        self._hidden: np.ndarray | None = None
        self.reset()

    def forward(self, token_ids: np.ndarray, last_only: bool = False, hidden: bool = False) -> np.ndarray:
        """Session.forward: logits of each row (or of the last), the ids remembered once run; ``hidden`` also
        keeps the same rows' final hidden states (the LM head's input) for ``hidden_states``."""
        return _host(self._forward_ids(token_ids, last_only, hidden))

    def forward_top(self, token_ids: np.ndarray, k: int = 1, last_only: bool = False,
                    hidden: bool = False) -> TopTokens:
        """Session.forward_top: each row's ``k`` best tokens chosen on the session's device; only they cross."""
        if not 1 <= k <= self.manifest.vocab_size:  # before the forward: the cache stays as it was
            raise ValueError(f"k must lie in [1, {self.manifest.vocab_size}], got {k}")
        return top_on_device(self._forward_ids(token_ids, last_only, hidden), k)

    def _forward_ids(self, token_ids: np.ndarray, last_only: bool, hidden: bool) -> Any:
        """The forward of ``token_ids``: its logits rows, still on the device."""
        ids = np.ascontiguousarray(token_ids, dtype=np.int64).reshape(1, -1)
        start = self._position
        self._hidden = None
        inputs = {"input_ids": self._torch.from_numpy(ids).to(self._positions.device)}
        if hidden:
            head = self._model.get_output_embeddings()
            hook = head.register_forward_hook(lambda module, args, out: setattr(self, "_hidden_rows", args[0]))
            try:
                logits = self._run(inputs, ids.shape[1], last_only)
            finally:
                hook.remove()
            self._hidden = self._hidden_rows[0].float().cpu().numpy()
        else:
            logits = self._run(inputs, ids.shape[1], last_only)
        self._held(start, ids[0].tolist())
        return logits

    def hidden_states(self) -> np.ndarray:
        """Float32 (rows, hidden): the last forward(..., hidden=True)'s final hidden states, one per logits row."""
        if self._hidden is None:
            raise EdgegenError("hidden_states() needs a forward(..., hidden=True) before it")
        return self._hidden

    def embed(self, token_ids: np.ndarray) -> np.ndarray:
        """The model's own input embeddings of ``token_ids`` (n, hidden) float32: what it computes from ids
        (Gemma 3's scaled embedding included), so ``forward_embeddings(embed(ids))`` is ``forward(ids)``."""
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        vocab = self._embedding.num_embeddings
        if ids.size and (ids.min() < 0 or ids.max() >= vocab):
            raise EdgegenError(f"token ids must lie in [0, {vocab})")
        with self._torch.inference_mode():
            rows = self._embedding(self._torch.from_numpy(ids).to(self._positions.device))
        return rows.float().cpu().numpy()

    def forward_embeddings(self, embeddings: np.ndarray, last_only: bool = False) -> np.ndarray:
        """Like ``forward``, fed input embeddings (n, hidden) float32 (e.g. from ``embed``) instead of ids."""
        x = np.asarray(embeddings)
        hidden = self.manifest.hidden_size
        if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] != hidden:
            raise EdgegenError(f"embeddings must have shape (n, {hidden}) with n >= 1, got {x.shape}")
        start = self._position
        self._hidden = None
        rows = self._torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)[None])
        logits = self._run({"inputs_embeds": rows.to(self._positions.device, self._cache.dtype)}, x.shape[0],
                           last_only)
        self._held(start, [-1] * x.shape[0])  # rows fed as embeddings never match an id
        return _host(logits)

    def _run(self, inputs: dict[str, Any], n: int, last_only: bool) -> Any:
        start, end = self._position, self._position + n
        if end > self._limit:
            raise EdgegenError(f"sequence of {end} tokens exceeds this session's maximum of {self._limit}")
        self._cache.start = start
        with self._torch.inference_mode():
            out = self._model(**inputs, position_ids=self._positions[:, start:end], past_key_values=self._cache,
                              use_cache=True, logits_to_keep=1 if last_only else 0)
        self._position = end
        return out.logits[0]  # (rows, vocab) on the device


def _host(logits: Any) -> np.ndarray:
    """Logits rows copied to the host as float32 (only the rows a forward returns cross)."""
    return logits.float().cpu().numpy()


def top_on_device(logits: Any, k: int) -> TopTokens:
    """TopTokens of a (rows, vocab) logits tensor, computed where it lies: k ids, k logits and a flag per row cross.

    k = 1 is ``torch.max``, whose index is the first of equal maxima (on CPU and CUDA), as NumPy's argmax."""
    torch = importlib.import_module("torch")
    finite = torch.isfinite(logits).all(-1)
    if k == 1:
        values, ids = torch.max(logits, -1, keepdim=True)
        return TopTokens(ids.cpu().numpy(), values.float().cpu().numpy(), finite.cpu().numpy())
    values, ids = torch.topk(logits, k, -1)  # the order of equal values is torch's: sorted by id on the host
    return TopTokens.ordered(ids.cpu().numpy(), values.float().cpu().numpy(), finite.cpu().numpy())


def _static_cache(manifest: Manifest, slots: int, dtype: Any, device: Any) -> Any:
    """A transformers Cache of preallocated per-layer buffers, written at the session's position.

    Every layer attends over all its live slots, sliding-window layers included: the model's own sliding
    mask hides what lies outside the window, so a rollback never has to restore a ring buffer."""
    torch = importlib.import_module("torch")
    cache_utils = importlib.import_module("transformers.cache_utils")
    shape = (1, manifest.num_kv_heads, slots, manifest.head_dim)

    class PositionedCache(cache_utils.Cache):
        start = 0  # the slot the next forward writes its first row to (the session's position)
        dtype = None

    class Slots(cache_utils.CacheLayerMixin):
        """One layer's keys and values."""

        def __init__(self, owner: PositionedCache) -> None:
            super().__init__()
            self.owner, self.max_cache_len, self.max_batch_size = owner, slots, 1
            self.keys = torch.zeros(shape, dtype=dtype, device=device)
            self.values = torch.zeros(shape, dtype=dtype, device=device)
            self.dtype, self.device, self.is_initialized = dtype, device, True

        def lazy_initialization(self, key_states: Any, value_states: Any) -> None:  # allocated up front
            pass

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            start = self.owner.start
            end = start + key_states.shape[-2]
            self.keys[:, :, start:end] = key_states
            self.values[:, :, start:end] = value_states
            return self.keys[:, :, :end], self.values[:, :, :end]

        def get_mask_sizes(self, query_length: Any) -> tuple[int, int]:
            # transformers < 5 passes the cache positions instead of their count
            rows = query_length if isinstance(query_length, int) else int(query_length.shape[-1])
            return self.owner.start + rows, 0

        def get_seq_length(self) -> int:
            return self.owner.start

        def get_max_cache_shape(self) -> int:
            return slots

        def reset(self) -> None:
            self.owner.start = 0

    cache = PositionedCache(layers=[])
    cache.layers = [Slots(cache) for _ in range(manifest.num_layers)]
    cache.dtype = dtype
    return cache
