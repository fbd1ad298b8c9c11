"""The ``edgegen`` command line: a thin layer over the Python API."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from edgegen.errors import EdgegenError
from edgegen.lud_cli import lud
from edgegen.serve.command import serve

_WEIGHTS = ["fp32", "fp16", "int8", "int4"]


def _model_options(f: Any) -> Any:
    f = click.option("--model", default=None, help="Exported folder, HF folder or .gguf (default: SmolLM2-135M).")(f)
    f = click.option("--backend", type=click.Choice(["onnxruntime", "openvino"]), default=None,
                     help="Runtime (default: the faster for the device, measured once).")(f)
    f = click.option("--device", default=None, help="CPU (default), GPU, NPU, CUDA, DML.")(f)
    f = click.option("--profile", default=None, help="Device profile (default: the device's).")(f)
    return f


def _sampling_options(f: Any) -> Any:
    f = click.option("--max-new-tokens", type=int, default=256, show_default=True)(f)
    f = click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy.")(f)
    f = click.option("--top-k", type=int, default=0, help="0 = off.")(f)
    f = click.option("--top-p", type=float, default=1.0, help="1.0 = off.")(f)
    f = click.option("--repetition-penalty", type=float, default=1.0)(f)
    f = click.option("--seed", type=int, default=None)(f)
    f = click.option("--stop", multiple=True, help="Stop string (repeatable).")(f)
    return f


def _load(model: str | None, backend: str | None, device: str | None, profile: str | None,
          draft: str | None = None, embeddings: bool = False) -> Any:
    import edgegen

    return edgegen.load(model=model, backend=backend, device=device, profile=profile, draft=draft,
                        embeddings=embeddings)


def _stats_line(stats: Any) -> str:
    drafts = (f", {stats.acceptance_rate:.0%} of {stats.draft_proposed} drafts accepted, "
              f"{stats.tokens_per_step:.2f} tokens/step") if stats.draft_proposed else ""
    return (f"[{stats.new_tokens} tokens, {stats.tokens_per_s:.1f} tokens/s, first token {stats.ttft_ms:.0f} ms, "
            f"{stats.strategy} on {stats.backend}/{stats.device}{drafts}]")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgegen")
def cli() -> None:
    """edgegen: fast on-device generation with ONNX Runtime and OpenVINO."""


@cli.command()
@click.argument("prompt")
@_model_options
@_sampling_options
@click.option("--strategy", default="auto", show_default=True,
              help="Decode strategy: auto (speculative with --draft, else prompt-lookup when greedy, else ar), ar, "
                   "speculative, prompt-lookup, superposed, lexical.")
@click.option("--draft", default=None,
              help="Exported draft model for --strategy speculative ('default': the drafter shipped with the "
                   "default model, used by --strategy speculative when none is given).")
@click.option("--num-draft-tokens", type=int, default=None, help="Initial draft length (speculative strategies).")
@click.option("--num-drafts", type=int, default=None, help="Drafts to return (superposed; default 3).")
@click.option("--alpha", type=float, default=None,
              help="N-gram weight in [0, 1] (superposed; default 0.54 with --ngram, else 0: none).")
@click.option("--ngram", default=None, type=click.Path(dir_okay=False),
              help="N-gram store file (superposed; default: the model's, built on first use).")
@click.option("--threshold", type=float, default=None,
              help="Confidence a placeholder's token needs to join the unit (lexical; default: the model's).")
@click.option("--span", type=int, default=None, help="Placeholders per step (lexical; default: all trained).")
@click.option("--verified", is_flag=True, help="Check each unit in the next step (lexical; output = AR).")
@click.option("--raw", is_flag=True, help="Do not apply the chat template.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of streaming.")
def run(prompt: str, model: str | None, backend: str | None, device: str | None, profile: str | None,
        max_new_tokens: int, temperature: float, top_k: int, top_p: float, repetition_penalty: float,
        seed: int | None, stop: tuple[str, ...], strategy: str, draft: str | None, num_draft_tokens: int | None,
        num_drafts: int | None, alpha: float | None, ngram: str | None, threshold: float | None, span: int | None,
        verified: bool, raw: bool, as_json: bool) -> None:
    """Generate a completion of PROMPT, streaming it to the terminal (superposed: its drafts, ranked)."""
    from edgegen.strategies import MULTI_DRAFT_STRATEGIES

    if strategy == "lexical" and model is None:
        model = "default-lud"  # the shipped LUD-tuned SmolLM2: the base model has no trained placeholders
    gen = _load(model, backend, device, profile, draft, embeddings=strategy in MULTI_DRAFT_STRATEGIES)
    kwargs = dict(max_new_tokens=max_new_tokens, temperature=temperature, chat=not raw, strategy=strategy,
                  top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty, seed=seed, stop=stop)
    for key, value in (("num_draft_tokens", num_draft_tokens), ("num_drafts", num_drafts), ("alpha", alpha),
                       ("ngram", ngram), ("threshold", threshold), ("span", span), ("verified", verified or None)):
        if value is not None:
            kwargs[key] = value
    if as_json:
        click.echo(json.dumps(gen.generate(prompt, **kwargs).to_dict()))
        return
    if strategy in MULTI_DRAFT_STRATEGIES:
        result = gen.generate(prompt, **kwargs)
        for i, d in enumerate(result.drafts, 1):
            click.echo(f"--- draft {i} (score {d.score:.3f}, {len(d.token_ids)} tokens, {d.finish_reason})")
            click.echo(d.text)
        click.echo(_stats_line(result.stats), err=True)
        return
    stream = gen.stream(prompt, **kwargs)
    for piece in stream:
        click.echo(piece, nl=False)
    click.echo()
    click.echo(_stats_line(stream.result.stats), err=True)


@cli.command()
@_model_options
@_sampling_options
@click.option("--system", default=None, help="System message.")
def chat(model: str | None, backend: str | None, device: str | None, profile: str | None, max_new_tokens: int,
         temperature: float, top_k: int, top_p: float, repetition_penalty: float, seed: int | None,
         stop: tuple[str, ...], system: str | None) -> None:
    """Interactive chat that keeps the conversation (/reset clears it, /exit or Ctrl-D leaves)."""
    gen = _load(model, backend, device, profile)
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    click.echo(f"chatting with {gen.manifest.name} on {gen.backend} ({'/reset, /exit'})", err=True)
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            click.echo()
            return
        if line in ("/exit", "/quit"):
            return
        if line == "/reset":
            history = history[:1] if system else []
            continue
        if not line:
            continue
        history.append({"role": "user", "content": line})
        stream = gen.stream(history, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                            top_p=top_p, repetition_penalty=repetition_penalty, seed=seed, stop=stop)
        click.echo("bot> ", nl=False)
        for piece in stream:
            click.echo(piece, nl=False)
        click.echo()
        history.append({"role": "assistant", "content": stream.result.text})


@cli.command()
@click.option("--model", default="default", show_default=True, help="'default', an HF folder or a .gguf file.")
@click.option("--format", "fmt", type=click.Choice(["onnx", "openvino", "both"]), default=None,
              help="Graphs to build (default: the profile's, else both).")
@click.option("--weights", type=click.Choice(_WEIGHTS), default=None, help="Weight precision (default: profile's).")
@click.option("--sym", is_flag=True, default=None, help="Symmetric int4/int8 weights.")
@click.option("--group-size", type=int, default=None, help="Quantization group size (-1: per channel).")
@click.option("--device-profile", "profile", default=None, help="Shape the export for a device profile (default: cpu).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--no-quality-gate", is_flag=True, help="Skip the perplexity check.")
@click.option("--embeddings", is_flag=True, default=None,
              help="Also build input-embedding graphs (needed by --strategy superposed).")
def export(model: str, fmt: str | None, weights: str | None, sym: bool | None, group_size: int | None,
           profile: str | None, out: str, no_quality_gate: bool, embeddings: bool | None) -> None:
    """Export a model to ONNX and/or OpenVINO at a precision and shape for a device."""
    from pathlib import Path

    from edgegen.models import export as run_export
    from edgegen.profiles import load_profile

    if profile:
        load_profile(profile)  # unknown profile: clear error before importing the exporters
    formats = None if fmt is None else (("onnx", "openvino") if fmt == "both" else (fmt,))
    kwargs: dict[str, Any] = {"profile": profile or "cpu", "quality_gate": not no_quality_gate}
    for key, value in (("formats", formats), ("weights", weights), ("sym", sym), ("group_size", group_size),
                       ("embeddings", embeddings)):
        if value is not None:
            kwargs[key] = value
    path = run_export(None if model == "default" else model, Path(out), **kwargs)
    click.echo(f"exported to {path}")


@cli.command()
@click.argument("model", type=click.Path())
def verify(model: str) -> None:
    """Check every file of an exported MODEL folder against the sha256 its export recorded."""
    from edgegen.manifest import verify_model

    manifest, problems = verify_model(model)
    if problems:
        raise EdgegenError(f"{model} is damaged: " + "; ".join(problems) + " (re-export it)")
    if not manifest.files:
        click.echo(f"{model}: no hashes recorded (exported before edgegen recorded them); re-export to add them")
    else:
        click.echo(f"{model}: ok, {len(manifest.files)} files match the sha256 their export recorded")


@cli.command()
def devices() -> None:
    """List runtimes, execution providers, devices present and the profile that applies."""
    from edgegen import runtimes
    from edgegen.api import DEVICE_PROFILES
    from edgegen.profiles import available_profiles

    for name, version in runtimes.runtime_versions().items():
        click.echo(f"{name} {version}")
    for backend, found in runtimes.available_devices().items():
        for device in found:
            click.echo(f"  {backend:12s} {device:10s} profile: {DEVICE_PROFILES.get(device, 'cpu')}")
    click.echo(f"profiles: {', '.join(available_profiles())}")


@cli.command()
@click.option("--model", default="default", show_default=True,
              help="'default' (exported per precision into the cache), an exported folder, an HF folder or .gguf.")
@click.option("--weights", "weights", type=click.Choice(_WEIGHTS), multiple=True,
              help="Precision to benchmark (repeatable; default int8). Ignored for an exported folder.")
@click.option("--prompts", type=click.Choice(["code", "chat", "all"]), default="all", show_default=True)
@click.option("--new-tokens", type=int, default=128, show_default=True, help="Tokens per run (EOS ignored).")
@click.option("--repeats", type=int, default=1, show_default=True, help="Timed runs per prompt.")
@click.option("--warmup", type=int, default=1, show_default=True, help="Warm-up runs per engine.")
@click.option("--limit", type=int, default=None, help="Only the first N prompts of each set (quick runs).")
@click.option("--no-baselines", is_flag=True, help="Skip openvino-genai and onnxruntime-genai.")
@click.option("--out", default="bench-out", show_default=True, type=click.Path(file_okay=False))
@click.option("--strategy", type=click.Choice(["ar", "speculative", "prompt-lookup", "superposed", "lexical"]),
              default="ar", show_default=True, help="Also run this speculative strategy (edgegen's and "
              "openvino-genai's); superposed: k drafts against k nucleus samples, speed and quality "
              "(docs/superposed.md); lexical: the LUD-tuned model (--model default: the shipped one) against AR of "
              "the base and tuned models on both backends, speed and quality (docs/lud.md; sweeps: edgegen lud bench).")
@click.option("--draft", default=None,
              help="Exported draft model folder (--strategy speculative; default: the default model's shipped one).")
@click.option("--num-draft-tokens", type=int, default=None, help="Initial draft length of edgegen's strategy.")
@click.option("--num-drafts", type=int, default=3, show_default=True, help="Drafts (--strategy superposed).")
@click.option("--alpha", type=float, default=None,
              help="N-gram weight (--strategy superposed; default 0.54 with --ngram, else 0).")
@click.option("--ngram", default=None, type=click.Path(dir_okay=False), help="N-gram store (--strategy superposed).")
def bench(model: str, weights: tuple[str, ...], prompts: str, new_tokens: int, repeats: int, warmup: int,
          limit: int | None, no_baselines: bool, out: str, strategy: str, draft: str | None,
          num_draft_tokens: int | None, num_drafts: int, alpha: float | None, ngram: str | None) -> None:
    """Benchmark edgegen's decode on both backends against openvino-genai and onnxruntime-genai."""
    from pathlib import Path

    from edgegen.bench import run_bench

    if strategy == "superposed":
        from edgegen.bench.superposed import run_superposed_bench

        extra = {key: value for key, value in (("alpha", alpha), ("ngram", ngram)) if value is not None}
        run_superposed_bench(model=model, weights=weights, prompts=prompts, new_tokens=new_tokens,
                             num_drafts=num_drafts, limit=limit, out=Path(out), warmup=warmup,
                             command="edgegen " + " ".join(sys.argv[1:]), echo=click.echo, **extra)
        return
    if strategy == "lexical":
        from edgegen.bench.lud import run_lud_bench

        for backend in ("onnxruntime", "openvino"):
            run_lud_bench("default-lud" if model == "default" else model, prompts=prompts, limit=limit,
                          new_tokens=new_tokens, warmup=warmup, backend=backend, out=Path(out) / f"lexical-{backend}",
                          command="edgegen " + " ".join(sys.argv[1:]), echo=click.echo)
        return
    options = {} if num_draft_tokens is None else {"num_draft_tokens": num_draft_tokens}
    run_bench(model=model, weights=weights, prompts=prompts, new_tokens=new_tokens, repeats=repeats,
              warmup=warmup, baselines=not no_baselines, out=Path(out), limit=limit,
              command="edgegen " + " ".join(sys.argv[1:]), echo=click.echo, strategy=strategy, draft=draft,
              **options)


