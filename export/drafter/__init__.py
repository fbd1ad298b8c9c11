"""FastDraft drafter training: a scaled-down copy of the target, pre-trained then aligned on the target's
own generations, shipped as its non-shared weights and exported like any target.

Importing this package is torch-free; torch and transformers are imported by the functions that train,
pack or export.
"""

from edgegen.export.drafter.config import TrainConfig
from edgegen.export.drafter.pack import export_trained, pack_drafter
from edgegen.export.drafter.ship import check_drafter_compat, export_drafter, unpack_drafter
from edgegen.export.drafter.train import train_drafter

__all__ = ["TrainConfig", "check_drafter_compat", "export_drafter", "export_trained", "pack_drafter", "train_drafter",
           "unpack_drafter"]
