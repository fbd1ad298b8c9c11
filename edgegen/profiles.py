"""Device profiles: what a device needs from an export and how to run on it."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources

from edgegen.errors import EdgegenError

PROFILE_PACKAGE = "edgegen.device_profiles"


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    formats: tuple[str, ...]
    weights: str
    sym: bool
    group_size: int
    backend: str  # "auto" | "onnxruntime" | "openvino"
    device: str  # "CPU", "GPU", "NPU", "CUDA", "DML": where the target model runs
    onnx_execution_provider: str = "cpu"
    # NPU: max_prompt_len, min_response_len, max_generation_len (tokens per call after the prompt)
    static_shapes: dict[str, int] = field(default_factory=dict)
    embeddings: bool = False  # export input-embedding graphs too (superposed decoding)
    draft_device: str | None = None  # where a draft model runs (None: beside the target, on ``device``)


def available_profiles() -> list[str]:
    files = resources.files(PROFILE_PACKAGE).iterdir()
    return sorted(f.name.removesuffix(".toml") for f in files if f.name.endswith(".toml"))


def load_profile(name: str) -> DeviceProfile:
    """Read a profile by name; an unknown name is an EdgegenError listing the known ones."""
    names = available_profiles()
    if name not in names:
        raise EdgegenError(f"unknown device profile '{name}' (known: {', '.join(names)})")
    data = tomllib.loads(resources.files(PROFILE_PACKAGE).joinpath(f"{name}.toml").read_text())
    exp, run = data.get("export", {}), data.get("run", {})
    return DeviceProfile(
        name=name,
        description=data.get("description", ""),
        formats=tuple(exp.get("formats", ["onnx", "openvino"])),
        weights=exp.get("weights", "int8"),
        sym=bool(exp.get("sym", False)),
        group_size=int(exp.get("group_size", 128)),
        onnx_execution_provider=exp.get("onnx_execution_provider", "cpu"),
        backend=run.get("backend", "auto"),
        device=run.get("device", "CPU"),
        static_shapes={k: int(v) for k, v in data.get("static_shapes", {}).items()},
        embeddings=bool(exp.get("embeddings", False)),
        draft_device=run.get("draft_device"),
    )
