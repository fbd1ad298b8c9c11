"""Fine-tuning recipes on Ray Train: TorchTrainer runs a recipe (FastDraft, LUD) on N workers, data parallel.

The driver opens the run folder and builds its data once (corpus, target generations: the latter as a
batch job on the same Ray cluster) as a one-process run would; then every worker runs the same recipe
(its ``train`` function) resuming that folder, in the torch.distributed group TorchTrainer sets up:
data_parallel.py splits each batch over the workers and averages gradients, rank 0 writes checkpoints in
the recipe's own atomic format. A run started on Ray resumes in one process (``--resume`` without
``--ray``) and back. The workers must see the run folder (one machine, or a shared file system).

A recipe is two functions of its module: ``open_run(cfg, resume=, echo=, gen=)`` (opens the run, builds its
data; returns the finetune.FineTune) and ``train(cfg, resume=, echo=)`` (runs or resumes it; returns the
summary): train_drafter / drafter.train.open_run, train_lud / lud.train.open_run.

Importing this module imports neither torch nor Ray.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgegen.errors import EdgegenError


def _worker(config: dict[str, Any]) -> None:
    """One TorchTrainer worker: the recipe on this rank's share of every batch (rank 0 reports)."""
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    config["train"](config["cfg"], resume=True, echo=print if rank == 0 else (lambda message: None))


def train_on_ray(train: Callable[..., dict[str, Any]], open_run: Callable[..., Any], cfg: Any, *, resume: bool,
                 workers: int, address: str, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (or resume) the run ``cfg`` of the recipe (``train``, ``open_run``) with ``workers`` TorchTrainer
    workers on the Ray cluster at ``address`` ("local" or an address); its target generations are made by
    ``workers`` Ray Data actors first. Returns the run summary, as ``train`` does."""
    from edgegen.export.drafter.gendata import GenWorkers
    from edgegen.ray_cluster import connect

    if workers < 1:
        raise EdgegenError(f"--workers must be at least 1, got {workers}")
    if cfg.batch_size % workers:
        raise EdgegenError(f"--batch-size {cfg.batch_size} does not split over {workers} workers")
    started = connect(address)
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    try:
        # Open the run and build its data here, once (the workers then resume it and find the data built).
        run = open_run(cfg, resume=resume, echo=echo, gen=GenWorkers(workers=workers, ray=address))
        saved = replace(run.cfg, progress=False)  # no progress bars in worker logs
        del run
        trainer = TorchTrainer(_worker, train_loop_config={"train": train, "cfg": saved},
                               scaling_config=ScalingConfig(num_workers=workers, use_gpu=False),
                               run_config=RunConfig(name="ray-train", storage_path=str(Path(saved.out) / "ray")))
        try:
            trainer.fit()
        except Exception as e:  # Ray wraps the worker's error (TrainingFailedError)
            raise EdgegenError(f"training on Ray failed: {str(e).strip().splitlines()[-1]}") from None
    finally:
        if started:
            ray.shutdown()
    return json.loads((Path(saved.out) / "summary.json").read_text())
