"""The training budget of the real-data study (equal exposure), as the study trainers read it.

The study (``nnUNetv2_mtmd_study``, docs/study.md) writes the budget into the plans variant it trains
with, under the top-level key ``mtmd_study_budget`` (:data:`PLANS_BUDGET_KEY`); nnU-Net copies
plans.json into every results folder, so each model records the budget it was trained with. Plans
without the key (study folders written before the key existed) fall back to the JSON in
``$MTMD_STUDY_BUDGET`` and then to the defaults, as the trainers did before
(docs/design.md, "Configuration lives in plans").

The budget is a library type (the trainers need it); the study app only chooses its values.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from nnunetv2_mtmd.errors import InputDataError

#: Top-level plans.json key holding the budget (a JSON object of :class:`StudyBudget` fields).
PLANS_BUDGET_KEY = "mtmd_study_budget"
#: Legacy: the budget as JSON in the environment, read only when the plans lack :data:`PLANS_BUDGET_KEY`.
BUDGET_ENV = "MTMD_STUDY_BUDGET"
#: Set to "1" by the study's ``--stage measure``: the study trainers time every step and skip nnU-Net's
#: final validation.
MEASURE_ENV = "MTMD_STUDY_MEASURE"
#: Torch CPU threads of a study training (nnU-Net's ``-device cpu`` sets all cores, which oversubscribes
#: the CPU when ``--jobs`` trainings run at once).
THREADS_ENV = "MTMD_TORCH_THREADS"


@dataclass(frozen=True)
class StudyBudget:
    """The compute budget, identical for every scheme (equal exposure, docs/design.md, "Budgets in comparisons").

    ``iterations`` (``I``) is the number of training iterations of ONE Individual model; a model
    trained on K domains gets ``K * I`` (same batch size, ``batch_size / K`` samples per domain), so
    it sees each domain's samples exactly as often as that domain's Individual model and costs as
    much as the K Individual models together. Both run ``epochs`` epochs (same poly learning-rate
    schedule), with ``val_iterations`` (times K) pseudo-Dice batches per epoch. ``ae_iterations``:
    MJAP's label-autoencoder phase. The plans part (``spacing_mm``, ``patch_size``, ``batch_size``,
    ``max_features``, ``base_features``: features of the first stage, doubled per stage up to
    ``max_features``) is written into every dataset's ``2d`` configuration by :func:`coarse_2d_plans`.
    ``fixed_orientation``: every scheme (the Individual baseline too) trains without mirroring and
    with rotations within +-30 degrees instead of nnU-Net's 2D mirroring and +-180 degrees
    (:mod:`nnunetv2_mtmd.training.orientation`; why: docs/study.md).
    """

    # The defaults are the budget of the run reported in docs/results.md; why each value: docs/study.md.
    iterations: int = 3000
    epochs: int = 30
    val_iterations: int = 2
    ae_iterations: int = 300
    batch_size: int = 12
    spacing_mm: float = 4.0
    patch_size: int = 64
    max_features: int = 256
    base_features: int = 16
    fixed_orientation: bool = True

    def validate(self, num_domains: int | None = None) -> StudyBudget:
        """Raise :class:`InputDataError` for unusable values; returns ``self``."""
        if not isinstance(self.fixed_orientation, bool):
            raise InputDataError(
                f"Budget value fixed_orientation must be true or false, found {self.fixed_orientation!r}.")
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "fixed_orientation":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InputDataError(f"Budget value {f.name} must be a number, found {v!r}.")
        ints = {"iterations": 1, "epochs": 1, "val_iterations": 1, "ae_iterations": 0, "batch_size": 1,
                "patch_size": 8, "max_features": 1, "base_features": 1}
        for name, low in ints.items():
            v = getattr(self, name)
            if int(v) != v or v < low:
                raise InputDataError(f"Budget value {name} must be an integer >= {low}, found {v!r}.")
        if self.spacing_mm <= 0:
            raise InputDataError(f"--spacing must be > 0 mm, found {self.spacing_mm}.")
        if self.iterations % self.epochs:
            raise InputDataError(
                f"--iterations ({self.iterations}) must be a multiple of --epochs ({self.epochs}) so that every "
                "epoch has the same number of iterations (e.g. --iterations 1000 --epochs 20)."
            )
        if num_domains is not None and self.batch_size % num_domains:
            raise InputDataError(
                f"--batch-size {self.batch_size} is not a multiple of the {num_domains} domains: multi-domain "
                f"batches hold batch_size / K samples of each domain. Use e.g. {num_domains * 4}."
            )
        return self

    def iterations_per_epoch(self, num_domains: int = 1) -> int:
        """Training iterations per epoch of a model trained on ``num_domains`` domains: ``K * I / epochs``."""
        return num_domains * self.iterations // self.epochs

    def val_iterations_per_epoch(self, num_domains: int = 1) -> int:
        return num_domains * self.val_iterations

    def model_iterations(self, num_domains: int = 1) -> int:
        """Total training iterations of one model trained on ``num_domains`` domains (``K * I``)."""
        return num_domains * self.iterations

    def samples_per_domain(self, num_domains: int = 1) -> int:
        """Training samples each domain contributes to one model: ``K * I * B / K = I * B``, whatever K."""
        return self.model_iterations(num_domains) * self.batch_size // num_domains

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str = "budget") -> StudyBudget:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputDataError(f"{where}: unknown budget keys {unknown}; known: {sorted(known)}.")
        return cls(**dict(d))

    @classmethod
    def from_record(cls, d: Mapping[str, Any]) -> dict[str, Any]:
        """A budget recorded in ``state.json`` as keyword values: records written before
        ``fixed_orientation`` existed were trained with nnU-Net's augmentation, whatever today's default."""
        return {"fixed_orientation": False, **dict(d)} if d else {}

    def env(self) -> dict[str, str]:
        """The environment entry that hands this budget to the study trainers."""
        return {BUDGET_ENV: json.dumps(self.to_json(), sort_keys=True)}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StudyBudget:
        """The budget in ``$MTMD_STUDY_BUDGET`` (JSON), or the defaults when it is unset."""
        environ = os.environ if environ is None else environ
        text = environ.get(BUDGET_ENV)
        if not text:
            return cls()
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputDataError(f"${BUDGET_ENV} is not valid JSON ({e}): {text!r}.") from e
        if not isinstance(d, dict):
            raise InputDataError(f"${BUDGET_ENV} must be a JSON object, found {text!r}.")
        return cls.from_json(d, f"${BUDGET_ENV}").validate()

    def to_plans(self, plans: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of ``plans`` recording this budget under :data:`PLANS_BUDGET_KEY`."""
        out = json.loads(json.dumps(plans))
        out[PLANS_BUDGET_KEY] = self.to_json()
        return out

    @classmethod
    def from_plans(cls, plans: Mapping[str, Any], where: str = "plans") -> StudyBudget | None:
        """The budget recorded in ``plans`` (validated), or None when the plans hold none."""
        d = plans.get(PLANS_BUDGET_KEY)
        if d is None:
            return None
        if not isinstance(d, Mapping):
            raise InputDataError(f"{where}['{PLANS_BUDGET_KEY}'] must be a JSON object of budget values, found "
                                 f"{type(d).__name__}; rewrite the plans with nnUNetv2_mtmd_study --stage prepare.")
        return cls.from_json(d, f"{where}['{PLANS_BUDGET_KEY}']").validate()

    @classmethod
    def for_training(cls, plans: Mapping[str, Any], environ: Mapping[str, str] | None = None,
                     where: str = "plans") -> tuple[StudyBudget, str]:
        """The budget a study trainer uses and where it came from: the plans' key, else (older study
        folders) ``$MTMD_STUDY_BUDGET``, else the defaults."""
        recorded = cls.from_plans(plans, where)
        if recorded is not None:
            return recorded, f"{where}['{PLANS_BUDGET_KEY}']"
        environ = os.environ if environ is None else environ
        if environ.get(BUDGET_ENV):
            return cls.from_env(environ), f"${BUDGET_ENV} (plans without '{PLANS_BUDGET_KEY}')"
        return cls(), "defaults (plans without a recorded budget)"
