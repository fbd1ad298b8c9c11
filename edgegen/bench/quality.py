"""Output quality for the strategy benches: perplexity of generated text under a reference model.

The log-softmax arithmetic is the export quality gate's (``export.quality.perplexity_from_logits``), so
the bench and the gate score text the same way.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.manifest import read_manifest


def until_eos(tokens: Sequence[int], eos: Collection[int]) -> list[int]:
    """The tokens up to and including the first EOS (what a user would be shown)."""
    for i, t in enumerate(tokens):
        if t in eos:
            return list(tokens[: i + 1])
    return list(tokens)


def perplexity(session: Any, prompt: Sequence[int], continuation: Sequence[int]) -> float:
    """exp(mean negative log-likelihood) of ``continuation`` after ``prompt`` under ``session`` (teacher
    forcing: one forward over prompt + continuation from an empty cache)."""
    from edgegen.export.quality import perplexity_from_logits

    session.reset()
    logits = session.forward(np.asarray([*prompt, *continuation], np.int64))
    # row i of logits[len(prompt) - 1:] predicts the token after position len(prompt) - 1 + i
    return perplexity_from_logits(logits[len(prompt) - 1:], [prompt[-1], *continuation])


def fp32_session(folder: Path) -> tuple[Any, set[int]]:
    """A session on an fp32 export for scoring (ONNX Runtime where the folder has the graph) and its EOS ids."""
    from edgegen import runtimes

    manifest = read_manifest(folder)
    backend = next(b for b in runtimes.BACKENDS if runtimes.graph_format(b) in manifest.graphs)
    return runtimes.open_session(folder, manifest, backend), set(manifest.eos_token_ids)
