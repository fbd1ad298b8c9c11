"""Lexical Unit Decoding (LREC-COLING 2024) fine-tuning: unit marking, placeholder training, shipping, export.

Importing this package is torch-free; torch and transformers are imported by the functions that train,
pack, merge or export.
"""

from edgegen.export.lud.config import LudConfig
from edgegen.export.lud.ship import (
    export_default_lud,
    export_lud,
    merge_lud,
    pack_lud,
    read_packed_lora,
    read_packed_lud,
)
from edgegen.export.lud.train import train_lud
from edgegen.export.lud.units import build_blocks, mark_units, token_probs

__all__ = ["LudConfig", "build_blocks", "export_default_lud", "export_lud", "mark_units", "merge_lud", "pack_lud",
           "read_packed_lora", "read_packed_lud", "token_probs", "train_lud"]
