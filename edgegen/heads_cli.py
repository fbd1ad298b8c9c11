"""``edgegen heads``: train and pack Hydra draft heads (registered in cli.py)."""

from __future__ import annotations

import click

from edgegen.cli_common import training_options


@click.group()
def heads() -> None:
    """Train and pack Hydra draft heads (small heads that draft from the target's own hidden state)."""


@heads.command("train")
@training_options
@click.option("--tokens", type=int, default=None, help="Training positions, all epochs (default 2M).")
@click.option("--heads", "num_heads", type=int, default=4, show_default=True, help="Heads (draft tokens per step).")
@click.option("--head-layers", type=int, default=1, show_default=True, help="Residual blocks per head.")
@click.option("--head-vocab", type=int, default=4096, show_default=True,
              help="The heads' output vocabulary: the run's most frequent target tokens.")
@click.option("--feature-tokens", type=int, default=400_000, show_default=True,
              help="Corpus positions whose target features are cached (the target's generations: all of them).")
@click.option("--gen-prompts", type=int, default=240, show_default=True, help="Prompts the target answers (greedy).")
@click.option("--seq-len", type=int, default=256, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--eval-every", type=int, default=200, show_default=True, help="Steps between held-out evaluations.")
@click.option("--eval-tokens", type=int, default=4096, show_default=True, help="Positions per held-out corpus set.")
@click.option("--token-scale", type=float, default=1.0, show_default=True,
              help="Factor on the token's embedding at the heads' input during training (a power of two; 0: "
                   "rms(hidden) / rms(embedding) rounded to one, 16 for SmolLM2; docs/hydra.md).")
def heads_train(target: str, out: str, tokens: int | None, steps: int | None, resume: bool, seed: int, threads: int,
                batch_size: int, ckpt_minutes: float, no_export: bool, no_quality_gate: bool, quiet: bool,
                num_heads: int, head_layers: int, head_vocab: int, feature_tokens: int, gen_prompts: int,
                seq_len: int, lr: float, eval_every: int, eval_tokens: int, token_scale: float) -> None:
    """Train Hydra heads for --target on its own features (resumable). The heads run in NumPy, so
    --no-export and --no-quality-gate change nothing: the packed file is the product."""
    from edgegen.export.hydra import HydraConfig, train_heads

    cfg = HydraConfig(target=target, out=out, tokens=tokens, steps=steps, seed=seed, threads=threads,
                      batch_size=batch_size, ckpt_minutes=ckpt_minutes, progress=not quiet, heads=num_heads,
                      head_layers=head_layers, head_vocab=head_vocab, feature_tokens=feature_tokens,
                      gen_prompts=gen_prompts, seq_len=seq_len, lr=lr, eval_every=eval_every,
                      eval_tokens=eval_tokens, token_scale=token_scale)
    cfg.validate()
    summary = train_heads(cfg, resume=resume, echo=lambda m: click.echo(m, err=True))
    click.echo(f"trained heads in {summary['out']} ({summary['tokens_seen']} positions, "
               f"{summary['train_tokens_per_s']} positions/s)")


@heads.command("pack")
@click.option("--checkpoint", required=True, type=click.Path(exists=True), help="Training or ckpt-* folder.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Heads file (.safetensors).")
@click.option("--dtype", type=click.Choice(["float16", "float32", "int8"]), default="float16", show_default=True,
              help="Stored precision (int8: blocks of 32 with fp16 scales, half the size; what ships).")
def heads_pack(checkpoint: str, out: str, dtype: str) -> None:
    """Store a checkpoint's heads, their vocabulary and embedding rows in one file the runtime reads."""
    from edgegen.export.hydra import pack_heads

    path = pack_heads(checkpoint, out, dtype=dtype)
    click.echo(f"packed heads: {path} ({path.stat().st_size / 1e6:.1f} MB)")