@cli.group()
def draft() -> None:
    """Train, pack and export FastDraft drafters (a small model that drafts for a target)."""


@draft.command("train")
@click.option("--target", default="default", show_default=True,
              help="'default', an exported edgegen folder, an HF folder or a .gguf.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Training folder (checkpoints, logs).")
@click.option("--layers", type=int, default=2, show_default=True, help="Drafter depth.")
@click.option("--tokens", type=int, default=None, help="Training tokens over all stages (default 1M).")
@click.option("--steps", type=int, default=None, help="Optimizer steps over all stages (instead of --tokens).")
@click.option("--stage", type=click.Choice(["pretrain", "distill", "all"]), default="all", show_default=True)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its latest checkpoint.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True, help="torch threads.")
@click.option("--init", "init", type=click.Choice(["first", "spread"]), default="first", show_default=True,
              help="Target layers that seed the drafter: the first N or evenly spaced (first..last).")
@click.option("--pretrain-frac", type=float, default=0.5, show_default=True, help="Budget share of stage 1 (all).")
@click.option("--batch-size", type=int, default=4, show_default=True)
@click.option("--seq-len", type=int, default=256, show_default=True)
@click.option("--lr", type=float, default=5e-4, show_default=True)
@click.option("--gen-prompts", type=int, default=240, show_default=True, help="Stage-2 prompts (x3 temperatures).")
@click.option("--ckpt-minutes", type=float, default=5.0, show_default=True)
@click.option("--no-export", is_flag=True, help="Do not export the drafter at the end.")
@click.option("--no-quality-gate", is_flag=True, help="Skip the perplexity check of the export.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def draft_train(target: str, out: str, layers: int, tokens: int | None, steps: int | None, stage: str, resume: bool,
                seed: int, threads: int, init: str, pretrain_frac: float, batch_size: int, seq_len: int, lr: float,
                gen_prompts: int, ckpt_minutes: float, no_export: bool, no_quality_gate: bool, quiet: bool) -> None:
    """Train a drafter for --target with the FastDraft recipe (resumable)."""
    from edgegen.export.drafter import TrainConfig, train_drafter

    cfg = TrainConfig(target=target, out=out, layers=layers, tokens=tokens, steps=steps, stage=stage, seed=seed,
                      threads=threads, init=init, pretrain_frac=pretrain_frac, batch_size=batch_size,
                      seq_len=seq_len, lr=lr, gen_prompts=gen_prompts, ckpt_minutes=ckpt_minutes,
                      export=not no_export, quality_gate=not no_quality_gate, progress=not quiet)
    cfg.validate()
    summary = train_drafter(cfg, resume=resume, echo=lambda m: click.echo(m, err=True))
    click.echo(f"trained drafter in {summary['out']} ({summary['tokens_seen']} tokens, "
               f"{summary['train_tokens_per_s']} tokens/s)")


