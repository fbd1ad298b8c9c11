"""``edgegen batch``: generation over a JSONL data set, locally or on Ray (registered in cli.py)."""

from __future__ import annotations

import os

import click

from edgegen.cli_common import given


@click.command("batch")
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False),
              help="JSONL: per line a 'prompt' (text or token ids) or 'messages', an optional 'id' and options "
                   "(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop, strategy, chat, "
                   "ignore_eos) that override the ones below.")
@click.option("--output", "output_path", required=True, type=click.Path(),
              help="JSONL of records in input order, or a folder of shards (--format parquet, --shard-rows); "
                   "an existing one is resumed (what it holds is skipped).")
@click.option("--format", "output_format", type=click.Choice(["jsonl", "parquet"]), default="jsonl",
              show_default=True, help="Records as JSONL, or Parquet shards in the --output folder (needs pyarrow).")
@click.option("--shard-rows", type=int, default=None,
              help="Records per shard: --output becomes a folder of shards, each written whole "
                   "(default with parquet: 1000).")
@click.option("--model", default=None, help="Exported folder, HF folder or .gguf (default: SmolLM2-135M).")
@click.option("--backend", type=click.Choice(["onnxruntime", "openvino", "torch"]), default=None,
              help="Runtime (default: the faster for the device, measured once).")
@click.option("--device", default=None, help="CPU (default), GPU, NPU, CUDA, DML.")
@click.option("--profile", default=None, help="Device profile (default: the device's).")
@click.option("--draft", default=None, help="Exported draft model (strategy speculative).")
@click.option("--threads", type=int, default=None,
              help="Runtime threads per worker (default: all cores with one worker, else cores / workers).")
@click.option("--strategy", default="auto", show_default=True, help="Decode strategy of lines that name none.")
@click.option("--max-new-tokens", type=int, default=256, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy.")
@click.option("--seed", type=int, default=None)
@click.option("--raw", is_flag=True, help="Do not apply the chat template (lines may set 'chat').")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Generators running at once: worker processes, or Ray actors with --ray.")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS|local",
              help="Run on Ray Data: 'local' (a Ray instance on this machine) or a cluster address "
                   "(needs the ray extra).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def batch(input_path: str, output_path: str, model: str | None, backend: str | None, device: str | None,
          profile: str | None, draft: str | None, threads: int | None, strategy: str, max_new_tokens: int,
          temperature: float, seed: int | None, raw: bool, workers: int, ray_address: str | None,
          output_format: str, shard_rows: int | None, quiet: bool) -> None:
    """Generate a completion for every line of --input into --output, in order, resumably."""
    from edgegen.arguments import check_int
    from edgegen.batch import run_batch

    workers = check_int("--workers", workers, minimum=1)
    if threads is None and workers > 1 and ray_address is None:
        threads = max(1, (os.cpu_count() or 1) // workers)  # the pool shares this machine's cores
    load_args = given(model=model, backend=backend, device=device, profile=profile, draft=draft, threads=threads)
    defaults = dict(strategy=strategy, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                    chat=not raw)
    s = run_batch(input_path, output_path, load_args=load_args, defaults=defaults, workers=workers,
                  ray=ray_address, output_format=output_format, shard_rows=shard_rows, progress=not quiet)
    rate = f", {s.generated / s.seconds:.2f} lines/s, {s.new_tokens / s.seconds:.1f} tokens/s" if s.generated else ""
    errors = f", {s.errors} with an error field" if s.errors else ""
    click.echo(f"{s.generated} lines generated ({s.skipped} already done) of {s.lines} into {output_path}"
               f"{errors}{rate}", err=True)
