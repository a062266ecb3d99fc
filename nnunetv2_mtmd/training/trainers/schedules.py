"""Shorter schedules of the MTMD trainers, in nnU-Net's naming (``nnUNetTrainer_5epochs`` style).

nnU-Net sets epoch and iteration counts in ``__init__`` with the base signature (extra init args
would break checkpoint bookkeeping), so each schedule is a tiny subclass, written out so that
searching for its name finds it (the :class:`Schedule` mixin applies the counts):

- ``nnUNetTrainerMTMD_1epoch``, ``nnUNetTrainerMTMD_5epochs``: nnU-Net's 250 iterations per epoch;
- ``nnUNetTrainerMTMD_demo``: the CPU budget of ``nnUNetv2_mtmd_demo``;
- ``<scheme>_debug`` for every scheme: 1 epoch of 3 training and 2 validation iterations and a
  20-iteration autoencoder phase, for tests and smoke runs (CPU, seconds);
- ``nnUNetTrainerMTMD_resumetest``: 3 short epochs with a checkpoint every epoch, for the
  crash-and-resume test.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from nnunetv2_mtmd.schemes import MULTI_DOMAIN
from nnunetv2_mtmd.training.trainers.schemes import (
    nnUNetTrainerMTMD,
    nnUNetTrainerMTMD_DSL,
    nnUNetTrainerMTMD_DSL_MJAP,
    nnUNetTrainerMTMD_DSL_MSC,
    nnUNetTrainerMTMD_DSL_MSC_LT,
    nnUNetTrainerMTMD_DSL_seed2,
    nnUNetTrainerMTMD_DSL_SSC,
    nnUNetTrainerMTMD_Shared,
    nnUNetTrainerMTMD_Shared_MJAP,
)


class Schedule:
    """Mixin (first base) that sets nnU-Net's epoch and iteration counts after the trainer's ``__init__``.

    Class attributes: ``schedule_epochs``; ``schedule_iterations`` / ``schedule_val_iterations``
    (None: nnU-Net's 250 / 50); ``schedule_save_every``: nnU-Net's checkpoint_latest interval in epochs
    (None: nnU-Net's 50). The autoencoder phase's length and save interval are the trainer's own
    ``ae_iterations`` / ``ae_save_every`` attributes, set beside these."""

    schedule_epochs: int = 1000
    schedule_iterations: int | None = None
    schedule_val_iterations: int | None = None
    schedule_save_every: int | None = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.schedule_epochs
        if self.schedule_iterations is not None:
            self.num_iterations_per_epoch = self.schedule_iterations
        if self.schedule_val_iterations is not None:
            self.num_val_iterations_per_epoch = self.schedule_val_iterations
        if self.schedule_save_every is not None:
            self.save_every = self.schedule_save_every


class DebugSchedule(Schedule):
    """1 epoch of 3 training and 2 validation iterations and a 20-iteration autoencoder phase (tests,
    smoke runs: seconds on a CPU)."""

    schedule_epochs = 1
    schedule_iterations = 3
    schedule_val_iterations = 2
    ae_iterations = 20


class nnUNetTrainerMTMD_1epoch(Schedule, nnUNetTrainerMTMD):
    """nnUNetTrainerMTMD with 1 epoch (nnU-Net's 250 iterations)."""

    schedule_epochs = 1


class nnUNetTrainerMTMD_5epochs(Schedule, nnUNetTrainerMTMD):
    """nnUNetTrainerMTMD with 5 epochs (nnU-Net's 250 iterations each)."""

    schedule_epochs = 5


@contextmanager
def progress_plot_skipped(logger: Any) -> Iterator[None]:
    """Within the block, ``logger.plot_progress_png`` (nnU-Net's logger) does nothing; the method is
    restored afterwards."""
    logger.plot_progress_png = lambda output_folder: None  # shadows the method on this instance only
    try:
        yield
    finally:
        del logger.plot_progress_png


class nnUNetTrainerMTMD_demo(Schedule, nnUNetTrainerMTMD):
    """The demo's CPU budget (nnUNetv2_mtmd_demo): 40 epochs of 60 iterations (5 validation batches)
    after a 200-iteration autoencoder phase, with 2/3 of every batch forced to show foreground
    (nnU-Net: 1/3), rare structures preferred in those slots.

    Loss and augmentation are nnU-Net's (fixed-orientation augmentation and nnU-Net's Dice + top-10 %
    CE were tried and not adopted: docs/demo.md). Trained on fold ``all``, whose nnU-Net
    "validation" re-predicts every training case (5 minutes on 2 CPU cores for nothing held out): it
    is skipped, the demo evaluates on its held-out test cases instead. Any other fold validates as
    usual. ``progress.png`` is redrawn every ``plot_every`` epochs and after the last one."""

    schedule_epochs = 40
    schedule_iterations = 60
    schedule_val_iterations = 5
    ae_iterations = 200

    #: nnU-Net's default is 0.33. The demo's patch is the whole 64x64 slice, so a forced-foreground
    #: slot picks a slice holding a randomly chosen structure of the case: at 0.66 the small knee bones
    #: (fibular head, patella) are learned in half the iterations (docs/demo.md).
    demo_oversample_foreground_percent = 0.66
    #: ... and a forced slot shows structure ``c`` with weight ``n_c ** -0.5`` (nnU-Net: uniform over the
    #: case's structures): in a knee case the fibular head then gets about 41 % of the forced slots
    #: instead of 25 %, the patella 34 %, the femur and tibia 12-14 % each.
    rare_class_exponent = 0.5
    #: nnU-Net redraws its 3000x5400-pixel progress.png after every epoch: 1.3-1.4 s measured on this
    #: 2-core machine (host slow), 5-10 % of a demo epoch.
    plot_every = 5

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.oversample_foreground_percent = self.demo_oversample_foreground_percent

    def on_epoch_end(self):
        epoch = self.current_epoch
        if (epoch + 1) % self.plot_every == 0 or epoch >= self.num_epochs - 1:
            return super().on_epoch_end()
        with progress_plot_skipped(self.logger):
            return super().on_epoch_end()

    def perform_actual_validation(self, save_probabilities: bool = False):
        if self.fold == "all":
            self.print_to_log_file("Final validation skipped: fold 'all' has no held-out cases (the demo "
                                   "evaluates on its own test cases).")
            return
        return super().perform_actual_validation(save_probabilities)


class nnUNetTrainerMTMD_resumetest(Schedule, nnUNetTrainerMTMD):
    """Crash-and-resume tests (tests/reliability/test_resume.py): 3 epochs of 2 iterations (1 validation
    iteration), a checkpoint every epoch, and an 8-iteration autoencoder phase that saves its progress
    every 2 iterations."""

    schedule_epochs = 3
    schedule_iterations = 2
    schedule_val_iterations = 1
    schedule_save_every = 1
    ae_iterations = 8
    ae_save_every = 2


# ------------------------------------------------------------------ debug schedule of every scheme
# One per multi-domain scheme of the registry (nnunetv2_mtmd/schemes.py; a test checks the set).
class nnUNetTrainerMTMD_Shared_debug(DebugSchedule, nnUNetTrainerMTMD_Shared):
    """nnUNetTrainerMTMD_Shared with the debug schedule."""


class nnUNetTrainerMTMD_Shared_MJAP_debug(DebugSchedule, nnUNetTrainerMTMD_Shared_MJAP):
    """nnUNetTrainerMTMD_Shared_MJAP with the debug schedule."""


class nnUNetTrainerMTMD_DSL_debug(DebugSchedule, nnUNetTrainerMTMD_DSL):
    """nnUNetTrainerMTMD_DSL with the debug schedule."""


class nnUNetTrainerMTMD_DSL_SSC_debug(DebugSchedule, nnUNetTrainerMTMD_DSL_SSC):
    """nnUNetTrainerMTMD_DSL_SSC with the debug schedule."""


class nnUNetTrainerMTMD_DSL_MSC_debug(DebugSchedule, nnUNetTrainerMTMD_DSL_MSC):
    """nnUNetTrainerMTMD_DSL_MSC with the debug schedule."""


class nnUNetTrainerMTMD_DSL_MJAP_debug(DebugSchedule, nnUNetTrainerMTMD_DSL_MJAP):
    """nnUNetTrainerMTMD_DSL_MJAP with the debug schedule."""


class nnUNetTrainerMTMD_DSL_MSC_LT_debug(DebugSchedule, nnUNetTrainerMTMD_DSL_MSC_LT):
    """nnUNetTrainerMTMD_DSL_MSC_LT with the debug schedule."""


class nnUNetTrainerMTMD_DSL_seed2_debug(DebugSchedule, nnUNetTrainerMTMD_DSL_seed2):
    """nnUNetTrainerMTMD_DSL_seed2 with the debug schedule."""


class nnUNetTrainerMTMD_debug(DebugSchedule, nnUNetTrainerMTMD):
    """nnUNetTrainerMTMD (DSL+MSC+MJAP) with the debug schedule."""


DEBUG_TRAINERS: dict[str, type] = {s.name: globals()[s.debug_trainer] for s in MULTI_DOMAIN}

__all__ = ["nnUNetTrainerMTMD_1epoch", "nnUNetTrainerMTMD_5epochs", "nnUNetTrainerMTMD_demo",
           "nnUNetTrainerMTMD_resumetest", *(cls.__name__ for cls in DEBUG_TRAINERS.values())]
