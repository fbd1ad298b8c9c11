"""Resumable checkpoints written atomically.

A checkpoint is a folder `ckpt-<global step>` holding the trained weights (safetensors), the training
state (optimizer, stage/step = data position, RNG states) and meta.json. It is built in a hidden
`.tmp-ckpt-*` sibling, every file and the folder are fsynced, then it is renamed into place (a rename is
atomic), `LATEST` is replaced atomically, and older checkpoints are removed. A folder named `ckpt-*` is
therefore always complete; a crash can only leave a `.tmp-ckpt-*` folder, which the next run deletes.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from edgegen.errors import EdgegenError

LATEST = "LATEST"
PREFIX = "ckpt-"


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clean_stale(run_dir: Path) -> None:
    for p in Path(run_dir).glob(".tmp-ckpt-*"):
        shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(run_dir: Path, step: int, tensors: dict[str, Any], state: dict[str, Any],
                    meta: dict[str, Any], keep: int = 1) -> Path:
    import torch
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    final = run_dir / f"{PREFIX}{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-ckpt-", dir=run_dir))
    try:
        save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(tmp / "trainable.safetensors"))
        torch.save(state, tmp / "state.pt")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        for f in tmp.iterdir():
            _fsync_path(f)
        _fsync_path(tmp)
        if final.exists():  # the same step saved again (after a resume): move the old one aside first
            old = Path(tempfile.mkdtemp(prefix=".tmp-ckpt-old-", dir=run_dir))
            old.rmdir()
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_path(run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pointer = run_dir / (LATEST + ".tmp")
    pointer.write_text(final.name + "\n")
    _fsync_path(pointer)
    os.replace(pointer, run_dir / LATEST)
    _fsync_path(run_dir)
    for p in sorted(run_dir.glob(PREFIX + "*"))[:-keep] if keep > 0 else []:
        if p != final:
            shutil.rmtree(p, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    run_dir = Path(run_dir)
    pointer = run_dir / LATEST
    if pointer.is_file():
        cand = run_dir / pointer.read_text().strip()
        if (cand / "meta.json").is_file():
            return cand
    found = [p for p in sorted(run_dir.glob(PREFIX + "*")) if (p / "meta.json").is_file()]
    return found[-1] if found else None


def checkpoint_dir(path: Path, what: str) -> Path:
    """``path`` if it is a complete checkpoint folder, else the latest checkpoint of the run folder ``path``."""
    path = Path(path).expanduser()
    if (path / "meta.json").is_file() and (path / "trainable.safetensors").is_file():
        return path
    if path.is_dir() and (found := latest_checkpoint(path)) is not None:
        return found
    raise EdgegenError(f"{path} is not a {what} checkpoint or training folder (no complete ckpt-* inside)")


def load_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(tensors, state, meta) of the checkpoint folder ``path``.

    The state is read with ``torch.load(weights_only=True)``: tensors, plain containers and (in checkpoints
    of older edgegen versions, which pickled NumPy's RNG state) NumPy arrays only, so a crafted ``state.pt``
    cannot run code; one holding anything else is refused with an EdgegenError.
    """
    import pickle

    import numpy as np
    import torch
    from numpy._core.multiarray import _reconstruct  # how pickle rebuilds an ndarray (torch's documented allowlist)
    from safetensors.torch import load_file

    path = Path(path)
    tensors = load_file(str(path / "trainable.safetensors"))
    arrays = [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    try:
        with torch.serialization.safe_globals(arrays):
            state = torch.load(path / "state.pt", weights_only=True)
    except pickle.UnpicklingError:
        raise EdgegenError(f"refusing to resume from {path}: its state.pt holds objects other than tensors and "
                           "plain values (a crafted or foreign file); start the run again without --resume, "
                           "in a new --out folder") from None
    meta = json.loads((path / "meta.json").read_text())
    return tensors, state, meta


Config = TypeVar("Config", bound="RunConfig")


class RunConfig:
    """Saving and loading of a training run's config dataclass, as ``CONFIG_NAME`` in the run folder.

    Subclasses are dataclasses with ``out``, ``seed``, ``threads`` fields and a ``validate`` method.
    """

    CONFIG_NAME: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    def save(self, folder: Path) -> None:
        path = Path(folder) / self.CONFIG_NAME
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls: type[Config], folder: Path) -> Config:
        path = Path(folder) / cls.CONFIG_NAME
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise EdgegenError(f"cannot read the run's {cls.CONFIG_NAME} in {folder}: {e}") from None
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in known})


def open_run(cfg: Config, resume: bool, keep: tuple[str, ...]) -> Config:
    """Start or resume the run in ``cfg.out`` and seed every RNG; returns the config to train with.

    Resuming takes the saved config (the recipe must not change mid-run) but the fields in ``keep``
    (threads, progress display, ...) from ``cfg``. A new run refuses a folder that holds one.
    """
    import numpy as np
    import torch

    out = Path(cfg.out).expanduser().resolve()  # type: ignore[attr-defined]
    name = cfg.CONFIG_NAME
    if resume:
        if not (out / name).is_file():
            raise EdgegenError(f"nothing to resume in {out} (no {name}); start it without --resume")
        saved = type(cfg).load(out)
        for key in keep:
            setattr(saved, key, getattr(cfg, key))
        cfg = saved
    else:
        if (out / name).is_file() or latest_checkpoint(out) is not None:
            raise EdgegenError(f"{out} already holds a training run: pass --resume to continue it, "
                               "or pick another --out")
        cfg.validate()  # type: ignore[attr-defined]
        out.mkdir(parents=True, exist_ok=True)
    cfg.out = str(out)  # type: ignore[attr-defined]
    cfg.validate()  # type: ignore[attr-defined]
    if not resume:
        cfg.save(out)
    clean_stale(out)
    torch.set_num_threads(cfg.threads)  # type: ignore[attr-defined]
    torch.manual_seed(cfg.seed)  # type: ignore[attr-defined]
    np.random.seed(cfg.seed)  # type: ignore[attr-defined]
    random.seed(cfg.seed)  # type: ignore[attr-defined]
    return cfg
