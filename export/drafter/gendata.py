"""Stage-2 data: sequences the TARGET generates (FastDraft's alignment set; LUD's generated batches).

Prompts are code prefixes cut from the training code files (raw) and instruction prompts (chat-templated
when the target has a template), as token ids. Each prompt is answered at every temperature (0 = greedy,
else seeded sampling) by the target's fp32 export on edgegen's own runtime: the generation is a batch job
(edgegen/batch.py), so it runs in this process, on a local pool of worker processes (``workers``) or on
Ray Data (``ray``) with the same records, resumably, into shards.

The teacher is the fp32 export of the target's Hugging Face folder (exported once into the edgegen cache,
keyed by the folder's content): the drafter learns the sequences edgegen's runtime produces for the target,
greedy outputs token for token, sampled ones from the same distribution (edgegen's sampler, seeded per
line). Training still scores the sequences with the fp32 torch model, the same weights.

The generic part (``generate_targets``: token-id prompts in, target generations out as batch records,
``read_sequences``: prompt + generation per record) serves any recipe that distils from the target's
outputs; ``build_generations`` / ``load_generations`` are the fine-tuning skeleton's use of it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import EdgegenError

GEN_DIR = "gen"
REQUESTS = "requests.jsonl"  # the batch input: one line per (temperature, prompt)
RECORDS = "records"  # the batch output: a folder of shards
TEACHER_RULE = {"weights": "fp32", "formats": ["openvino"]}  # OpenVINO runs every head size; ONNX GQA needs 16k

_TOPICS = [
    "photosynthesis", "the water cycle", "black holes", "supply and demand", "the French Revolution",
    "vaccines", "plate tectonics", "compound interest", "machine learning", "the immune system",
    "climate change", "the internet", "democracy", "the Roman Empire", "renewable energy", "DNA",
    "inflation", "volcanoes", "the printing press", "electric cars", "sleep", "coffee", "bees",
    "the moon landing", "recycling", "earthquakes", "the stock market", "antibiotics", "rainbows", "gravity",
]
_TASKS = [
    "reverses a string", "checks whether a number is prime", "computes the factorial of n",
    "returns the n-th Fibonacci number", "merges two sorted lists", "counts the words in a text",
    "removes duplicates from a list while keeping order", "flattens a nested list", "parses a CSV line",
    "finds the largest element of a list", "checks whether a string is a palindrome", "sorts a dictionary by value",
    "converts Celsius to Fahrenheit", "reads a JSON file and returns a dict", "computes the mean and median",
    "implements binary search", "validates an email address with a regular expression",
    "returns the greatest common divisor of two numbers", "transposes a matrix", "groups words by their first letter",
]
_FORMS = [
    "Explain {t} in simple terms.", "Write a short paragraph about {t}.", "Give three facts about {t}.",
    "What are the pros and cons of {t}?", "Summarize the history of {t} in a few sentences.",
    "How would you teach {t} to a ten-year-old?",
]
_CODE_FORMS = [
    "Write a Python function that {k}.", "Write a Python function that {k}, with a docstring and type hints.",
    "Show a short Python example that {k} and explain it.",
]


def instruction_prompts() -> list[str]:
    out = [f.format(t=t) for t in _TOPICS for f in _FORMS]
    out += [f.format(k=k) for k in _TASKS for f in _CODE_FORMS]
    return out


def code_prefixes(files: list[str], n: int, rng: np.random.Generator, max_chars: int = 1200) -> list[str]:
    """Up to n prefixes ending right after a `def`/`class` line (plus its docstring's first line)."""
    out: list[str] = []
    order = rng.permutation(len(files)) if files else []
    for i in order:
        if len(out) >= n:
            break
        try:
            text = Path(files[i]).read_text(errors="replace")
        except OSError:
            continue
        lines = text.splitlines(keepends=True)
        starts = [k for k, ln in enumerate(lines) if ln.lstrip().startswith(("def ", "class ")) and k > 3]
        if not starts:
            continue
        k = starts[int(rng.integers(len(starts)))]
        end = k + 1
        if end < len(lines) and lines[end].strip().startswith(('"""', "'''")):
            end += 1
        prefix = "".join(lines[:end])[-max_chars:]
        out.append(prefix)
    return out


def build_prompts(tokenizer_json: Path, hf_dir: Path, code_file_names: list[str], n: int, seed: int,
                  max_prompt_tokens: int) -> list[dict[str, Any]]:
    """[{"kind", "text", "ids"}] deterministically from the seed: half code prefixes, half instructions."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    rng = np.random.default_rng(seed + 1)
    instr = instruction_prompts()
    instr = [instr[i] for i in rng.permutation(len(instr))]
    n_code = n // 2
    prompts: list[dict[str, Any]] = []
    for text in code_prefixes(code_file_names, n_code, rng):
        ids = tok.encode(text).ids[-max_prompt_tokens:]
        prompts.append({"kind": "code", "text": text, "ids": ids})
    template = _chat_renderer(hf_dir)
    k = 0
    while len(prompts) < n and instr:
        q = instr[k % len(instr)]
        k += 1
        text = template(q)
        prompts.append({"kind": "chat", "text": text, "ids": tok.encode(text).ids[-max_prompt_tokens:]})
    order = rng.permutation(len(prompts))
    return [prompts[i] for i in order]


def _chat_renderer(hf_dir: Path):
    """user text -> the prompt string the target sees (its chat template; a plain form without one)."""
    template = None
    p = Path(hf_dir) / "chat_template.jinja"
    if p.is_file():
        template = p.read_text()
    else:
        try:
            template = json.loads((Path(hf_dir) / "tokenizer_config.json").read_text()).get("chat_template")
        except (OSError, json.JSONDecodeError):
            template = None
    if not isinstance(template, str) or not template:
        return lambda q: f"Question: {q}\nAnswer:"
    import jinja2

    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    tpl = env.from_string(template)
    return lambda q: tpl.render(messages=[{"role": "user", "content": q}], add_generation_prompt=True,
                                bos_token="", eos_token="")


@dataclass(frozen=True)
class GenWorkers:
    """Where the target's generations run and how they are stored: ``workers`` generators at once (local
    processes, or Ray actors when ``ray`` is "local" or an address), shards as "jsonl" or "parquet"."""

    workers: int = 1
    ray: str | None = None
    output_format: str = "jsonl"


def teacher_model(hf_dir: Path, progress: bool = True) -> Path:
    """The fp32 export of the target's HF folder (OpenVINO graphs), built once into the edgegen cache under
    a key of the folder's files: every run and worker on this machine reuses it."""
    from edgegen.cache import build_once, cache_dir, input_key
    from edgegen.export import export_model

    hf_dir = Path(hf_dir)
    inputs = sorted(p for p in hf_dir.iterdir() if p.suffix == ".safetensors" or p.name in (
        "config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"))
    out = cache_dir() / "teachers" / f"{hf_dir.name}-{input_key(inputs, TEACHER_RULE)}"
    return build_once(out, f"the fp32 teacher of {hf_dir}", lambda: export_model(
        hf_dir, out, formats=TEACHER_RULE["formats"], weights="fp32", quality_gate=False, progress=progress),
        progress=progress)


