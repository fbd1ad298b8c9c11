"""``edgegen bench --strategy superposed``: k superposed drafts against k nucleus samples, speed and quality.

Per prompt, on each backend and for each length N (``new_tokens``, e.g. 16 and 64 in one run): one
superposed generation of k drafts of N tokens per variant (superposed option sets, e.g. each
``diversity`` rule), k separate nucleus generations of N tokens (top_p 0.9, temperature 0.6 as in the
paper's evaluation) and one greedy generation (the cost of "one generation"), all with EOS ignored so
every run makes N tokens. Wall time is measured around ``Generator.generate``. Quality, on the text up
to the first EOS of each draft:

- perplexity of each draft under the target at fp32 (the fp32 export, teacher forcing: one forward
  over prompt + draft), averaged over drafts and best-of-k (the lowest per prompt), then over prompts;
- diversity between a prompt's drafts: Self-BLEU (BLEU-4 of each draft against the others, NLTK's
  smoothing method 1, as the paper's diversity_grader.py; lower is more diverse) and distinct-2 (unique
  bigrams over all bigrams of the k drafts).

Each row also says which of issue 18's goals it meets (``GOALS``): Self-BLEU <= 0.6, best-of-k perplexity
no worse than nucleus best-of-k, >= 2.4x faster than k nucleus generations.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgegen.bench.engines import EDGEGEN_BACKENDS, SHORT_BACKEND, EngineSpec
from edgegen.bench.quality import fp32_session, perplexity, until_eos
from edgegen.bench.report import write_report
from edgegen.bench.runner import encode_prompts, exported_folder, folder_weights, load_prompts, take_turns
from edgegen.errors import EdgegenError
from edgegen.manifest import read_manifest

NUCLEUS = {"temperature": 0.6, "top_p": 0.9}  # the paper's nucleus baseline (evaluate.ipynb)
GOALS = {"self_bleu": 0.6, "speedup": 2.4}  # issue 18's bars (and best-of-k ppl <= nucleus best-of-k)


@dataclass
class PromptResult:
    """One prompt on one backend: the k superposed drafts, the k nucleus samples and greedy."""

    backend: str
    variant: str  # the superposed option set (its label)
    new_tokens: int
    prompt_id: str
    category: str
    superposed_s: float
    nucleus_s: float  # the k generations together
    greedy_s: float
    superposed: list[list[int]]  # drafts, best first (all N tokens)
    nucleus: list[list[int]]
    greedy: list[int]
    ppl: dict[str, list[float]] = field(default_factory=dict)  # "superposed" | "nucleus" | "greedy" -> per draft

    @property
    def speedup(self) -> float:
        return self.nucleus_s / self.superposed_s


def _ngrams(tokens: Sequence[int], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def sentence_bleu(references: Sequence[Sequence[int]], hypothesis: Sequence[int], max_n: int = 4) -> float:
    """BLEU of one hypothesis against references, uniform weights over 1..max_n, as NLTK's sentence_bleu
    with smoothing method 1 (a zero n-gram match counts as 0.1 matches)."""
    if not hypothesis:
        return 0.0
    log_p = 0.0
    for n in range(1, max_n + 1):
        hyp = _ngrams(hypothesis, n)
        most = Counter()
        for ref in references:
            most |= _ngrams(ref, n)
        total = max(sum(hyp.values()), 1)
        matched = sum(min(c, most[g]) for g, c in hyp.items())
        if n == 1 and not matched:
            return 0.0  # no common token at all: NLTK returns 0 without smoothing
        log_p += math.log((matched or 0.1) / total) / max_n
    c = len(hypothesis)
    r = min((len(ref) for ref in references), key=lambda length: (abs(length - c), length))
    brevity = 1.0 if c > r else math.exp(1 - r / c)
    return brevity * math.exp(log_p)


def self_bleu(drafts: Sequence[Sequence[int]]) -> float:
    """Mean BLEU of each draft against the others (orders up to min(4, shortest draft)); lower is more diverse."""
    if len(drafts) < 2:
        return float("nan")
    max_n = max(1, min(4, min(len(d) for d in drafts)))
    return statistics.fmean(sentence_bleu([o for j, o in enumerate(drafts) if j != i], d, max_n)
                            for i, d in enumerate(drafts))


def distinct2(drafts: Sequence[Sequence[int]]) -> float:
    """Unique bigrams over all bigrams of the drafts together (1.0: no bigram repeats anywhere)."""
    grams = [g for d in drafts for g in zip(d, d[1:], strict=False)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def summarize(results: Sequence[PromptResult], eos: set[int]) -> list[dict[str, Any]]:
    """One row per backend, variant, length and prompt set (and "all"): times, speedups, perplexities,
    diversity and the goals met."""
    rows = []
    groups: dict[tuple[str, str, int, str], list[PromptResult]] = {}
    for r in results:
        for category in (r.category, "all"):
            groups.setdefault((r.backend, r.variant, r.new_tokens, category), []).append(r)
    for (backend, variant, new_tokens, category), rs in groups.items():
        rows.append({
            "backend": backend, "variant": variant, "new_tokens": new_tokens, "prompts": category, "n": len(rs),
            "superposed_s": _mean([r.superposed_s for r in rs]), "nucleus_s": _mean([r.nucleus_s for r in rs]),
            "greedy_s": _mean([r.greedy_s for r in rs]),
            "speedup": sum(r.nucleus_s for r in rs) / sum(r.superposed_s for r in rs),
            "x_greedy_time": sum(r.superposed_s for r in rs) / sum(r.greedy_s for r in rs),
            "ppl_superposed_avg": _mean([_mean(r.ppl["superposed"]) for r in rs]),
            "ppl_superposed_best": _mean([min(r.ppl["superposed"]) for r in rs]),
            "ppl_superposed_first": _mean([r.ppl["superposed"][0] for r in rs]),
            "ppl_nucleus_avg": _mean([_mean(r.ppl["nucleus"]) for r in rs]),
            "ppl_nucleus_best": _mean([min(r.ppl["nucleus"]) for r in rs]),
            "ppl_greedy": _mean([r.ppl["greedy"][0] for r in rs]),
            "self_bleu_superposed": _mean([self_bleu([until_eos(d, eos) for d in r.superposed]) for r in rs]),
            "self_bleu_nucleus": _mean([self_bleu([until_eos(d, eos) for d in r.nucleus]) for r in rs]),
            "distinct2_superposed": _mean([distinct2([until_eos(d, eos) for d in r.superposed]) for r in rs]),
            "distinct2_nucleus": _mean([distinct2([until_eos(d, eos) for d in r.nucleus]) for r in rs]),
        })
        row = rows[-1]
        row["goals"] = {"self_bleu": row["self_bleu_superposed"] <= GOALS["self_bleu"],
                        "ppl": row["ppl_superposed_best"] <= row["ppl_nucleus_best"],
                        "speed": row["speedup"] >= GOALS["speedup"]}
    order = {b: i for i, b in enumerate(EDGEGEN_BACKENDS)}
    rows.sort(key=lambda r: (order.get(r["backend"], 9), r["variant"], r["new_tokens"], r["prompts"] == "all",
                             r["prompts"]))
    return rows


def markdown_table(rows: Sequence[dict[str, Any]], k: int) -> str:
    """Speed and quality per backend and prompt set."""
    lines = [f"| backend | variant | tokens | prompts | superposed s | {k}x nucleus s | speedup | x greedy time | "
             f"ppl sup avg | ppl sup best-of-{k} | ppl nucleus avg | ppl nucleus best-of-{k} | ppl greedy | "
             "Self-BLEU sup | Self-BLEU nucleus | distinct-2 sup | distinct-2 nucleus | goals met |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        met = ", ".join(name for name, ok in r["goals"].items() if ok) or "none"
        lines.append(
            f"| {r['backend']} | {r['variant']} | {r['new_tokens']} | {r['prompts']} ({r['n']}) | "
            f"{r['superposed_s']:.2f} | {r['nucleus_s']:.2f} | "
            f"{r['speedup']:.2f}x | {r['x_greedy_time']:.2f} | {r['ppl_superposed_avg']:.2f} | "
            f"{r['ppl_superposed_best']:.2f} | {r['ppl_nucleus_avg']:.2f} | {r['ppl_nucleus_best']:.2f} | "
            f"{r['ppl_greedy']:.2f} | {r['self_bleu_superposed']:.3f} | {r['self_bleu_nucleus']:.3f} | "
            f"{r['distinct2_superposed']:.3f} | {r['distinct2_nucleus']:.3f} | {met} |")
    return "\n".join(lines)


class _Generations:
    """One engine of the superposed bench: a Generator and what one trial generates with it at each length
    (EOS ignored): the k superposed drafts, k nucleus samples (seeds seed..seed+k-1), or one greedy run."""

    def __init__(self, spec: EngineSpec, new_tokens: Sequence[int]) -> None:
        import edgegen

        self.spec = spec
        self.gen = edgegen.load(spec.folder, backend=spec.backend, embeddings=spec.strategy == "superposed")
        self.new_tokens = tuple(new_tokens)

    def run(self, ids: list[int]) -> dict[int, tuple[list[list[int]], float]]:
        """Per length: the outputs of one trial and the wall time of its generate calls together."""
        return {n: self._run(ids, n) for n in self.new_tokens}

    def _run(self, ids: list[int], new_tokens: int) -> tuple[list[list[int]], float]:
        options = {k: v for k, v in self.spec.options.items() if k != "variant"}
        common = {"max_new_tokens": new_tokens, "ignore_eos": True}
        start = time.perf_counter()
        if self.spec.strategy == "superposed":
            drafts = [d.token_ids for d in self.gen.generate(ids, strategy="superposed", **options, **common).drafts]
        else:
            samples, seed = options.pop("samples", 1), options.pop("seed", None)
            drafts = [self.gen.generate(ids, **({"seed": seed + i} if seed is not None else {}), **options,
                                        **common).token_ids for i in range(samples)]
        return drafts, time.perf_counter() - start


def variant_label(options: Mapping[str, Any]) -> str:
    """A superposed option set's name in the report: its options other than num_drafts ("defaults": none)."""
    return ",".join(f"{k}={v}" for k, v in options.items() if k not in ("num_drafts", "variant")) or "defaults"