@draft.command("export")
@click.option("--checkpoint", required=True, type=click.Path(exists=True),
              help="Training folder, ckpt-* folder or packed drafter (.safetensors).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output model folder.")
@click.option("--target", default=None, help="Target it was trained for (default: the recorded one).")
@click.option("--no-quality-gate", is_flag=True, help="Skip the perplexity check.")
def draft_export(checkpoint: str, out: str, target: str | None, no_quality_gate: bool) -> None:
    """Export a drafter to ONNX + OpenVINO (int8, symmetric) with its target facts in edgegen.json."""
    from edgegen.export.drafter import export_drafter

    path = export_drafter(checkpoint, out, target=target, quality_gate=not no_quality_gate)
    click.echo(f"exported drafter to {path}")


@draft.command("pack")
@click.option("--checkpoint", required=True, type=click.Path(exists=True), help="Training or ckpt-* folder.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Packed file (.safetensors).")
@click.option("--dtype", type=click.Choice(["float16", "int8"]), default="float16", show_default=True,
              help="Stored precision (int8: blocks of 32 with fp16 scales, half the size; what ships).")
@click.option("--head-vocab", type=int, default=None,
              help="Keep only this many (most frequent) tokens in the drafter's head: a cheaper drafter.")
def draft_pack(checkpoint: str, out: str, dtype: str, head_vocab: int | None) -> None:
    """Store only the drafter's own weights and recipe: the target provides the rest."""
    from edgegen.export.drafter import pack_drafter

    path = pack_drafter(checkpoint, out, dtype=dtype, head_vocab=head_vocab)
    click.echo(f"packed drafter: {path} ({path.stat().st_size / 1e6:.1f} MB)")


