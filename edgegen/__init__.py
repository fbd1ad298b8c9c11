"""edgegen: on-device LLM generation (ONNX Runtime and OpenVINO behind one interface).

    import edgegen
    gen = edgegen.load()                      # embedded SmolLM2-135M-Instruct
    print(gen.generate("Name three rivers.").text)
    for piece in gen.stream("Tell me a joke."):
        print(piece, end="", flush=True)
"""

__version__ = "0.1.0"

from edgegen.api import GenerationResult, GenerationStats, Generator, load  # noqa: E402
from edgegen.errors import EdgegenError  # noqa: E402

__all__ = ["EdgegenError", "GenerationResult", "GenerationStats", "Generator", "load", "__version__"]
