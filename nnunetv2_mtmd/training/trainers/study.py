"""Budget trainers of the real-data ablation study (``nnUNetv2_mtmd_study``, docs/study.md).

One trainer per scheme, ``<scheme trainer>_study``, plus ``nnUNetTrainer_study``: stock nnU-Net
(the Individual baseline) with the same budget. The budget is equal exposure (docs/design.md, "Budgets
in comparisons"; Boutillon et al. kept batch size, epochs and learning rate fixed across schemes): with
``I`` iterations for a model trained on one domain, a model trained on K domains runs ``K * I``
iterations with the same batch size, so each domain's samples are seen equally often. Both run the
same number of epochs (same poly learning-rate schedule). Checkpoints are written every epoch so a
killed run continues with ``--c`` from at most one epoch back.

nnU-Net instantiates trainers with a fixed signature, so the budget travels in the plans: the study
writes it under ``mtmd_study_budget`` into its plans variant (:mod:`nnunetv2_mtmd.training.budget`),
and nnU-Net copies plans.json into every results folder, which so records the budget. Plans without
the key (study folders written before it existed) fall back to ``$MTMD_STUDY_BUDGET`` and then to the
documented default budget, as before. The trainer logs the budget it uses and where it came from.
With ``MTMD_STUDY_MEASURE=1`` (the study's speed measurement) every ``train_step`` is timed
(wall clock and process CPU time, data loading excluded), the medians are logged at the end of each
epoch as ``Study measure: ...``, and nnU-Net's final validation is skipped.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_mtmd.schemes import SCHEMES
from nnunetv2_mtmd.training.budget import MEASURE_ENV, THREADS_ENV, StudyBudget
from nnunetv2_mtmd.training.orientation import fixed_orientation_config
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


def apply_study_budget(trainer: nnUNetTrainer, num_domains: int, budget: StudyBudget | None = None) -> StudyBudget:
    """Set epochs, iterations per epoch (``K * I / epochs``), validation iterations, checkpoint
    frequency and (MJAP) autoencoder iterations of ``trainer`` from the budget (default: the one its
    plans record, :meth:`StudyBudget.for_training`); returns the budget."""
    source = "given"
    if budget is None:
        budget, source = StudyBudget.for_training(trainer.plans_manager.plans,
                                                  where=f"plans {trainer.plans_manager.plans_name!r}")
    budget = budget.validate()
    trainer.num_epochs = budget.epochs
    trainer.num_iterations_per_epoch = budget.iterations_per_epoch(num_domains)
    trainer.num_val_iterations_per_epoch = budget.val_iterations_per_epoch(num_domains)
    trainer.save_every = 1
    if hasattr(trainer, "ae_iterations"):
        trainer.ae_iterations = budget.ae_iterations
    trainer.print_to_log_file(
        f"Study budget ({num_domains} domain(s)): {budget.epochs} epochs x {trainer.num_iterations_per_epoch} "
        f"iterations = {budget.model_iterations(num_domains)} iterations, {trainer.num_val_iterations_per_epoch} "
        f"validation iterations per epoch, checkpoint every epoch"
        + (f", autoencoder phase {budget.ae_iterations} iterations" if hasattr(trainer, "ae_iterations") else "")
        + f". Budget from {source}: {budget.to_json()}"
    )
    return budget


def study_torch_threads(environ: dict[str, str] | None = None) -> int | None:
    """The thread count in ``MTMD_TORCH_THREADS`` (None when unset); a clear error when it is not a
    positive integer."""
    raw = (os.environ if environ is None else environ).get(THREADS_ENV)
    if raw is None or raw == "":
        return None
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{THREADS_ENV} must be a positive integer (torch CPU threads), found {raw!r}; unset it "
                         "to keep nnU-Net's choice.")
    return n


class _StudyMixin:
    """Applies the study budget after the base trainer's ``__init__``; K = 1 for stock nnU-Net."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        threads = study_torch_threads()
        if threads is not None and self.device.type == "cpu":
            # nnUNetv2_train -device cpu set every core; the study runs --jobs trainings side by side
            torch.set_num_threads(threads)
            self.print_to_log_file(f"{THREADS_ENV}={threads}: torch uses {threads} CPU thread(s)")
        spec = getattr(self, "domain_spec", None)
        self.study_budget = apply_study_budget(self, spec.num_domains if spec is not None else 1)
        self._study_measuring = os.environ.get(MEASURE_ENV) == "1"
        self._study_step_times: list[tuple[float, float]] = []

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        out = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        if not self.study_budget.fixed_orientation:
            return out
        return fixed_orientation_config(self, out[1])

    def train_step(self, batch: dict) -> dict:
        if not self._study_measuring:
            return super().train_step(batch)
        wall, cpu = time.perf_counter(), time.process_time()
        out = super().train_step(batch)
        self._study_step_times.append((time.perf_counter() - wall, time.process_time() - cpu))
        return out

    def on_epoch_end(self):
        if self._study_measuring and self._study_step_times:
            wall, cpu = np.median(np.asarray(self._study_step_times), axis=0)
            self.print_to_log_file(
                f"Study measure: epoch {self.current_epoch}: train_step wall median {wall:.4f} s, process CPU "
                f"median {cpu:.4f} s over {len(self._study_step_times)} iterations; load average "
                f"{os.getloadavg()[0]:.2f}")
            self._study_step_times = []
        super().on_epoch_end()

    def perform_actual_validation(self, save_probabilities: bool = False):
        if self._study_measuring:
            self.print_to_log_file(f"{MEASURE_ENV}=1 (speed measurement): final validation skipped.")
            return
        return super().perform_actual_validation(save_probabilities)


