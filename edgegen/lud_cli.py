"""``edgegen lud``: train, export, pack and benchmark Lexical Unit Decoding models (registered in cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgegen.cli_common import build_data, command_line, gendata_options, ray_options, run_training, training_options


@click.group()
def lud() -> None:
    """Lexical Unit Decoding: fine-tune placeholder tokens so a model decodes confident multi-token units."""


def recipe_options(f: Any) -> Any:
    """The LUD recipe's options (train and gendata take the same: gendata opens the run train resumes)."""
    for option in reversed([
        click.option("--span", type=int, default=4, show_default=True,
                     help="Placeholders trained (m, the most a step uses)."),
        click.option("--unit-threshold", type=float, default=0.6, show_default=True,
                     help="A token joins a lexical unit when the target's probability of it exceeds this."),
        click.option("--tokens", type=int, default=None, help="Real tokens to train on (default 400k)."),
        click.option("--seq-len", type=int, default=192, show_default=True),
        click.option("--lr", type=float, default=3e-3, show_default=True),
        click.option("--gen-prompts", type=int, default=48, show_default=True,
                     help="Prompts the target answers (x3 temps)."),
        click.option("--gen-share", type=float, default=0.5, show_default=True,
                     help="Share of batches from generations."),
        click.option("--eval-every", type=int, default=0, show_default=True,
                     help="Steps between evaluations (0: start/end)."),
        click.option("--trainable", default="placeholders", show_default=True,
                     help="placeholders: their embedding rows only (AR output unchanged); lora: + LoRA adapters on "
                          "the top layers, ordinary rows kept on the base by a KL term."),
        click.option("--lora-rank", type=int, default=16, show_default=True),
        click.option("--lora-alpha", type=float, default=32.0, show_default=True, help="LoRA scale = alpha / rank."),
        click.option("--lora-layers", type=int, default=8, show_default=True,
                     help="Top decoder layers that get adapters."),
        click.option("--lora-lr", type=float, default=1e-3, show_default=True,
                     help="Peak learning rate of the adapters."),
        click.option("--kl-weight", type=float, default=1.0, show_default=True,
                     help="Weight of KL(base || tuned) at ordinary rows (lora)."),
        click.option("--guard-weight", type=float, default=1.0, show_default=True,
                     help="Weight of the placeholder ids' probability at ordinary rows."),
        click.option("--max-blocks", type=int, default=24, show_default=True,
                     help="Placeholder blocks per sequence."),
    ]):
        f = option(f)
    return training_options(f)


def _config(no_export: bool, no_quality_gate: bool, quiet: bool, **options: Any) -> Any:
    from edgegen.export.lud import LudConfig

    cfg = LudConfig(**options, export=not no_export, quality_gate=not no_quality_gate, progress=not quiet)
    cfg.validate()
    return cfg


@lud.command("train")
@recipe_options
@ray_options("Ray Train workers (with --ray); with --ray, also the Ray Data actors that generate its data.",
             default=2)
def lud_train(resume: bool, ray_address: str | None, workers: int, **options: Any) -> None:
    """Fine-tune --target's placeholder rows (and LoRA adapters) on marked lexical units (resumable), export it."""
    from edgegen.export.lud.train import open_run, train_lud

    summary = run_training(train_lud, open_run, _config(**options), resume, workers, ray_address)
    model = f"; model {summary['model']}" if "model" in summary else ""
    click.echo(f"trained LUD ({summary['recipe']['trainable']}) in {summary['out']} ({summary['tokens_seen']} tokens, "
               f"{summary['train_tokens_per_s']} tokens/s){model}")


@lud.command("gendata")
@recipe_options
@gendata_options
def lud_gendata(resume: bool, ray_address: str | None, workers: int, output_format: str, **options: Any) -> None:
    """Open the run in --out and build its data (corpus, the target's generations) without training;
    `edgegen lud train --out ... --resume` then trains on it."""
    from edgegen.export.lud.train import open_run

    build_data("lud", open_run, _config(**options), resume, workers, ray_address, output_format)


@lud.command("export")
@click.option("--checkpoint", required=True, type=click.Path(exists=True),
              help="Training folder, ckpt-* folder or packed delta (.safetensors).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output model folder.")
@click.option("--target", default=None, help="Target it was trained for (default: the recorded one).")
@click.option("--weights", type=click.Choice(["fp32", "fp16", "int8", "int4"]), default="int8", show_default=True,
              help="Weight precision (int8/int4 symmetric, as `edgegen bench` exports the base).")
@click.option("--no-quality-gate", is_flag=True, help="Skip the perplexity check.")
def lud_export(checkpoint: str, out: str, target: str | None, weights: str, no_quality_gate: bool) -> None:
    """Merge the placeholder rows into the target and export ONNX + OpenVINO with extras.lud."""
    from edgegen.export.lud import export_lud

    path = export_lud(checkpoint, out, target=target, weights=weights, quality_gate=not no_quality_gate)
    click.echo(f"exported the LUD-tuned model to {path}")


@lud.command("pack")
@click.option("--checkpoint", required=True, type=click.Path(exists=True), help="Training or ckpt-* folder.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Packed delta (.safetensors).")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True,
              help="Storage of the LoRA matrices (the placeholder rows stay fp32).")
def lud_pack(checkpoint: str, out: str, dtype: str) -> None:
    """Store only the trained placeholder rows, LoRA adapters and the recipe (the target provides the rest)."""
    from edgegen.export.lud import pack_lud

    path = pack_lud(checkpoint, out, dtype=dtype)
    click.echo(f"packed LUD delta: {path} ({path.stat().st_size / 1e3:.1f} kB)")


@lud.command("bench")
@click.option("--model", "models", multiple=True, default=["default-lud"], show_default=True,
              help="Exported LUD-tuned folder, or LABEL=folder; repeat to compare several in one run.")
@click.option("--base", default=None, help="The base model's exported folder (default: SmolLM2 int8, as bench).")
@click.option("--prompts", type=click.Choice(["code", "chat", "all"]), default="all", show_default=True)
@click.option("--limit", type=int, default=4, show_default=True, help="First N prompts of each set.")
@click.option("--new-tokens", type=int, default=128, show_default=True, help="Tokens per run (EOS ignored).")
@click.option("--threshold", "thresholds", type=float, multiple=True, help="Acceptance threshold (repeatable).")
@click.option("--span", "spans", type=int, multiple=True, help="Placeholders per step (repeatable).")
@click.option("--no-verified", is_flag=True, help="Skip the verified mode.")
@click.option("--backend", type=click.Choice(["onnxruntime", "openvino"]), default="onnxruntime", show_default=True)
@click.option("--out", default="bench-out/lud", show_default=True, type=click.Path(file_okay=False))
def lud_bench(models: tuple[str, ...], base: str | None, prompts: str, limit: int, new_tokens: int,
              thresholds: tuple[float, ...], spans: tuple[int, ...], no_verified: bool, backend: str, out: str) -> None:
    """LUD vs AR of the base and the tuned model: speed, tokens per forward, agreement, fp32 perplexity."""
    from edgegen.bench.lud import run_lud_bench

    run_lud_bench(models, base, prompts=prompts, limit=limit, new_tokens=new_tokens, thresholds=thresholds or (0.7,),
                  spans=spans or (3,), verified=not no_verified, backend=backend, out=Path(out),
                  command=command_line(), echo=click.echo)
