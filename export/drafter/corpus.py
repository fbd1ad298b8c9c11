"""Stage-1 corpus: Python standard-library sources plus offline English text (Debian docs, package READMEs).

Built once per run folder, deterministically from the seed: the matching files are sorted, shuffled with
the seed, the first ones become the held-out splits, the rest fill the training budget. Files are joined
with the EOS token. Written to `corpus/` atomically (sibling folder, then rename).
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import sys
import sysconfig
from pathlib import Path

import numpy as np

from edgegen.errors import EdgegenError
from edgegen.export.pipeline import atomic_folder

CORPUS_DIR = "corpus"
_TEXT_SUFFIXES = {".txt", ".md", ".rst", ".markdown", ""}
_TEXT_SKIP = ("copyright", "changelog", "license", "licence")


def _site_packages() -> str:
    return sysconfig.get_paths().get("purelib") or str(Path(sys.prefix) / "lib")


def _expand(globs: list[str]) -> list[Path]:
    sp = _site_packages()
    out: set[Path] = set()
    for g in globs:
        for p in glob.glob(g.replace("{site_packages}", sp), recursive=True):
            out.add(Path(p))
    return sorted(p for p in out if p.is_file())


def code_files(globs: list[str]) -> list[Path]:
    return [p for p in _expand(globs) if p.suffix == ".py" and not {"site-packages", "test", "tests"} & set(p.parts)]


def text_files(globs: list[str]) -> list[Path]:
    keep = []
    for p in _expand(globs):
        name = p.name.lower()
        base = name[:-3] if name.endswith(".gz") else name
        if any(s in base for s in _TEXT_SKIP):
            continue
        suffix = Path(base).suffix
        if name == "metadata" or base.startswith(("readme", "news")) or (suffix in _TEXT_SUFFIXES and suffix):
            keep.append(p)
    return keep


def read_text(path: Path, max_chars: int) -> str:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile):
        return ""
    if b"\x00" in raw[:4096]:
        return ""
    text = raw.decode("utf-8", errors="replace")
    return text[:max_chars].strip()


def _take(files: list[Path], tok: object, budget: int, max_chars: int, eos: int,
          start: int) -> tuple[list[int], list[str], int]:
    """Tokenize files from `start` until `budget` tokens; returns (tokens, file names, next index)."""
    ids: list[int] = []
    names: list[str] = []
    i = start
    while i < len(files) and len(ids) < budget:
        text = read_text(files[i], max_chars)
        i += 1
        if len(text) < 64:
            continue
        ids.extend(tok.encode(text).ids)  # type: ignore[attr-defined]
        ids.append(eos)
        names.append(str(files[i - 1]))
    return ids, names, i


def build_corpus(run_dir: Path, tokenizer_json: Path, eos_id: int, *, code_globs: list[str], text_globs: list[str],
                 tokens: int, code_share: float, val_tokens: int, max_file_chars: int, seed: int,
                 echo=print) -> dict[str, object]:
    """Build (or reuse) `run_dir/corpus`; returns its summary (token counts, file counts)."""
    out = Path(run_dir) / CORPUS_DIR
    if (out / "corpus.json").is_file():
        return json.loads((out / "corpus.json").read_text())
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    rng = np.random.default_rng(seed)
    code = code_files(code_globs)
    text = text_files(text_globs)
    if not code and not text:
        raise EdgegenError("no corpus files matched the code and text globs")
    code = [code[i] for i in rng.permutation(len(code))]
    text = [text[i] for i in rng.permutation(len(text))]
    echo(f"corpus: {len(code)} code files, {len(text)} text files match; tokenizing...")
    val_code, vc_names, ci = _take(code, tok, val_tokens, max_file_chars, eos_id, 0)
    val_text, vt_names, ti = _take(text, tok, val_tokens, max_file_chars, eos_id, 0)
    code_budget = int(tokens * code_share) if text else tokens
    tr_code, trc_names, _ = _take(code, tok, code_budget, max_file_chars, eos_id, ci)
    tr_text, trt_names, _ = _take(text, tok, tokens - len(tr_code), max_file_chars, eos_id, ti)
    # Interleave whole documents deterministically: shuffle the document order of the training split.
    docs: list[list[int]] = []
    for stream in (tr_code, tr_text):
        cur: list[int] = []
        for t in stream:
            cur.append(t)
            if t == eos_id:
                docs.append(cur)
                cur = []
        if cur:
            docs.append(cur)
    order = rng.permutation(len(docs))
    train = np.fromiter((t for i in order for t in docs[i]), dtype=np.int32)
    if len(train) < 2:
        raise EdgegenError("the training corpus is empty: widen the code/text globs")
    summary = {
        "seed": seed,
        "train_tokens": int(len(train)),
        "train_code_tokens": len(tr_code),
        "train_text_tokens": len(tr_text),
        "val_code_tokens": len(val_code),
        "val_text_tokens": len(val_text),
        "train_code_files": len(trc_names),
        "train_text_files": len(trt_names),
        "val_code_files": len(vc_names),
        "val_text_files": len(vt_names),
        "files": {"val_code": vc_names, "val_text": vt_names, "train_code": trc_names, "train_text": trt_names},
    }
    with atomic_folder(out, check=False) as tmp:
        np.save(tmp / "train.npy", train)
        np.save(tmp / "val_code.npy", np.asarray(val_code, dtype=np.int32))
        np.save(tmp / "val_text.npy", np.asarray(val_text, dtype=np.int32))
        (tmp / "corpus.json").write_text(json.dumps(summary, indent=1) + "\n")
    echo(f"corpus: train {summary['train_tokens']} tokens ({len(tr_code)} code / {len(tr_text)} text), "
         f"held out {len(val_code)} code + {len(val_text)} text tokens")
    return summary


def load_split(run_dir: Path, name: str) -> np.ndarray:
    return np.load(Path(run_dir) / CORPUS_DIR / f"{name}.npy")
