"""Export a model (GGUF or Hugging Face folder) to ONNX / OpenVINO graphs plus an edgegen.json manifest.

Importing this package is cheap and torch-free: torch, transformers and the builders are imported
inside the functions that need them, so the runtime path never pays for them.
"""

from edgegen.export.pipeline import export_model
from edgegen.export.source import default_model_source

__all__ = ["default_model_source", "export_model"]
