"""``edgegen lud bench``: Lexical Unit Decoding against AR of the base and of the tuned model; speed and quality.

Engines (greedy, exactly N new tokens, EOS ignored, one backend; the ``EngineSpec``s below, timed by the same
take-turns loop and clock as ``edgegen bench``), taking turns on every prompt:

- ``ar-base``: AR on the base model (the speed and quality reference);
- ``ar-tuned``: AR on the LUD-tuned model (ordinary rows are the base's, so this should match ar-base);
- ``lexical-t<threshold>-m<span>``: unverified LUD, for each threshold and span asked for (the number of
  placeholders adapts per step, up to the span); ``-fixed``: the first pair with all m placeholders every step;
- ``verified-t<threshold>-m<span>``: the verified mode at the first threshold and span (identical tokens to AR
  of the tuned model, ``ar-tuned``: every step computes its rows alike; a report of an older run with a
  padded ``ar-tuned-2row`` engine takes that as the reference).

Several tuned models can be compared in one run (``--model`` repeated, e.g. the placeholder-only and the LoRA
recipe): their engines are then named ``<label>:<engine>`` (label: ``LABEL=PATH``, else the model's
``extras.lud.trainable``; the spec's ``model``), share ``ar-base``, and each is compared with its own ``ar-tuned``.

Per engine and prompt set: decode tokens/s, speed-up over ar-base and ar-tuned, tokens per target forward,
agreement with ar-base's tokens (share of positions equal, and the length of the common prefix), and the
perplexity of the output (up to the first EOS) under the base model at fp32 (the fp32 export, one forward),
reported relative to ar-base's outputs' perplexity.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.bench.engines import EngineSpec, edgegen_spec
from edgegen.bench.isolated import IsolatedEngine
from edgegen.bench.quality import fp32_session, perplexity, until_eos
from edgegen.bench.report import write_report
from edgegen.bench.runner import Prompt, encode_prompts, folder_weights, load_prompts, prepare_folder, timed_runs
from edgegen.errors import EdgegenError
from edgegen.manifest import is_model_folder, read_manifest

BASE = ""  # the ``model`` of the base model's engine; tuned models' engines carry their label


@dataclass
class LudRun:
    engine: EngineSpec
    prompt_id: str
    category: str
    tokens: list[int]
    tokens_per_s: float
    target_steps: int
    placeholder_rows: int
    ppl_fp32: float = math.nan


def fp32_base() -> Path:
    """The default model at fp32 for perplexity: the bench's fp32 export if present, else an ONNX-only export
    (the only graph the score needs), once, into the cache."""
    import sys

    from edgegen.artifacts import DEFAULT_MODEL_NAME
    from edgegen.cache import cache_dir
    from edgegen.models import export

    for folder in (cache_dir() / "bench" / f"{DEFAULT_MODEL_NAME}-fp32", cache_dir() / "lud" / "base-fp32-onnx"):
        if is_model_folder(folder):
            return folder
    print(f"edgegen lud bench: exporting {DEFAULT_MODEL_NAME} at fp32 (ONNX) to {folder} (once)", file=sys.stderr)
    return export(None, folder, formats=("onnx",), weights="fp32", quality_gate=False)


def lud_specs(base: Path, tuned: Sequence[tuple[str, Path]], backend: str, thresholds: Sequence[float],
              spans: Sequence[int], verified: bool) -> list[EngineSpec]:
    """ar-base, then per tuned model: ar-tuned, lexical per threshold and span,
    the first pair with a fixed span, and verified at the first pair."""
    weights = folder_weights(base)

    def spec(label: str, folder: Path, model: str, strategy: str = "ar", **options: Any) -> EngineSpec:
        pre = f"{model}:" if len(tuned) > 1 and model != BASE else ""
        return edgegen_spec(folder, backend, weights, strategy, label=pre + label, model=model, **options)

    specs = [spec("ar-base", base, BASE)]  # every step computes its rows alike: AR is the token reference
    for model, folder in tuned:
        specs.append(spec("ar-tuned", folder, model))
        for t in thresholds:
            for m in spans:
                specs.append(spec(f"lexical-t{t:g}-m{m}", folder, model, "lexical", threshold=t, span=m))
        t, m = thresholds[0], spans[0]
        # the placeholders' raw effect: m placeholders on every step, whether they pay or not
        specs.append(spec(f"lexical-t{t:g}-m{m}-fixed", folder, model, "lexical", threshold=t, span=m,
                          adaptive=False))
        if verified:  # its tokens are fixed (AR's); only its speed depends on the settings: the first pair only
            specs.append(spec(f"verified-t{t:g}-m{m}", folder, model, "lexical", threshold=t, span=m, verified=True))
    return specs


def _is_tuned_ar(spec: EngineSpec, padded: bool) -> bool:
    return spec.model != BASE and spec.strategy == "ar" and spec.padded == padded


def summarize(runs: Sequence[LudRun]) -> list[dict[str, Any]]:
    """One row per (engine, prompt set, and "all"): medians of speed, means of the rest."""
    ref = {r.prompt_id: r for r in runs if r.engine.model == BASE}
    # the verified mode's token reference: the tuned model's padded AR where the run has one, else its AR
    tuned2 = {(r.engine.model, r.prompt_id): r for r in runs if _is_tuned_ar(r.engine, padded=False)}
    tuned2 |= {(r.engine.model, r.prompt_id): r for r in runs if _is_tuned_ar(r.engine, padded=True)}
    models = {r.engine.model for r in runs} - {BASE}
    rows = []
    for category in ["code", "chat", "all"]:
        chosen = [r for r in runs if category == "all" or r.category == category]
        base_speed = statistics.median([r.tokens_per_s for r in chosen if r.engine.model == BASE] or [math.nan])
        tuned_speed = {model: statistics.median([r.tokens_per_s for r in chosen if r.engine.model == model
                                                 and _is_tuned_ar(r.engine, padded=False)] or [math.nan])
                       for model in models}
        if len(models) == 1:  # one tuned model: the base row is compared with it too
            tuned_speed[BASE] = next(iter(tuned_speed.values()))
        base_ppl = [r.ppl_fp32 for r in chosen if r.engine.model == BASE]
        for spec in {r.engine.label: r.engine for r in chosen}.values():
            mine = [r for r in chosen if r.engine.label == spec.label]
            speed = statistics.median([r.tokens_per_s for r in mine])
            agree = [np.mean(np.asarray(r.tokens) == np.asarray(ref[r.prompt_id].tokens)) for r in mine]
            prefix = [next((i for i, (a, b) in enumerate(zip(r.tokens, ref[r.prompt_id].tokens, strict=True))
                            if a != b), len(r.tokens)) for r in mine]
            ppl = [r.ppl_fp32 for r in mine]
            identical = ([r.tokens == tuned2[spec.model, r.prompt_id].tokens for r in mine
                          if (spec.model, r.prompt_id) in tuned2]
                         if spec.strategy == "lexical" and spec.options.get("verified") else [])
            rows.append({
                "engine": spec.label, "prompts": category, "n": len(mine), "tokens_per_s": round(speed, 1),
                "x_ar_base": round(speed / base_speed, 3),
                "x_ar_tuned": round(speed / tuned_speed.get(spec.model, math.nan), 3),
                "tokens_per_step": round(float(np.mean([(len(r.tokens) - 1) / max(r.target_steps, 1)
                                                        for r in mine])), 3),
                "agreement": round(float(np.mean(agree)), 3), "common_prefix": round(float(np.mean(prefix)), 1),
                "ppl_fp32": round(float(np.mean(ppl)), 3),
                "ppl_vs_ar_base": round(float(np.mean(ppl)) / float(np.mean(base_ppl)), 4),
                "identical_to_tuned_ar": f"{sum(identical)}/{len(identical)}" if identical else ""})
    return rows


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    head = ("| engine | prompts | tokens/s | x AR base | x AR tuned | tokens/forward | agreement w/ base | "
            "common prefix | ppl fp32 | ppl / AR base | = tuned AR |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        x_tuned = "" if math.isnan(r["x_ar_tuned"]) else f"{r['x_ar_tuned']:.2f}"  # ar-base has no tuned reference
        lines.append(f"| {r['engine']} | {r['prompts']} | {r['tokens_per_s']} | {r['x_ar_base']:.2f} | "
                     f"{x_tuned} | {r['tokens_per_step']:.2f} | {r['agreement']:.1%} | "
                     f"{r['common_prefix']} | {r['ppl_fp32']:.3f} | {r['ppl_vs_ar_base']:.3f} | "
                     f"{r['identical_to_tuned_ar']} |")
    return "\n".join(lines)


def _labelled(tuned: str | Path | Sequence[str | Path]) -> list[tuple[str, Path]]:
    """[(label, exported LUD folder)] from "default-lud", a folder, "LABEL=folder", or a sequence of them."""
    items = [tuned] if isinstance(tuned, (str, Path)) else list(tuned)
    if not items:
        raise EdgegenError("give at least one LUD-tuned model (--model)")
    out: list[tuple[str, Path]] = []
    for item in items:
        label, _, spec = str(item).rpartition("=") if "=" in str(item) else ("", "", str(item))
        if spec == "default-lud":
            from edgegen.artifacts import default_lud_model

            folder = default_lud_model()
        else:
            folder = Path(spec).expanduser()
        if not is_model_folder(folder) or "lud" not in read_manifest(folder).extras:
            raise EdgegenError(f"{folder} is not an exported LUD-tuned model (edgegen lud export)")
        label = label or str(read_manifest(folder).extras["lud"].get("trainable", "placeholders"))
        while label in {lab for lab, _ in out} or ":" in label:
            label = label.replace(":", "-") + "'"
        out.append((label, folder))
    return out


def run_lud_bench(tuned: str | Path | Sequence[str | Path], base: str | Path | None = None, prompts: str = "all",
                  limit: int | None = 4, new_tokens: int = 128, thresholds: Sequence[float] = (0.7,),
                  spans: Sequence[int] = (3,),
                  verified: bool = True, backend: str = "onnxruntime", warmup: int = 1,
                  out: Path = Path("bench-out/lud"), command: str = "edgegen lud bench",
                  echo: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run the LUD benchmark; write ``out``/lud.json and lud.md; return the summary rows.

    tuned: an exported LUD-tuned folder (or "default-lud", or "LABEL=folder"), or several to compare. base: the
    base model's exported folder (None: the default model at int8, as ``edgegen bench`` exports it). The fp32
    base for perplexity is exported once.
    """
    from edgegen.bench.machine import machine_info

    if new_tokens < 2:
        raise EdgegenError(f"--new-tokens must be >= 2, got {new_tokens}")
    if not thresholds or not spans or any(not 0 <= t <= 1 for t in thresholds) or any(m < 1 for m in spans):
        raise EdgegenError("give thresholds within [0, 1] and spans >= 1")
    models = _labelled(tuned)
    base = Path(base).expanduser() if base else prepare_folder(None, "int8")
    fp32 = fp32_base()
    chosen: list[Prompt] = load_prompts(prompts, limit)
    ids = encode_prompts(base, chosen)
    for _, folder in models:
        if ids != encode_prompts(folder, chosen):
            raise EdgegenError(f"the base model and {folder} tokenize the prompts differently")
    # each engine in a process of its own, as in the main bench (bench/isolated.py: no opening-order bias)
    engines = [(spec, IsolatedEngine(spec)) for spec in lud_specs(base, models, backend, thresholds, spans, verified)]
    timed = timed_runs(engines, chosen, ids, new_tokens, warmup, desc="lud bench")
    del engines
    session, eos = fp32_session(fp32)
    runs = [LudRun(r.engine, r.prompt_id, r.category, r.timing.tokens, r.timing.tokens_per_s,
                   int(r.timing.engine_metrics.get("target_steps", 0)),
                   int(r.timing.engine_metrics.get("draft_proposed", 0)),
                   perplexity(session, ids[r.prompt_id], until_eos(r.timing.tokens, eos))) for r in timed]
    rows = summarize(runs)
    settings = {"command": command, "tuned": {label: str(folder) for label, folder in models}, "base": str(base),
                "fp32": str(fp32), "backend": backend,
                "prompts": f"{len(chosen)} ({prompts})", "new_tokens": new_tokens, "thresholds": list(thresholds),
                "spans": list(spans),
                "lud": {label: {k: read_manifest(folder).extras["lud"].get(k) for k in ("trainable", "lora",
                                                                                      "delta_sha256")}
                        for label, folder in models}}
    table = markdown(rows)
    paths = write_report(Path(out), "lud", {"settings": settings, "machine": machine_info(), "rows": rows,
                                            "runs": [asdict(r) for r in runs]}, f"{command}\n\n{table}\n")
    echo(table)
    echo("wrote " + ", ".join(str(p) for p in paths))
    return rows
