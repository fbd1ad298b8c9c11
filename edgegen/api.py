"""The Python API: ``edgegen.load(...)`` returns a Generator that generates or streams text.

The public surface in one place; the work lives in loading.py (load), generator.py (Generator,
TextStream), stopping.py (stop rules), results.py (what a generation returns) and arguments.py
(argument checks).
"""

from __future__ import annotations

from edgegen.errors import EdgegenError
from edgegen.generator import AUTO, Generator, TextStream
from edgegen.loading import DEVICE_PROFILES, check_draft_compatible, load
from edgegen.results import DraftResult, GenerationResult, GenerationStats

__all__ = ["AUTO", "DEVICE_PROFILES", "DraftResult", "EdgegenError", "GenerationResult",
           "GenerationStats", "Generator", "TextStream", "check_draft_compatible", "load"]
