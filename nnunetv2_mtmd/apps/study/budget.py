"""The study budget (identical for every scheme) and the coarse 2D plans variant it implies."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from nnunetv2_mtmd.apps.study.constants import INDIVIDUAL, PLANS_NAME, SCHEME_TRAINERS
from nnunetv2_mtmd.errors import InputDataError
from nnunetv2_mtmd.training.budget import StudyBudget


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
    ``nnUNetv2_preprocess -plans_name`` is the documented way to plan coarser. The budget itself is
    recorded under ``mtmd_study_budget`` (:meth:`StudyBudget.to_plans`): the study trainers read it
    from there, and every results folder's plans.json records it."""
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
    return budget.to_plans(out)


def describe_2d(plans: Mapping[str, Any]) -> dict[str, Any]:
    """Spacing, patch, batch size, stages and features of a plans file's ``2d`` configuration."""
    c = plans["configurations"]["2d"]
    ak = c["architecture"]["arch_kwargs"]
    return {"spacing": c["spacing"], "patch_size": c["patch_size"], "batch_size": c["batch_size"],
            "n_stages": ak["n_stages"], "features_per_stage": list(ak["features_per_stage"]),
            "network": c["architecture"]["network_class_name"].rsplit(".", 1)[-1]}