def superposed_specs(folder: Path, weights: str, backends: Sequence[str], k: int, seed: int,
                     variants: Sequence[Mapping[str, Any]]) -> list[EngineSpec]:
    """Per backend: superposed (k drafts) per variant (option set), nucleus (k samples) and greedy."""
    specs = []
    for backend in backends:
        short = SHORT_BACKEND.get(backend, backend)
        specs += [EngineSpec(f"superposed[{variant_label(options)}]-{short}", "edgegen", backend, weights, folder,
                             "superposed", {"num_drafts": k, **options, "variant": variant_label(options)})
                  for options in variants]
        specs += [EngineSpec(f"nucleus-{short}", "edgegen", backend, weights, folder, "ar",
                             {**NUCLEUS, "samples": k, "seed": seed}),
                  EngineSpec(f"greedy-{short}", "edgegen", backend, weights, folder, "ar")]
    return specs


def score(results: Sequence[PromptResult], ids: dict[str, list[int]], fp32_folder: Path, eos: set[int]) -> None:
    """Fill each result's perplexities under the fp32 export, text up to the first EOS (each distinct text once)."""
    session, _ = fp32_session(fp32_folder)
    known: dict[tuple[int, ...], float] = {}
    for r in results:
        prompt = ids[r.prompt_id]
        for name, drafts in (("superposed", r.superposed), ("nucleus", r.nucleus), ("greedy", [r.greedy])):
            r.ppl[name] = []
            for d in drafts:
                text = until_eos(d, eos)
                key = (*prompt, -1, *text)
                if key not in known:
                    known[key] = perplexity(session, prompt, text)
                r.ppl[name].append(known[key])


