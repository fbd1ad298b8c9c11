"""edgegen: on-device LLM generation (ONNX Runtime and OpenVINO behind one interface).

    import edgegen
    gen = edgegen.load()                      # embedded SmolLM2-135M-Instruct
    print(gen.generate("Name three rivers.").text)
    for piece in gen.stream("Tell me a joke."):
        print(piece, end="", flush=True)

The package imports lazily (PEP 562): ``import edgegen.errors`` (as runtimes/ and export/ do) loads
no runtime, strategy, tokenizer or template engine; ``edgegen.load`` and the other public names
import the API on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_PUBLIC = {
    "EdgegenError": "edgegen.errors",
    "GenerationResult": "edgegen.api",
    "GenerationStats": "edgegen.api",
    "Generator": "edgegen.api",
    "TextStream": "edgegen.api",
    "load": "edgegen.api",
}

if TYPE_CHECKING:
    from edgegen.api import GenerationResult, GenerationStats, Generator, TextStream, load
    from edgegen.errors import EdgegenError


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'edgegen' has no attribute '{name}'")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


__all__ = ["EdgegenError", "GenerationResult", "GenerationStats", "Generator", "TextStream", "load", "__version__"]
