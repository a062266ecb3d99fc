"""The paper's training schemes as trainers; the class name is the scheme (nnU-Net's experiment id).

| trainer | scheme (Boutillon et al. 2022) |
|---|---|
| ``nnUNetTrainerMTMD_DSL`` | shared convolutions, domain-specific batch norm and heads |
| ``nnUNetTrainerMTMD`` | DSL + MSC + MJAP |
"""

from __future__ import annotations

from nnunetv2_mtmd.training.trainers.base import nnUNetTrainerMTMD_DSL


class nnUNetTrainerMTMD(nnUNetTrainerMTMD_DSL):
    """The full method. (Regularizers are wired in by the regularizers issue; until then = DSL.)"""


__all__ = ["nnUNetTrainerMTMD_DSL", "nnUNetTrainerMTMD"]
