"""The study budget (identical for every scheme) and the coarse 2D plans variant it implies."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from nnunetv2_mtmd.errors import InputDataError
from nnunetv2_mtmd.study.constants import BUDGET_ENV, INDIVIDUAL, PLANS_NAME, SCHEME_TRAINERS


# --------------------------------------------------------------------------------------- budget
@dataclass(frozen=True)
class StudyBudget:
    """The compute budget, identical for every scheme (equal exposure, DESIGN.md "Budgets").

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


def budget_rows(budget: StudyBudget, schemes: Sequence[str], num_domains: int) -> list[dict[str, Any]]:
    """One row per scheme: trainer, models per fold, iterations per model and per fold, samples per domain.

    Every scheme gets the same iterations per fold (``K * I``) and the same samples per domain
    (``I * B``): equal exposure and equal compute."""
    rows = []
    for s in schemes:
        k_model = 1 if s == INDIVIDUAL else num_domains
        n_models = num_domains if s == INDIVIDUAL else 1
        rows.append({
            "scheme": s,
            "trainer": SCHEME_TRAINERS[s],
            "models_per_fold": n_models,
            "iterations_per_model": budget.model_iterations(k_model),
            "iterations_per_epoch": budget.iterations_per_epoch(k_model),
            "iterations_per_fold": n_models * budget.model_iterations(k_model),
            "samples_per_domain": budget.samples_per_domain(k_model),
        })
    return rows


def estimate_hours(budget: StudyBudget, seconds_per_iteration: Mapping[str, float], num_domains: int,
                   n_folds: int, ae_seconds: Mapping[str, float] | None = None) -> dict[str, float]:
    """Expected CPU hours per scheme over ``n_folds`` folds (training iterations only, plus the MJAP
    autoencoder phase given in ``ae_seconds`` per model), and the total under key ``"total"``.

    ``seconds_per_iteration[scheme]`` is the time of one training iteration of that scheme (all
    schemes use the same batch size, so Individual's value applies to each of its K models)."""
    out: dict[str, float] = {}
    rows = {r["scheme"]: r for r in budget_rows(budget, list(seconds_per_iteration), num_domains)}
    for s, sec in seconds_per_iteration.items():
        secs = rows[s]["iterations_per_fold"] * sec + (ae_seconds or {}).get(s, 0.0) * rows[s]["models_per_fold"]
        out[s] = n_folds * secs / 3600.0
    out["total"] = sum(out.values())
    return out


# ---------------------------------------------------------------------------------------- plans
def _fit_length(values: Sequence[int], n: int) -> list[int]:
    values = list(values)
    return (values + [values[-1]] * n)[:n]


def coarse_2d_plans(plans: Mapping[str, Any], budget: StudyBudget, plans_name: str = PLANS_NAME) -> dict[str, Any]:
    """A plans variant whose only configuration is ``2d`` with the budget's in-plane spacing, square
    patch, batch size and maximum number of features, the network topology re-derived for that
    spacing and patch with nnU-Net's own rule (``get_pool_and_conv_props``, minimum feature map edge
    4, as the planner does). Everything else (normalization, resampling, network class and the
    multi-domain kwargs) stays as planned. ``plans`` is not modified.

    nnU-Net preprocesses and trains according to the plans, so writing this variant before
    ``nnUNetv2_preprocess -plans_name`` is the documented way to plan coarser."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    if "2d" not in plans.get("configurations", {}):
        raise InputDataError(f"The plans {plans.get('plans_name')!r} have no '2d' configuration to coarsen.")
    out = json.loads(json.dumps(plans))
    conf = out["configurations"]["2d"]
    spacing = [float(budget.spacing_mm)] * 2
    patch = [int(budget.patch_size)] * 2
    _, strides, kernels, new_patch, _ = get_pool_and_conv_props(spacing, patch, 4, 999999)
    new_patch = [int(p) for p in new_patch]
    if new_patch != patch:
        raise InputDataError(
            f"--patch-size {budget.patch_size} is not divisible by 2**(number of poolings) that nnU-Net chooses "
            f"for it ({new_patch}); use a multiple of 16, e.g. 48, 64 or 80."
        )
    n = len(strides)
    ak = conf["architecture"]["arch_kwargs"]
    base = int(budget.base_features)
    old_spacing = conf["spacing"]
    conf["median_image_size_in_voxels"] = [
        round(float(m) * float(s) / budget.spacing_mm, 1) for m, s in zip(conf["median_image_size_in_voxels"],
                                                                          old_spacing)
    ]
    conf.update({
        "data_identifier": f"{plans_name}_2d",
        "spacing": spacing,
        "patch_size": patch,
        "batch_size": int(budget.batch_size),
    })
    ak.update({
        "n_stages": n,
        "features_per_stage": [min(int(budget.max_features), base * 2 ** i) for i in range(n)],
        "kernel_sizes": [[int(k) for k in ks] for ks in kernels],
        "strides": [[int(s) for s in st] for st in strides],
        "n_conv_per_stage": _fit_length(ak["n_conv_per_stage"], n),
        "n_conv_per_stage_decoder": _fit_length(ak["n_conv_per_stage_decoder"], n - 1),
    })
    out["plans_name"] = plans_name
    out["configurations"] = {"2d": conf}
    return out


def describe_2d(plans: Mapping[str, Any]) -> dict[str, Any]:
    """Spacing, patch, batch size, stages and features of a plans file's ``2d`` configuration."""
    c = plans["configurations"]["2d"]
    ak = c["architecture"]["arch_kwargs"]
    return {"spacing": c["spacing"], "patch_size": c["patch_size"], "batch_size": c["batch_size"],
            "n_stages": ak["n_stages"], "features_per_stage": list(ak["features_per_stage"]),
            "network": c["architecture"]["network_class_name"].rsplit(".", 1)[-1]}