def run_superposed_bench(model: str | None = None, weights: Sequence[str] = (), prompts: str = "all",
                         new_tokens: int | Sequence[int] = (16, 64), num_drafts: int = 3, limit: int | None = None,
                         out: Path = Path("bench-out"), warmup: int = 1, seed: int = 0,
                         command: str = "edgegen bench --strategy superposed",
                         echo: Callable[[str], None] = print, backends: Sequence[str] = EDGEGEN_BACKENDS,
                         loads: Sequence[str] = ("none",), variants: Sequence[Mapping[str, Any]] = ({},),
                         **options: Any) -> list[dict[str, Any]]:
    """Run the superposed benchmark; write ``out``/superposed.json and superposed.md; return the summary rows.

    model/weights as ``run_bench`` (the first precision is timed); the fp32 export for perplexity goes
    through the same export path. ``new_tokens``: one length or several (each engine runs every length in
    a trial). ``variants``: superposed option sets compared in the same run (e.g. one per ``diversity``);
    ``options`` go to all of them (alpha, ngram, ...). The engines (per backend: each superposed variant,
    nucleus, greedy) take turns on every prompt (``runner.take_turns``).
    """
    from edgegen.bench.machine import machine_info

    lengths = (new_tokens,) if isinstance(new_tokens, int) else tuple(dict.fromkeys(new_tokens))
    if not lengths or min(lengths) < 2 or num_drafts < 2:
        raise EdgegenError("the superposed bench needs --new-tokens >= 2 and --num-drafts >= 2")
    variants = [{**options, **v} for v in variants] or [dict(options)]
    load_before = os.getloadavg()  # the machine's load, recorded with the result (shared machines)
    chosen = load_prompts(prompts, limit)
    given = exported_folder(model)
    if given is not None and folder_weights(given) != "fp32":
        raise EdgegenError(f"the superposed bench scores perplexity at fp32: {given} is {folder_weights(given)}; "
                           "pass 'default', an HF folder or a .gguf (exported at both precisions), or an fp32 export")
    precision = folder_weights(given) if given is not None else (list(weights) or ["int8"])[0]
    folder = given or _prepare(model, precision, embeddings=True)  # timed
    fp32_folder = given or _prepare(model, "fp32", embeddings=False)  # scores
    manifest = read_manifest(folder)
    eos = set(manifest.eos_token_ids)
    for i, v in enumerate(variants):  # the default store, built before timing
        if (v.get("alpha") or 0) > 0 and v.get("ngram") is None and not v.get("adaptive"):
            from edgegen.artifacts import default_store

            variants[i] = {**v, "ngram": str(default_store(folder))}
    ids = encode_prompts(folder, chosen)
    notes: list[str] = []
    engines: list[tuple[EngineSpec, _Generations]] = []
    for spec in superposed_specs(folder, precision, backends, num_drafts, seed, variants):
        try:
            engines.append((spec, _Generations(spec, lengths)))
        except EdgegenError as e:
            notes.append(f"{spec.label}: {e}, skipped")
            echo(notes[-1])
    turns = take_turns(engines, chosen, lambda engine, prompt: engine.run(ids[prompt.id]), warmup, loads=loads,
                       desc="superposed bench")
    del engines
    by = {(t.load, t.engine.backend, _role(t.engine), t.prompt.id): t for t in turns}
    results: list[PromptResult] = []
    for (load, backend, role, pid), t in by.items():
        others = [(load, backend, "nucleus", pid), (load, backend, "greedy", pid)]
        if role == "nucleus" or role == "greedy" or any(key not in by for key in others):
            continue
        nucleus, greedy = by[load, backend, "nucleus", pid].result, by[load, backend, "greedy", pid].result
        for n in lengths:
            results.append(PromptResult(backend if load == "none" else f"{backend} ({load})",
                                        t.engine.options["variant"], n, pid, t.prompt.category, t.result[n][1],
                                        nucleus[n][1], greedy[n][1], t.result[n][0], nucleus[n][0], greedy[n][0][0]))
    if not results:
        raise EdgegenError("nothing was benchmarked: " + "; ".join(notes))
    write_report(Path(out), "superposed-runs", {"prompts": [asdict(r) for r in results]}, "")  # kept if scoring fails
    score(results, ids, fp32_folder, eos)
    rows = summarize(results, eos)
    settings = {"command": command, "model": model or "default", "weights": precision, "folder": str(folder),
                "fp32_folder": str(fp32_folder), "prompts": f"{len(chosen)} ({prompts})", "new_tokens": list(lengths),
                "num_drafts": num_drafts, "nucleus": NUCLEUS, "warmup": warmup, "seed": seed, "loads": list(loads),
                "variants": [{k: str(v) for k, v in variant.items()} for variant in variants], "goals": GOALS,
                "loadavg_start": load_before, "loadavg_end": os.getloadavg()}
    machine = machine_info()
    table = markdown_table(rows, num_drafts)
    text = (f"# edgegen bench: superposed decoding\n\n`{command}`\n\n{machine['cpu']}, {machine['usable_cores']} "
            f"cores, {machine['date']}; timed at {precision}, perplexity under fp32; {'/'.join(map(str, lengths))} new "
            f"tokens (EOS ignored for timing, text up to the first EOS scored); load average "
            f"{load_before[0]:.1f} at the start, {settings['loadavg_end'][0]:.1f} at the end.\n\n{table}\n"
            + "".join(f"\n- {n}" for n in notes))
    paths = write_report(Path(out), "superposed", {"settings": settings, "machine": machine, "notes": notes,
                                                   "summary": rows, "prompts": [asdict(r) for r in results]}, text)
    echo(table)
    echo("wrote " + ", ".join(str(p) for p in paths))
    return rows


def _role(spec: EngineSpec) -> str:
    """superposed:<variant> | nucleus | greedy, from the spec (not its label)."""
    if spec.strategy == "superposed":
        return f"superposed:{spec.options['variant']}"
    return "nucleus" if spec.options.get("samples") else "greedy"


def _prepare(model: str | None, weights: str, embeddings: bool) -> Path:
    """The bench's export at ``weights`` (cached), with input-embedding graphs when asked."""
    from edgegen.bench.runner import prepare_folder
    from edgegen.models import ensure_embeddings

    folder = prepare_folder(model, weights)
    return ensure_embeddings(folder) if embeddings else folder


__all__ = ["distinct2", "perplexity", "run_superposed_bench", "self_bleu", "summarize", "until_eos"]
