"""What every ``edgegen`` command module shares: the options given on the command line, and the line itself.

The command groups live one per module (cli.py: the top-level commands; draft_cli, ngram_cli,
lud_cli: one group each), and import only this module from one another.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click


def given(**values: Any) -> dict[str, Any]:
    """The options the user set: those left at None (click's 'not given') are dropped, so the API's
    defaults apply."""
    return {key: value for key, value in values.items() if value is not None}


def command_line() -> str:
    """The command as typed (recorded in benchmark reports)."""
    return " ".join(["edgegen", *sys.argv[1:]])


def training_options(f: Any) -> Any:
    """The options every fine-tuning recipe's ``train`` command shares (the skeleton in export/finetune.py);
    each recipe adds its own (budget, sequence length, learning rate, data)."""
    for option in reversed([
        click.option("--target", default="default", show_default=True,
                     help="'default', an exported edgegen folder, an HF folder or a .gguf."),
        click.option("--out", required=True, type=click.Path(file_okay=False),
                     help="Training folder (checkpoints, logs)."),
        click.option("--steps", type=int, default=None, help="Optimizer steps (instead of --tokens)."),
        click.option("--resume", is_flag=True, help="Continue the run in --out from its latest checkpoint."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--threads", type=int, default=1, show_default=True, help="torch threads."),
        click.option("--batch-size", type=int, default=4, show_default=True),
        click.option("--ckpt-minutes", type=float, default=5.0, show_default=True),
        click.option("--no-export", is_flag=True, help="Do not export the trained model at the end."),
        click.option("--no-quality-gate", is_flag=True, help="Skip the perplexity check of the export."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]):
        f = option(f)
    return f


def ray_options(workers_help: str, default: int = 1) -> Any:
    """``--ray ADDRESS|local`` and ``--workers N``: where a command's work runs (Ray is imported only with --ray)."""

    def decorate(f: Any) -> Any:
        f = click.option("--workers", type=int, default=default, show_default=True, help=workers_help)(f)
        return click.option("--ray", "ray_address", default=None, metavar="ADDRESS|local",
                            help="Run on Ray: 'local' (a Ray instance on this machine) or a cluster address "
                                 "(needs the ray extra).")(f)

    return decorate


def gendata_options(f: Any) -> Any:
    """What a recipe's ``gendata`` command adds to its training options: where the target's generations run
    (a batch job: local worker processes or Ray actors) and how their shards are stored."""
    f = click.option("--format", "output_format", type=click.Choice(["jsonl", "parquet"]), default="jsonl",
                     show_default=True, help="Shards of the generations (parquet needs pyarrow).")(f)
    return ray_options("Generators running at once: worker processes, or Ray actors with --ray.")(f)


def _progress(message: str) -> None:
    click.echo(message, err=True)


def run_training(train: Callable[..., dict[str, Any]], open_run: Callable[..., Any], cfg: Any, resume: bool,
                 workers: int, ray_address: str | None) -> dict[str, Any]:
    """Train a recipe's ``cfg`` in this process, or on Ray Train with ``--ray`` (progress lines on stderr); returns
    the run's summary."""
    if ray_address is not None:
        from edgegen.export.ray_train import train_on_ray

        return train_on_ray(train, open_run, cfg, resume=resume, workers=workers, address=ray_address,
                            echo=_progress)
    return train(cfg, resume=resume, echo=_progress)


def build_data(group: str, open_run: Callable[..., Any], cfg: Any, resume: bool, workers: int,
               ray_address: str | None, output_format: str) -> None:
    """A recipe's ``gendata``: open the run in ``cfg.out`` and build its data (corpus, the target's generations on
    local workers or Ray actors) without training; ``edgegen GROUP train --out ... --resume`` trains on it."""
    from edgegen.batch_output import check_format
    from edgegen.export.drafter.gendata import GenWorkers

    check_format(output_format)
    run = open_run(cfg, resume=resume, echo=_progress,
                   gen=GenWorkers(workers=workers, ray=ray_address, output_format=output_format))
    click.echo(f"data built in {run.out}: `edgegen {group} train --out {run.out} --resume` trains on it")
