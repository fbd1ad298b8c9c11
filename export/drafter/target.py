"""The target a drafter is trained for: its HF folder (the teacher) and the facts a runtime checks."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgegen.errors import EdgegenError


@dataclass(frozen=True)
class TargetInfo:
    spec: str  # what the user gave: "default", a folder or a file
    hf_dir: Path  # fp32 HF folder of the target (the teacher)
    name: str
    vocab_size: int
    tokenizer_sha256: str

    def facts(self) -> dict[str, object]:
        return {"target_name": self.name, "target_vocab_size": self.vocab_size,
                "target_tokenizer_sha256": self.tokenizer_sha256}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _cached_hf(src: object, dest: Path) -> Path:
    """materialize_hf into `dest` once (built in a sibling and renamed; `.complete` marks a finished folder)."""
    from edgegen.export.source import materialize_hf

    if (dest / ".complete").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        materialize_hf(src, tmp / "hf")  # type: ignore[arg-type]
        (tmp / "hf" / ".complete").write_text("ok\n")
        if dest.exists():
            shutil.rmtree(dest)
        (tmp / "hf").rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _hf_vocab(hf_dir: Path) -> int:
    try:
        cfg = json.loads((hf_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EdgegenError(f"cannot read {hf_dir / 'config.json'}: {e}") from None
    cfg = cfg.get("text_config", cfg)
    if "vocab_size" not in cfg:
        raise EdgegenError(f"{hf_dir / 'config.json'} has no vocab_size")
    return int(cfg["vocab_size"])


def resolve_target(spec: str | Path | None, cache_dir: Path) -> TargetInfo:
    """`spec`: "default", an exported edgegen folder, an HF folder or a .gguf; GGUFs are converted once into
    `cache_dir/target-hf`."""
    from edgegen.export.source import resolve_source
    from edgegen.manifest import is_model_folder, read_manifest

    spec_s = "default" if spec is None else str(spec)
    cache = Path(cache_dir) / "target-hf"
    if spec_s != "default" and is_model_folder(Path(spec_s)):
        folder = Path(spec_s).expanduser().resolve()
        m = read_manifest(folder)
        src_path = m.source.get("path")
        if not src_path:
            raise EdgegenError(f"{folder} does not record its export source; pass the HF folder or GGUF as --target")
        src = resolve_source(src_path)
        hf = src.path if src.kind == "hf" else _cached_hf(src, cache)
        sha = file_sha256(folder / m.tokenizer)
        vocab = _hf_vocab(hf)
        if vocab != m.vocab_size:
            raise EdgegenError(f"{folder}: manifest vocab {m.vocab_size} but its source has {vocab}")
        if file_sha256(hf / "tokenizer.json") != sha:
            raise EdgegenError(f"{folder}: its tokenizer differs from its source's ({src.path}); re-export it")
        return TargetInfo(str(folder), hf, m.name, vocab, sha)
    src = resolve_source(None if spec_s == "default" else spec_s)
    hf = src.path if src.kind == "hf" else _cached_hf(src, cache)
    if not (hf / "tokenizer.json").is_file():
        raise EdgegenError(f"{hf} has no tokenizer.json")
    return TargetInfo(spec_s, hf, src.name, _hf_vocab(hf), file_sha256(hf / "tokenizer.json"))
