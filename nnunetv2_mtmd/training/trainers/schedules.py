"""Shorter schedules of the MTMD trainers, in nnU-Net's naming (``nnUNetTrainer_5epochs`` style).

nnU-Net sets epoch and iteration counts in ``__init__`` with the base signature (extra init args
would break checkpoint bookkeeping), so each schedule is a tiny subclass. ``_debug`` is meant for
tests and smoke runs: 1 epoch of 3 training and 2 validation iterations.
"""

from __future__ import annotations

import torch

from nnunetv2_mtmd.training.trainers.base import nnUNetTrainerMTMD_DSL
from nnunetv2_mtmd.training.trainers.schemes import nnUNetTrainerMTMD


def with_schedule(base: type, suffix: str, epochs: int, iterations: int | None = None,
                  val_iterations: int | None = None) -> type:
    """Create ``<base name>_<suffix>``: ``base`` with ``epochs`` epochs (and optionally fewer iterations)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        base.__init__(self, plans, configuration, fold, dataset_json, device)
        self.num_epochs = epochs
        if iterations is not None:
            self.num_iterations_per_epoch = iterations
        if val_iterations is not None:
            self.num_val_iterations_per_epoch = val_iterations

    name = f"{base.__name__}_{suffix}"
    doc = f"{base.__name__} with {epochs} epoch(s)" + (f" of {iterations} iterations" if iterations else "") + "."
    return type(name, (base,), {"__init__": __init__, "__doc__": doc, "__module__": __name__})


nnUNetTrainerMTMD_1epoch = with_schedule(nnUNetTrainerMTMD, "1epoch", 1)
nnUNetTrainerMTMD_5epochs = with_schedule(nnUNetTrainerMTMD, "5epochs", 5)
nnUNetTrainerMTMD_debug = with_schedule(nnUNetTrainerMTMD, "debug", 1, 3, 2)
nnUNetTrainerMTMD_DSL_debug = with_schedule(nnUNetTrainerMTMD_DSL, "debug", 1, 3, 2)

__all__ = ["nnUNetTrainerMTMD_1epoch", "nnUNetTrainerMTMD_5epochs", "nnUNetTrainerMTMD_debug",
           "nnUNetTrainerMTMD_DSL_debug", "with_schedule"]
