"""Hydra draft heads: small sequentially dependent heads that draft from the target's last hidden state,
trained on the frozen target's features (self-distillation) and run in NumPy (edgegen/heads.py).

Importing this package is torch-free; torch and transformers are imported by the functions that train or pack.
"""

from edgegen.export.hydra.config import HydraConfig
from edgegen.export.hydra.ship import pack_heads, random_heads
from edgegen.export.hydra.train import train_heads

__all__ = ["HydraConfig", "pack_heads", "random_heads", "train_heads"]