# One per scheme of the registry (nnunetv2_mtmd/schemes.py; a test checks the set), written out so that
# searching for a trainer name finds its definition.
class nnUNetTrainer_study(_StudyMixin, nnUNetTrainer):
    """Stock nnU-Net (the Individual baseline) with the study budget; see this module's docstring."""


class nnUNetTrainerMTMD_Shared_study(_StudyMixin, nnUNetTrainerMTMD_Shared):
    """nnUNetTrainerMTMD_Shared with the study budget."""


class nnUNetTrainerMTMD_Shared_MJAP_study(_StudyMixin, nnUNetTrainerMTMD_Shared_MJAP):
    """nnUNetTrainerMTMD_Shared_MJAP with the study budget."""


class nnUNetTrainerMTMD_DSL_study(_StudyMixin, nnUNetTrainerMTMD_DSL):
    """nnUNetTrainerMTMD_DSL with the study budget."""


class nnUNetTrainerMTMD_DSL_SSC_study(_StudyMixin, nnUNetTrainerMTMD_DSL_SSC):
    """nnUNetTrainerMTMD_DSL_SSC with the study budget."""


class nnUNetTrainerMTMD_DSL_MSC_study(_StudyMixin, nnUNetTrainerMTMD_DSL_MSC):
    """nnUNetTrainerMTMD_DSL_MSC with the study budget."""


class nnUNetTrainerMTMD_DSL_MJAP_study(_StudyMixin, nnUNetTrainerMTMD_DSL_MJAP):
    """nnUNetTrainerMTMD_DSL_MJAP with the study budget."""


class nnUNetTrainerMTMD_DSL_MSC_LT_study(_StudyMixin, nnUNetTrainerMTMD_DSL_MSC_LT):
    """nnUNetTrainerMTMD_DSL_MSC_LT with the study budget."""


class nnUNetTrainerMTMD_DSL_seed2_study(_StudyMixin, nnUNetTrainerMTMD_DSL_seed2):
    """nnUNetTrainerMTMD_DSL_seed2 with the study budget."""


class nnUNetTrainerMTMD_study(_StudyMixin, nnUNetTrainerMTMD):
    """nnUNetTrainerMTMD (DSL+MSC+MJAP) with the study budget."""


#: Scheme id -> study trainer class, for every scheme of the registry.
STUDY_TRAINERS: dict[str, type] = {s.name: globals()[s.study_trainer] for s in SCHEMES}

__all__ = [cls.__name__ for cls in STUDY_TRAINERS.values()]
