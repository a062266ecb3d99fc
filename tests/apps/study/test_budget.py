"""nnunetv2_mtmd/study/budget.py: budget arithmetic, the coarse 2D plans, and the study trainers applying it."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from nnunetv2_mtmd.apps.study import (
    BUDGET_ENV,
    SCHEME_TRAINERS,
    StudyBudget,
    budget_rows,
    coarse_2d_plans,
    estimate_hours,
)
from nnunetv2_mtmd.errors import InputDataError


@pytest.mark.parametrize(
    "iterations, epochs, k, per_epoch, total, samples",
    [
        (1000, 20, 1, 50, 1000, 12000),  # Individual: I / E per epoch, B * I samples of its domain
        (1000, 20, 3, 150, 3000, 12000),  # 3 domains: K * I iterations, still B * I samples per domain
        (600, 10, 2, 120, 1200, 7200),
        (2, 1, 3, 6, 6, 24),
    ],
)
def test_budget_equal_exposure(iterations, epochs, k, per_epoch, total, samples):
    b = StudyBudget(iterations=iterations, epochs=epochs, batch_size=12, val_iterations=4).validate(3)
    assert b.iterations_per_epoch(k) == per_epoch
    assert b.model_iterations(k) == total
    assert b.samples_per_domain(k) == samples
    assert b.val_iterations_per_epoch(k) == 4 * k


def test_budget_rows_equal_compute_per_fold():
    rows = {r["scheme"]: r for r in budget_rows(StudyBudget(iterations=1000, epochs=20), ["Individual", "DSL"], 3)}
    assert rows["Individual"] == {"scheme": "Individual", "trainer": "nnUNetTrainer_study", "models_per_fold": 3,
                                  "iterations_per_model": 1000, "iterations_per_epoch": 50,
                                  "iterations_per_fold": 3000, "samples_per_domain": 12000}
    assert rows["DSL"]["models_per_fold"] == 1
    assert rows["DSL"]["iterations_per_model"] == rows["DSL"]["iterations_per_fold"] == 3000
    assert rows["DSL"]["samples_per_domain"] == 12000


def test_estimate_hours_hand_computed():
    b = StudyBudget(iterations=1000, epochs=20)
    h = estimate_hours(b, {"Individual": 0.5, "DSL_MJAP": 0.6}, num_domains=3, n_folds=3,
                       ae_seconds={"DSL_MJAP": 120.0})
    # Individual: 3 folds * 3 models * 1000 it * 0.5 s = 4500 s; DSL_MJAP: 3 * (3000 * 0.6 + 120) = 5760 s
    assert h["Individual"] == pytest.approx(1.25)
    assert h["DSL_MJAP"] == pytest.approx(1.6)
    assert h["total"] == pytest.approx(2.85)


@pytest.mark.parametrize(
    "kwargs, k, message",
    [
        ({"iterations": 1000, "epochs": 30}, None, "multiple of --epochs"),
        ({"batch_size": 10}, 3, "not a multiple of the 3 domains"),
        ({"patch_size": 4}, None, "patch_size must be an integer >= 8"),
        ({"spacing_mm": 0.0}, None, "--spacing must be > 0"),
        ({"iterations": 2.5}, None, "iterations must be an integer"),
        ({"fixed_orientation": 1}, None, "fixed_orientation must be true or false"),
    ],
)
def test_budget_validation(kwargs, k, message):
    with pytest.raises(InputDataError, match=message):
        StudyBudget(**kwargs).validate(k)


def test_budget_environment_roundtrip():
    b = StudyBudget(iterations=40, epochs=4, ae_iterations=7)
    assert StudyBudget.from_env(b.env()) == b
    fixed = StudyBudget(fixed_orientation=True)
    assert StudyBudget.from_env(fixed.env()).fixed_orientation is True
    # a budget recorded before the field existed reads as nnU-Net's augmentation
    old_record = StudyBudget.from_record({"iterations": 40, "epochs": 4})
    assert StudyBudget.from_json(old_record).fixed_orientation is False
    assert StudyBudget.from_json({"iterations": 40, "epochs": 4}).fixed_orientation is True  # today's default
    assert StudyBudget.from_record({}) == {}
    assert StudyBudget.from_env({}) == StudyBudget()
    with pytest.raises(InputDataError, match="not valid JSON"):
        StudyBudget.from_env({BUDGET_ENV: "{iterations"})
    with pytest.raises(InputDataError, match="unknown budget keys"):
        StudyBudget.from_env({BUDGET_ENV: json.dumps({"iters": 3})})


def _plans() -> dict:
    ak = {"n_stages": 6, "features_per_stage": [32, 64, 128, 256, 512, 512], "kernel_sizes": [[3, 3]] * 6,
          "strides": [[1, 1]] + [[2, 2]] * 5, "n_conv_per_stage": [2] * 6, "n_conv_per_stage_decoder": [2] * 5,
          "norm_op": "x.DomainSpecificBatchNorm2d", "domain_label_ids": [[1], [2]]}
    conf = {"data_identifier": "nnUNetPlans_2d", "batch_size": 26, "patch_size": [192, 192], "spacing": [2.0, 2.0],
            "median_image_size_in_voxels": [175.0, 175.0],
            "architecture": {"network_class_name": "a.B", "arch_kwargs": ak}}
    return {"plans_name": "nnUNetPlans", "configurations": {"2d": conf, "3d_fullres": {"x": 1}}}


@pytest.mark.parametrize(
    "patch, base, max_features, n_stages, features",
    [
        (64, 32, 512, 5, [32, 64, 128, 256, 512]),  # pools at 64, 32, 16, 8 (feature maps stay >= 4)
        (48, 32, 512, 4, [32, 64, 128, 256]),  # pools at 48, 24, 12; 6 < 8 stops
        (64, 32, 128, 5, [32, 64, 128, 128, 128]),
        (64, 16, 128, 5, [16, 32, 64, 128, 128]),
        (16, 32, 32, 3, [32, 32, 32]),
    ],
)
def test_coarse_2d_plans(patch, base, max_features, n_stages, features):
    src = _plans()
    b = StudyBudget(spacing_mm=4.0, patch_size=patch, batch_size=12, max_features=max_features, base_features=base)
    out = coarse_2d_plans(src, b)
    assert src["configurations"]["2d"]["patch_size"] == [192, 192]  # input untouched
    assert list(out["configurations"]) == ["2d"] and out["plans_name"] == "nnUNetPlans_study"
    c = out["configurations"]["2d"]
    assert c["spacing"] == [4.0, 4.0] and c["patch_size"] == [patch, patch] and c["batch_size"] == 12
    assert c["data_identifier"] == "nnUNetPlans_study_2d"
    assert c["median_image_size_in_voxels"] == [87.5, 87.5]  # 175 voxels of 2 mm = 87.5 of 4 mm
    ak = c["architecture"]["arch_kwargs"]
    assert ak["n_stages"] == n_stages and ak["features_per_stage"] == features
    assert ak["strides"] == [[1, 1]] + [[2, 2]] * (n_stages - 1)
    assert ak["kernel_sizes"] == [[3, 3]] * n_stages
    assert ak["n_conv_per_stage"] == [2] * n_stages and ak["n_conv_per_stage_decoder"] == [2] * (n_stages - 1)
    assert ak["domain_label_ids"] == [[1], [2]] and ak["norm_op"] == "x.DomainSpecificBatchNorm2d"


def test_coarse_2d_plans_refuses_a_patch_nnunet_would_pad():
    with pytest.raises(InputDataError, match="--patch-size 60"):
        coarse_2d_plans(_plans(), StudyBudget(patch_size=60))


def test_study_trainers_match_the_scheme_table_and_apply_the_budget():
    from nnunetv2_mtmd.training.trainers import __all__ as exported
    from nnunetv2_mtmd.training.trainers.study import STUDY_TRAINERS, apply_study_budget

    assert set(SCHEME_TRAINERS.values()) == {c.__name__ for c in STUDY_TRAINERS.values()}
    assert set(SCHEME_TRAINERS.values()) <= set(exported)  # what nnU-Net's trainer lookup sees
    logged = []
    t = SimpleNamespace(ae_iterations=500, print_to_log_file=lambda *a: logged.append(a))
    apply_study_budget(t, 3, StudyBudget(iterations=100, epochs=5, val_iterations=2, ae_iterations=30))
    assert (t.num_epochs, t.num_iterations_per_epoch, t.num_val_iterations_per_epoch) == (5, 60, 6)
    assert (t.save_every, t.ae_iterations) == (1, 30)
    stock = SimpleNamespace(print_to_log_file=lambda *a: None)
    apply_study_budget(stock, 1, StudyBudget(iterations=100, epochs=5, val_iterations=4))
    assert (stock.num_iterations_per_epoch, stock.num_val_iterations_per_epoch) == (20, 4)
    assert not hasattr(stock, "ae_iterations") and logged
