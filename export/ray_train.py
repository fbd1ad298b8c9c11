"""Drafter distillation on Ray Train: TorchTrainer runs the FastDraft recipe on N workers (data parallel).

The driver opens the run folder and builds its data once (corpus, target generations) as a one-process run
would; then every worker runs the same recipe (``train_drafter``) resuming that folder, in the
torch.distributed group TorchTrainer sets up: data_parallel.py splits each batch over the workers and
averages gradients, rank 0 writes checkpoints in the recipe's own atomic format. A run started on Ray
resumes in one process (``edgegen draft train --resume``) and back. The workers must see the run folder
(one machine, or a shared file system on a cluster).

Importing this module imports neither torch nor Ray.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgegen.errors import EdgegenError
from edgegen.export.drafter.config import TrainConfig
from edgegen.export.finetune import FineTune

KEEP = ("threads", "progress")  # what a resumed run takes from the command line (as train_drafter)


def _worker(config: dict[str, Any]) -> None:
    """One TorchTrainer worker: the recipe on this rank's share of every batch (rank 0 reports)."""
    import ray.train

    from edgegen.export.drafter.train import train_drafter

    rank = ray.train.get_context().get_world_rank()
    cfg = TrainConfig(**config["cfg"])
    train_drafter(cfg, resume=True, echo=print if rank == 0 else (lambda message: None))


def train_drafter_on_ray(cfg: TrainConfig, *, resume: bool, workers: int, address: str,
                         echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (or resume) the drafter run ``cfg`` with ``workers`` TorchTrainer workers on the Ray cluster at
    ``address`` ("local" or an address); returns the run summary, as train_drafter does."""
    from edgegen.ray_cluster import connect

    if workers < 1:
        raise EdgegenError(f"--workers must be at least 1, got {workers}")
    if cfg.batch_size % workers:
        raise EdgegenError(f"--batch-size {cfg.batch_size} does not split over {workers} workers")
    # Open the run and build its data here, once (the workers then resume it and find the data built).
    run = FineTune(cfg, resume=resume, keep=KEEP, echo=echo,
                   generations=lambda c: "distill" in [s for s, _ in c.plan()])  # as train_drafter asks
    saved = replace(run.cfg, progress=False)  # no progress bars in worker logs
    del run
    started = connect(address)
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    try:
        trainer = TorchTrainer(_worker, train_loop_config={"cfg": saved.to_dict()},
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
