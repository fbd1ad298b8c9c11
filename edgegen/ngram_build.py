"""Building an n-gram store (:mod:`edgegen.ngram`) from a corpus of files or texts.

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
import json
import os
import platform
import shutil
import sysconfig
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from edgegen.errors import EdgegenError
from edgegen.files import publish_file, scratch_folder
from edgegen.ngram import (
    CHAIN_SEED,
    DEFAULT_ORDERS,
    FORMAT,
    FORMAT_VERSION,
    HASH_NAME,
    chain_step,
    parse_orders,
    tokenizer_identity,
    window_lengths,
    write_aligned_npz,
)
from edgegen.tokenizer import TextTokenizer

_U64 = np.uint64
_N_BUCKETS = 64  # hash-range partitions of the build (top 6 bits)
_BUCKET_SHIFT = _U64(64 - 6)

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
        h = np.full(n, CHAIN_SEED, dtype=_U64)
        for m in range(1, self.max_len + 1):
            width = n - m + 1
            if width <= 0:
                break
            h = chain_step(h[:width], tokens[m - 1:m - 1 + width])
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
    t0 = time.perf_counter()
    with scratch_folder(out) as work:  # spill files, then the new store until it replaces out
        counter = _Counter(window_lengths(orders), chunk_tokens, memory_mb << 20, work)
        try:
            _count(items, files, tokenizer, counter, max_tokens, progress,
                   f"n-gram store ({'..'.join(map(str, (orders[0], orders[-1])))})")
            keys, counts, sizes = counter.finish(min_count, progress)
        finally:
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
        _atomic_write(out, arrays, work)
    return out


def _count(items: Iterable[str | Path], files: list[Path], tokenizer: TextTokenizer, counter: _Counter,
           max_tokens: int | None, progress: bool, desc: str) -> None:
    """Tokenize the corpus (each file or text one document) into ``counter``, up to ``max_tokens``."""
    from tqdm import tqdm

    bos = tokenizer.manifest.bos_token_id if tokenizer.manifest.add_bos else None
    added = 0
    total_bytes = sum(f.stat().st_size for f in files) if files else None
    with tqdm(total=total_bytes, unit="B" if files else " docs", unit_scale=bool(files), disable=not progress,
              desc=desc) as bar:
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


def _describe(items: Iterable[str | Path]) -> str:
    if isinstance(items, Iterator):
        return "texts from an iterator"
    files = [i for i in items if isinstance(i, Path)]
    texts = sum(isinstance(i, str) for i in items)
    folders = sorted({str(os.path.commonpath([str(f.resolve()) for f in files]))}) if files else []
    parts = [f"{len(files)} files under {folders[0]}"] if files else []
    return "; ".join(parts + ([f"{texts} texts"] if texts else []))


def _atomic_write(out: Path, arrays: Mapping[str, np.ndarray], work: Path) -> None:
    """Write into ``work`` (a scratch folder next to ``out``), fsync, then os.replace: readers see the old
    store or the whole new one, and a failure leaves no partial file."""
    tmp = work / out.name
    try:
        with open(tmp, "wb") as f:
            write_aligned_npz(f, arrays)
            f.flush()
            os.fsync(f.fileno())
        publish_file(tmp, out)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise EdgegenError(f"cannot write n-gram store {out}: {e.strerror or e}") from None
        raise


# ---------------------------------------------------------------------------------------------- the default corpus

_STDLIB_SKIP = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "encodings",
                "pydoc_data", "ensurepip"}


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
