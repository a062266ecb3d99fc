"""The study's plans files: the coarse variant ``nnUNetPlans_study`` that records the budget, and the
measure variant with the shorter budget of ``--stage measure``.

The budget reaches the study trainers through the plans (key ``mtmd_study_budget``,
:meth:`StudyBudget.to_plans`), not through the environment: nnU-Net copies plans.json into every
results folder, so each model records the budget it was trained with (docs/design.md,
"Configuration lives in plans")."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nnunetv2_mtmd.apps.study.budget import coarse_2d_plans, describe_2d
from nnunetv2_mtmd.apps.study.constants import MEASURE_PLANS_NAME, PLANS_BUDGET_KEY, PLANS_NAME, StudyError
from nnunetv2_mtmd.io import atomic_save_json, load_json
from nnunetv2_mtmd.training.budget import StudyBudget

logger = logging.getLogger(__name__)


def plans_file(preprocessed: Path, dataset: str, plans_name: str = PLANS_NAME) -> Path:
    """``nnUNet_preprocessed/<dataset>/<plans_name>.json``."""
    return Path(preprocessed) / dataset / f"{plans_name}.json"


def write_study_plans(preprocessed: Path, datasets: Sequence[str], budget: StudyBudget) -> dict[str, Any]:
    """Write ``nnUNetPlans_study.json`` next to every dataset's ``nnUNetPlans.json`` (:func:`coarse_2d_plans`,
    budget recorded); returns ``{dataset: {"planned": ..., "study": ...}}`` (:func:`describe_2d`)."""
    planned = {}
    for name in datasets:
        src = load_json(plans_file(preprocessed, name, "nnUNetPlans"))
        variant = coarse_2d_plans(src, budget)
        atomic_save_json(variant, plans_file(preprocessed, name))
        planned[name] = {"planned": describe_2d(src), "study": describe_2d(variant)}
        logger.info("  %s: planned %s -> study %s", name, planned[name]["planned"], planned[name]["study"])
    return planned


def record_budget(preprocessed: Path, datasets: Sequence[str], budget: StudyBudget,
                  note: Callable[[str], None] | None = None) -> list[Path]:
    """Make every existing ``nnUNetPlans_study.json`` of ``datasets`` record ``budget``; returns the files
    that had to be updated.

    Work folders prepared before the plans carried the budget have plans without the key; it is added
    (atomically) with the budget of ``state.json``, the values their models were trained with, so they
    continue with ``--c`` / ``--val``. A file missing altogether is left to ``nnUNetv2_train`` to report
    (``--stage prepare`` writes it). A recorded budget other than ``budget`` raises :class:`StudyError`:
    models of two budgets must not be mixed."""
    updated = []
    for name in datasets:
        path = plans_file(preprocessed, name)
        if not path.is_file():
            continue
        plans = load_json(path)
        recorded = StudyBudget.from_plans(plans, str(path))
        if recorded == budget:
            continue
        if recorded is not None:
            raise StudyError(f"{path} records the budget {recorded.to_json()}, but this study's budget (state.json) "
                             f"is {budget.to_json()}; the work folder is inconsistent. Use a new --workdir.")
        if note is not None:
            note(f"record the study budget in {path} (key {PLANS_BUDGET_KEY}; plans written before the key existed)")
        atomic_save_json(budget.to_plans(plans), path)
        updated.append(path)
    return updated


def write_measure_plans(preprocessed: Path, datasets: Sequence[str], budget: StudyBudget,
                        plans_name: str = MEASURE_PLANS_NAME) -> list[Path]:
    """Write the measure variant ``plans_name`` next to each dataset's ``nnUNetPlans_study.json``: the
    same plans (same ``data_identifier``, so the preprocessed data is reused) recording the measure
    ``budget``, so that the study's own plans keep the study budget. Returns the files written."""
    out = []
    for name in datasets:
        plans = load_json(plans_file(preprocessed, name))
        # nnU-Net names the results folder after the plans_name inside the file, not after -p
        plans["plans_name"] = plans_name
        path = plans_file(preprocessed, name, plans_name)
        atomic_save_json(budget.to_plans(plans), path)
        out.append(path)
    return out
