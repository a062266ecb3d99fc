"""The trainer classes nnU-Net finds by name (``nnUNetv2_train -tr <name>``, ``nnUNetv2_predict``).

The plugin installs a re-export of this module into ``nnunetv2/training/nnUNetTrainer/``; see
docs/registration.md.
"""

from nnunetv2_mtmd.training.trainers.base import nnUNetTrainerMTMD_DSL
from nnunetv2_mtmd.training.trainers.schedules import (
    nnUNetTrainerMTMD_1epoch,
    nnUNetTrainerMTMD_5epochs,
    nnUNetTrainerMTMD_debug,
    nnUNetTrainerMTMD_DSL_debug,
)
from nnunetv2_mtmd.training.trainers.schemes import nnUNetTrainerMTMD

__all__ = [
    "nnUNetTrainerMTMD",
    "nnUNetTrainerMTMD_DSL",
    "nnUNetTrainerMTMD_1epoch",
    "nnUNetTrainerMTMD_5epochs",
    "nnUNetTrainerMTMD_debug",
    "nnUNetTrainerMTMD_DSL_debug",
]
