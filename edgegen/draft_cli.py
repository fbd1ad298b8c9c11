"""``edgegen draft``: train, pack and export FastDraft drafters (registered in cli.py)."""

from __future__ import annotations

from typing import Any

import click

from edgegen.cli_common import build_data, gendata_options, ray_options, run_training, training_options


@click.group()
def draft() -> None:
    """Train, pack and export FastDraft drafters (a small model that drafts for a target)."""


def recipe_options(f: Any) -> Any:
    """The FastDraft recipe's options (train and gendata take the same: gendata opens the run train resumes)."""
    for option in reversed([
        click.option("--layers", type=int, default=2, show_default=True, help="Drafter depth."),
        click.option("--tokens", type=int, default=None, help="Training tokens over all stages (default 1M)."),
        click.option("--stage", type=click.Choice(["pretrain", "distill", "all"]), default="all", show_default=True),
        click.option("--init", "init", type=click.Choice(["first", "spread"]), default="first", show_default=True,
                     help="Target layers that seed the drafter: the first N or evenly spaced (first..last)."),
        click.option("--pretrain-frac", type=float, default=0.5, show_default=True,
                     help="Budget share of stage 1 (all)."),
        click.option("--seq-len", type=int, default=256, show_default=True),
        click.option("--lr", type=float, default=5e-4, show_default=True),
        click.option("--gen-prompts", type=int, default=240, show_default=True,
                     help="Stage-2 prompts (x3 temperatures)."),
        click.option("--head-vocab", type=int, default=None,
                     help="Train (and ship) a head of only the run's N most frequent tokens: what a large "
                          "vocabulary (Gemma's 262k) needs. Default: the whole vocabulary."),
    ]):
        f = option(f)
    return training_options(f)


def _config(target: str, out: str, layers: int, tokens: int | None, steps: int | None, stage: str, seed: int,
            threads: int, init: str, pretrain_frac: float, batch_size: int, seq_len: int, lr: float, gen_prompts: int,
            head_vocab: int | None, ckpt_minutes: float, no_export: bool, no_quality_gate: bool, quiet: bool) -> Any:
    from edgegen.export.drafter import TrainConfig

    cfg = TrainConfig(target=target, out=out, layers=layers, tokens=tokens, steps=steps, stage=stage, seed=seed,
                      threads=threads, init=init, pretrain_frac=pretrain_frac, batch_size=batch_size,
                      seq_len=seq_len, lr=lr, gen_prompts=gen_prompts, head_vocab=head_vocab, ckpt_minutes=ckpt_minutes,
                      export=not no_export, quality_gate=not no_quality_gate, progress=not quiet)
    cfg.validate()
    return cfg


@draft.command("train")
@recipe_options
@ray_options("Ray Train workers (with --ray); with --ray, also the Ray Data actors that generate its data.",
             default=2)
def draft_train(resume: bool, ray_address: str | None, workers: int, **options: Any) -> None:
    """Train a drafter for --target with the FastDraft recipe (resumable)."""
    from edgegen.export.drafter.train import open_run, train_drafter

    summary = run_training(train_drafter, open_run, _config(**options), resume, workers, ray_address)
    click.echo(f"trained drafter in {summary['out']} ({summary['tokens_seen']} tokens, "
               f"{summary['train_tokens_per_s']} tokens/s)")


@draft.command("gendata")
@recipe_options
@gendata_options
def draft_gendata(resume: bool, ray_address: str | None, workers: int, output_format: str, **options: Any) -> None:
    """Open the run in --out and build its data (corpus, the target's generations) without training;
    `edgegen draft train --out ... --resume` then trains on it."""
    from edgegen.export.drafter.train import open_run

    build_data("draft", open_run, _config(**options), resume, workers, ray_address, output_format)


@draft.command("export")
@click.option("--checkpoint", required=True, type=click.Path(exists=True),
              help="Training folder, ckpt-* folder or packed drafter (.safetensors).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output model folder.")
@click.option("--target", default=None, help="Target it was trained for (default: the recorded one).")
@click.option("--no-quality-gate", is_flag=True, help="Skip the perplexity check.")
def draft_export(checkpoint: str, out: str, target: str | None, no_quality_gate: bool) -> None:
    """Export a drafter to ONNX + OpenVINO (int8, symmetric) with its target facts in edgegen.json."""
    from edgegen.export.drafter import export_trained

    path = export_trained(checkpoint, out, target=target, quality_gate=not no_quality_gate)
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