def generation_requests(prompt_ids: list[list[int]], temperatures: list[float], max_new_tokens: int,
                        seed: int) -> list[Any]:
    """One batch request per (temperature, prompt), temperatures outermost: raw token ids, strategy ar,
    sampled lines seeded from (seed, line) so every worker layout draws the same tokens."""
    from edgegen.batch_requests import parse_request

    jobs = [(t, i) for t in temperatures for i in range(len(prompt_ids))]
    return [parse_request(k, {"id": {"prompt": i, "temperature": t}, "prompt": prompt_ids[i], "chat": False,
                              "strategy": "ar", "temperature": t, "max_new_tokens": max_new_tokens,
                              "seed": None if t == 0 else seed * 100003 + k}, {})
            for k, (t, i) in enumerate(jobs)]


def generate_targets(prompt_ids: list[list[int]], out_dir: str | Path, *, teacher: str | Path,
                     temperatures: list[float], max_new_tokens: int, seed: int, threads: int = 1,
                     shard_rows: int = 16, run: GenWorkers = GenWorkers(), progress: bool = True) -> Any:
    """Generate every prompt (token ids) at every temperature with ``teacher`` (an exported model folder)
    into ``out_dir``: ``requests.jsonl`` (the batch input, kept so a rerun checks it asks the same) and
    ``records/`` (shards of ``shard_rows`` records). Resumes by shard; returns the BatchSummary.
    ``read_sequences(out_dir)`` gives the prompt + generation pairs."""
    from edgegen.batch import run_requests
    from edgegen.batch_output import SHARD_INFO

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    requests = generation_requests(prompt_ids, temperatures, max_new_tokens, seed)
    text = "".join(r.to_json() + "\n" for r in requests)
    path = out_dir / REQUESTS
    if path.is_file() and path.read_text() != text:
        raise EdgegenError(f"{out_dir} holds the generations of other prompts or settings: pick another folder")
    if not path.is_file():
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    records = out_dir / RECORDS
    fmt = run.output_format
    info = records / SHARD_INFO
    if info.is_file():  # the shards already begun decide their format and size
        saved = json.loads(info.read_text())
        fmt, shard_rows = saved["format"], saved["rows_per_shard"]
    return run_requests(requests, records, load_args={"model": str(teacher), "threads": threads},
                        workers=run.workers, ray=run.ray, output_format=fmt, shard_rows=shard_rows,
                        progress=progress, desc="target generations")


