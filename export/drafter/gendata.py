"""Stage-2 data: sequences the TARGET generates (FastDraft's alignment set).

Prompts are code prefixes cut from the training code files (raw) and instruction prompts (chat-templated
when the target has a template). Each prompt is sampled at every temperature (0 = greedy) with HF
`generate` in batches; every batch is written as one shard (atomically), so an interrupted build resumes
at the next shard and a finished build is reused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

GEN_DIR = "gen"

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


def build_generations(run_dir: Path, teacher: Any, prompts: list[dict[str, Any]], temperatures: list[float],
                      max_new_tokens: int, batch: int, eos_ids: list[int], pad_id: int, seed: int,
                      progress: bool = True) -> Path:
    """Generate every (prompt, temperature) once into `run_dir/gen/shard-*.npz`; returns the folder."""
    import torch
    from tqdm import tqdm

    out = Path(run_dir) / GEN_DIR
    out.mkdir(exist_ok=True)
    jobs = [(t, i) for t in temperatures for i in range(len(prompts))]
    shards = [jobs[k:k + batch] for k in range(0, len(jobs), batch)]
    done = sum((out / f"shard-{s:05d}.npz").is_file() for s in range(len(shards)))
    if done == len(shards):
        return out
    bar = tqdm(total=len(shards), initial=done, desc="target generations", unit="batch", disable=not progress,
               dynamic_ncols=True, mininterval=2.0)
    import time

    t0, made = time.perf_counter(), 0
    for s, shard in enumerate(shards):
        path = out / f"shard-{s:05d}.npz"
        if path.is_file():
            continue
        temp = shard[0][0]
        group = [p for p in shard if p[0] == temp]  # jobs are ordered by temperature: a shard may straddle two
        rest = [p for p in shard if p[0] != temp]
        rows: list[tuple[int, float, list[int], list[int]]] = []
        for part in (group, rest):
            if not part:
                continue
            t = part[0][0]
            torch.manual_seed(seed * 100003 + s)
            ids_list = [prompts[i]["ids"] for _, i in part]
            width = max(len(x) for x in ids_list)
            inp = torch.full((len(part), width), pad_id, dtype=torch.long)
            att = torch.zeros((len(part), width), dtype=torch.long)
            for r, x in enumerate(ids_list):
                inp[r, width - len(x):] = torch.tensor(x)
                att[r, width - len(x):] = 1
            kw: dict[str, Any] = {"do_sample": False} if t == 0 else {"do_sample": True, "temperature": t,
                                                                       "top_k": 0, "top_p": 1.0}
            with torch.inference_mode():
                seqs = teacher.generate(input_ids=inp, attention_mask=att, max_new_tokens=max_new_tokens,
                                        min_new_tokens=1, pad_token_id=pad_id, eos_token_id=eos_ids, **kw)
            for r, (_, i) in enumerate(part):
                gen = seqs[r, width:].tolist()
                for k, tokid in enumerate(gen):
                    if tokid in eos_ids:
                        gen = gen[:k + 1]
                        break
                rows.append((i, t, prompts[i]["ids"], gen))
                made += len(gen)
        _save_shard(path, rows)
        bar.update(1)
        bar.set_postfix(tok_s=f"{made / max(time.perf_counter() - t0, 1e-9):.0f}")
    bar.close()
    return out


def _save_shard(path: Path, rows: list[tuple[int, float, list[int], list[int]]]) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    flat_p = np.asarray([t for r in rows for t in r[2]], dtype=np.int32)
    flat_g = np.asarray([t for r in rows for t in r[3]], dtype=np.int32)
    np.savez(tmp, prompt_index=np.asarray([r[0] for r in rows], dtype=np.int32),
             temperature=np.asarray([r[1] for r in rows], dtype=np.float32),
             prompt_len=np.asarray([len(r[2]) for r in rows], dtype=np.int32),
             gen_len=np.asarray([len(r[3]) for r in rows], dtype=np.int32), prompt_ids=flat_p, gen_ids=flat_g)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_generations(gen_dir: Path, val_every: int) -> tuple[list[tuple[list[int], int]], list[tuple[list[int], int]],
                                                             dict[str, Any]]:
    """(train, val, stats): each sequence as (prompt+generation ids, prompt length); every `val_every`-th
    prompt (all its temperatures) is held out."""
    train: list[tuple[list[int], int]] = []
    val: list[tuple[list[int], int]] = []
    gen_tokens = 0
    for path in sorted(Path(gen_dir).glob("shard-*.npz")):
        if path.name.endswith(".tmp.npz"):
            continue
        d = np.load(path)
        po = go = 0
        for idx, pl, gl in zip(d["prompt_index"], d["prompt_len"], d["gen_len"], strict=True):
            seq = d["prompt_ids"][po:po + pl].tolist() + d["gen_ids"][go:go + gl].tolist()
            po += int(pl)
            go += int(gl)
            gen_tokens += int(gl)
            (val if val_every > 0 and int(idx) % val_every == 0 else train).append((seq, int(pl)))
    stats = {"sequences": len(train) + len(val), "train_sequences": len(train), "val_sequences": len(val),
             "generated_tokens": gen_tokens}
    return train, val, stats
