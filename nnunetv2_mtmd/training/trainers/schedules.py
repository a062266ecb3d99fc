"""Shorter schedules of the MTMD trainers, in nnU-Net's naming (``nnUNetTrainer_5epochs`` style).

nnU-Net sets epoch and iteration counts in ``__init__`` with the base signature (extra init args
would break checkpoint bookkeeping), so each schedule is a tiny subclass:

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

from nnunetv2_mtmd.training.trainers.schemes import SCHEMES, nnUNetTrainerMTMD


def with_schedule(base: type, suffix: str, epochs: int, iterations: int | None = None,
                  val_iterations: int | None = None, ae_iterations: int | None = None,
                  save_every: int | None = None, ae_save_every: int | None = None) -> type:
    """Create ``<base name>_<suffix>``: ``base`` with ``epochs`` epochs (and optionally fewer iterations).

    ``save_every``: nnU-Net's checkpoint_latest interval in epochs; ``ae_save_every``: interval of the
    autoencoder phase's partial file in iterations."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        base.__init__(self, plans, configuration, fold, dataset_json, device)
        self.num_epochs = epochs
        if iterations is not None:
            self.num_iterations_per_epoch = iterations
        if val_iterations is not None:
            self.num_val_iterations_per_epoch = val_iterations
        if save_every is not None:
            self.save_every = save_every

    doc = f"{base.__name__} with {epochs} epoch(s)" + (f" of {iterations} iterations." if iterations else ".")
    attrs = {"__init__": __init__, "__module__": __name__, "__doc__": doc}
    if ae_iterations is not None:
        attrs["ae_iterations"] = ae_iterations
    if ae_save_every is not None:
        attrs["ae_save_every"] = ae_save_every
    return type(f"{base.__name__}_{suffix}", (base,), attrs)


nnUNetTrainerMTMD_1epoch = with_schedule(nnUNetTrainerMTMD, "1epoch", 1)
nnUNetTrainerMTMD_5epochs = with_schedule(nnUNetTrainerMTMD, "5epochs", 5)


@contextmanager
def progress_plot_skipped(logger: Any) -> Iterator[None]:
    """Within the block, ``logger.plot_progress_png`` (nnU-Net's logger) does nothing; the method is
    restored afterwards."""
    logger.plot_progress_png = lambda output_folder: None  # shadows the method on this instance only
    try:
        yield
    finally:
        del logger.plot_progress_png


class nnUNetTrainerMTMD_demo(with_schedule(nnUNetTrainerMTMD, "demo", 40, 60, 5, ae_iterations=200)):
    """The demo's CPU budget (nnUNetv2_mtmd_demo): 40 epochs of 60 iterations (5 validation batches)
    after a 200-iteration autoencoder phase, with 2/3 of every batch forced to show foreground
    (nnU-Net: 1/3), rare structures preferred in those slots.

    Loss and augmentation are nnU-Net's (fixed-orientation augmentation and nnU-Net's Dice + top-10 %
    CE were tried and not adopted: docs/demo.md). Trained on fold ``all``, whose nnU-Net
    "validation" re-predicts every training case (5 minutes on 2 CPU cores for nothing held out): it
    is skipped, the demo evaluates on its held-out test cases instead. Any other fold validates as
    usual. ``progress.png`` is redrawn every ``plot_every`` epochs and after the last one."""

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


#: Crash-and-resume tests (tests/reliability/test_resume.py): 3 epochs of 2 iterations, a checkpoint
#: every epoch, and an 8-iteration autoencoder phase that saves its progress every 2 iterations.
nnUNetTrainerMTMD_resumetest = with_schedule(nnUNetTrainerMTMD, "resumetest", 3, 2, 1, ae_iterations=8,
                                             save_every=1, ae_save_every=2)
DEBUG_TRAINERS = {name: with_schedule(cls, "debug", 1, 3, 2, ae_iterations=20) for name, cls in SCHEMES.items()}
globals().update({cls.__name__: cls for cls in DEBUG_TRAINERS.values()})

__all__ = ["nnUNetTrainerMTMD_1epoch", "nnUNetTrainerMTMD_5epochs", "nnUNetTrainerMTMD_demo",
           "nnUNetTrainerMTMD_resumetest", "with_schedule",
           *(cls.__name__ for cls in DEBUG_TRAINERS.values())]