def read_sequences(out_dir: str | Path, eos_id: int | None = None) -> list[dict[str, Any]]:
    """The generations in ``out_dir`` (generate_targets' folder) in request order: per record without an
    error, {"prompt", "temperature", "ids": prompt + generation, "prompt_len", "finish_reason"}; a generation
    that ended on EOS gets ``eos_id`` appended (the runtime drops the EOS token from its output)."""
    from edgegen.batch_output import read_records
    from edgegen.batch_requests import BatchRequest

    out_dir = Path(out_dir)
    if not (out_dir / RECORDS).is_dir():
        return []  # nothing generated yet
    requests = [BatchRequest.from_json(line) for line in (out_dir / REQUESTS).read_text().splitlines()]
    out = []
    for record in read_records(out_dir / RECORDS):
        if "error" in record:
            continue
        request = requests[record["index"]]
        gen = list(record["token_ids"]) + ([eos_id] if eos_id is not None and record["finish_reason"] == "eos" else [])
        out.append({**request.id, "ids": list(request.prompt) + gen, "prompt_len": len(request.prompt),
                    "finish_reason": record["finish_reason"]})
    return out


def build_generations(run_dir: Path, hf_dir: Path, prompts: list[dict[str, Any]], cfg: Any,
                      run: GenWorkers = GenWorkers()) -> Path:
    """The run's target generations (``run_dir/gen``), built once: ``cfg`` gives the temperatures, new tokens,
    seed, threads and shard size (``gen_batch``); ``run`` where they are generated."""
    out = Path(run_dir) / GEN_DIR
    jobs = len(prompts) * len(cfg.gen_temperatures)
    if not (out / REQUESTS).is_file() and len(_legacy_shards(out)) == -(-jobs // cfg.gen_batch):
        return out  # a run that built its data before generation moved to the runtime: that data is kept
    if _built(out, jobs):
        return out  # built (a resumed run, a data-parallel worker): no teacher needed, none exported on this node
    generate_targets([p["ids"] for p in prompts], out, teacher=teacher_model(hf_dir, cfg.progress),
                     temperatures=cfg.gen_temperatures, max_new_tokens=cfg.gen_max_new_tokens, seed=cfg.seed,
                     threads=cfg.threads, shard_rows=cfg.gen_batch, run=run, progress=cfg.progress)
    return out


def _built(gen_dir: Path, jobs: int) -> bool:
    """Whether ``gen_dir`` holds all ``jobs`` records, whole (anything else: generate_targets resumes it)."""
    from edgegen.batch_output import SHARD_INFO, read_records

    if not (gen_dir / REQUESTS).is_file() or not (gen_dir / RECORDS / SHARD_INFO).is_file():
        return False
    try:
        return len(read_records(gen_dir / RECORDS)) == jobs
    except Exception:  # a torn shard (pyarrow's or JSON's error): made again by generate_targets
        return False


def _legacy_shards(gen_dir: Path) -> list[Path]:
    return sorted(p for p in Path(gen_dir).glob("shard-*.npz") if not p.name.endswith(".tmp.npz"))


def _legacy_sequences(gen_dir: Path) -> list[tuple[int, list[int], int]]:
    """(prompt index, ids, prompt length) of the torch-generated shards of runs begun before (NumPy, no pickle)."""
    out = []
    for path in _legacy_shards(gen_dir):
        d = np.load(path)
        po = go = 0
        for idx, pl, gl in zip(d["prompt_index"], d["prompt_len"], d["gen_len"], strict=True):
            out.append((int(idx), d["prompt_ids"][po:po + pl].tolist() + d["gen_ids"][go:go + gl].tolist(), int(pl)))
            po, go = po + int(pl), go + int(gl)
    return out


def target_generations(run: Any, gen: GenWorkers | None = None) -> tuple[
        list[tuple[list[int], int]], list[tuple[list[int], int]], dict[str, Any]]:
    """A fine-tuning run's (train, val, stats) target generations (``FineTune(target_data=...)``): prompts from its
    corpus, generated once into the run folder where ``gen`` says (None: in this process)."""
    cfg, hf_dir = run.cfg, run.target.hf_dir
    prompts = build_prompts(hf_dir / "tokenizer.json", hf_dir, run.corpus["files"]["train_code"], cfg.gen_prompts,
                            cfg.seed, max_prompt_tokens=max(16, cfg.seq_len - cfg.gen_max_new_tokens))
    gen_dir = build_generations(run.out, hf_dir, prompts, cfg, gen or GenWorkers())
    return load_generations(gen_dir, cfg.gen_val_every, run.eos_ids[0])


def load_generations(gen_dir: Path, val_every: int, eos_id: int | None = None) -> tuple[
        list[tuple[list[int], int]], list[tuple[list[int], int]], dict[str, Any]]:
    """(train, val, stats): each sequence as (prompt+generation ids, prompt length); every `val_every`-th
    prompt (all its temperatures) is held out."""
    if not (Path(gen_dir) / REQUESTS).is_file() and _legacy_shards(gen_dir):
        seqs = _legacy_sequences(gen_dir)
    else:
        seqs = [(s["prompt"], s["ids"], s["prompt_len"]) for s in read_sequences(gen_dir, eos_id)]
    train: list[tuple[list[int], int]] = []
    val: list[tuple[list[int], int]] = []
    for idx, seq, plen in seqs:
        (val if val_every > 0 and idx % val_every == 0 else train).append((seq, plen))
    stats = {"sequences": len(seqs), "train_sequences": len(train), "val_sequences": len(val),
             "generated_tokens": sum(len(seq) - plen for _, seq, plen in seqs)}
    return train, val, stats