@cli.group()
def ngram() -> None:
    """Build n-gram stores: Superposed Decoding's draft filter (docs/superposed.md)."""


@ngram.command("build")
@click.option("--corpus", multiple=True, required=True, help="Text file or folder (repeatable).")
@click.option("--tokenizer", "model", required=True, help="Exported model folder whose tokenizer counts, or 'default'.")
@click.option("--orders", default="2..6", show_default=True, help="N-gram orders: a range (2..6) or a list (2,3,5).")
@click.option("--out", required=True, help="Store file to write (.npz).")
@click.option("--min-count", type=int, default=1, show_default=True, help="Drop n-grams seen fewer times.")
@click.option("--max-tokens", type=int, default=None, help="Stop after this many corpus tokens.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def ngram_build(corpus: tuple[str, ...], model: str, orders: str, out: str, min_count: int, max_tokens: int | None,
                quiet: bool) -> None:
    """Count the n-grams of a corpus (token ids of MODEL's tokenizer) into one memory-mappable file."""
    from pathlib import Path

    from edgegen.models import load_tokenizer
    from edgegen.ngram import NgramStore, parse_orders
    from edgegen.ngram_build import build_store, corpus_files

    parsed = parse_orders(orders)
    corpus_files([Path(c) for c in corpus])  # a missing path fails before the tokenizer loads
    path = build_store([Path(c) for c in corpus], load_tokenizer(model), out=Path(out), orders=parsed,
                       min_count=min_count, max_tokens=max_tokens, progress=not quiet)
    store = NgramStore.open(path)
    click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {store.token_count:,} tokens, "
               f"orders {','.join(map(str, store.orders))}, min count {min_count})")


cli.add_command(lud)
cli.add_command(serve)


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors become one line on stderr and a non-zero exit, never a traceback."""
    try:
        cli.main(args=argv, prog_name="edgegen", standalone_mode=False)
    except EdgegenError as e:
        click.echo(f"error: {e}", err=True)
        return 1
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())


def entry() -> None:
    """Console-script wrapper: exit with main()'s status."""
    sys.exit(main())
