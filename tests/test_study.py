"""The real-data ablation study runner (nnunetv2_mtmd/study/, cli/study.py, training/trainers/study.py).

Unit tests of the pure helpers with hand-computed values (budget arithmetic, Individual splits derived
from the merged split, label remap, training/resume state, coarse plans, report tables), plus one slow
smoke test that runs the whole pipeline (prepare -> train -> evaluate -> report, then a resume) on
three tiny synthetic source datasets."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_mtmd.domains import Domain, DomainLabel, DomainSpec
from nnunetv2_mtmd.errors import InputDataError
from nnunetv2_mtmd.io import save_json
from nnunetv2_mtmd.study import (
    BUDGET_ENV,
    SCHEME_TRAINERS,
    StudyBudget,
    StudyError,
    StudyState,
    autoencoder_dice,
    budget_rows,
    coarse_2d_plans,
    code_commit,
    components_text,
    config_differences,
    domain_mean_dice,
    embedding_table,
    epoch_times,
    epochs_completed,
    estimate_hours,
    find_sources,
    fold_finish_seconds,
    fold_table,
    format_progress,
    individual_splits,
    keep_discussion,
    ks_table,
    mark_stale_discussion,
    metric_table,
    other_domain_text,
    paired_references,
    paired_table,
    reference_cut_text,
    remap_labels,
    strip_domain_prefix,
    train_command,
    training_hours,
    training_status,
    unify_individual_prediction,
    union_folders,
    unsourced_numbers,
)
from tests.datagen import make_raw_dataset

REPO = Path(__file__).resolve().parents[1]


def _spec() -> DomainSpec:
    """knee (femur=1 -> 1, tibia=2 -> 2) and hip (femur=1 -> 3), codes 1 and 2."""
    knee = Domain("knee", 1, "Dataset901_Knee", (DomainLabel("femur", 1, 1), DomainLabel("tibia", 2, 2)), 3)
    hip = Domain("hip", 2, "Dataset902_Hip", (DomainLabel("femur", 1, 3),), 2)
    return DomainSpec((knee, hip), code_channel=1)


# ------------------------------------------------------------------------------------- budget
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


# ------------------------------------------------------------------------------------- splits
def test_individual_splits_hold_out_the_same_cases():
    spec = _spec()
    merged = [
        {"train": ["hip_h1", "knee_a", "knee_b"], "val": ["hip_h0", "knee_c"]},
        {"train": ["hip_h0", "knee_a", "knee_c"], "val": ["hip_h1", "knee_b"]},
    ]
    assert individual_splits(merged, spec) == {
        "knee": [{"train": ["a", "b"], "val": ["c"]}, {"train": ["a", "c"], "val": ["b"]}],
        "hip": [{"train": ["h1"], "val": ["h0"]}, {"train": ["h0"], "val": ["h1"]}],
    }


def test_individual_splits_refuse_a_fold_without_validation_case_of_a_domain():
    merged = [{"train": ["hip_h0", "knee_a"], "val": ["knee_b"]}]
    with pytest.raises(InputDataError, match="no val case of domain 'hip'"):
        individual_splits(merged, _spec())


@pytest.mark.parametrize("case, domain, expected", [("knee_a", "knee", "a"), ("knee_case_01", "knee", "case_01"),
                                                    ("hip_knee_x", "hip", "knee_x")])
def test_strip_domain_prefix(case, domain, expected):
    assert strip_domain_prefix(case, _spec().by_name(domain)) == expected


def test_strip_domain_prefix_refuses_another_domain():
    with pytest.raises(InputDataError, match="not a case of domain 'hip'"):
        strip_domain_prefix("knee_a", _spec().by_name("hip"))


# -------------------------------------------------------------------------------- label remap
def test_remap_labels_to_unified_ids():
    hip = _spec().by_name("hip")  # original femur 1 -> unified 3
    arr = np.array([[[0, 1], [1, 0]]], dtype=np.uint8)
    out = remap_labels(arr, hip.original_to_unified())
    np.testing.assert_array_equal(out, [[[0, 3], [3, 0]]])
    assert out.dtype == np.uint8
    knee = _spec().by_name("knee")
    np.testing.assert_array_equal(remap_labels(np.array([2, 0, 1]), knee.original_to_unified()), [2, 0, 1])


def test_remap_labels_refuses_undeclared_ids():
    with pytest.raises(InputDataError, match=r"label ids \[2\]"):
        remap_labels(np.array([0, 1, 2]), _spec().by_name("hip").original_to_unified())


def test_unify_individual_prediction_keeps_geometry(tmp_path):
    arr = np.zeros((2, 3, 4), dtype=np.uint8)
    arr[0, 1, 2] = 1
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.5, 0.7, 3.0))
    img.SetOrigin((1.0, 2.0, 3.0))
    sitk.WriteImage(img, str(tmp_path / "h0.nii.gz"))
    unify_individual_prediction(tmp_path / "h0.nii.gz", tmp_path / "hip_h0.nii.gz", _spec().by_name("hip"))
    out = sitk.ReadImage(str(tmp_path / "hip_h0.nii.gz"))
    got = sitk.GetArrayFromImage(out)
    assert got[0, 1, 2] == 3 and got.sum() == 3
    assert out.GetSpacing() == pytest.approx((0.5, 0.7, 3.0))
    assert out.GetOrigin() == pytest.approx((1.0, 2.0, 3.0))


# ----------------------------------------------------------------------------- training state
def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")


def test_training_status_and_commands(tmp_path):
    fd = tmp_path / "fold_0"
    assert training_status(fd) == "new"
    _touch(fd / "checkpoint_best.pth")
    assert training_status(fd) == "resume"
    _touch(fd / "checkpoint_final.pth")
    assert training_status(fd, ["a", "b"]) == "validate"
    _touch(fd / "validation" / "a.nii.gz")
    _touch(fd / "validation" / "summary.json")
    assert training_status(fd, ["a", "b"]) == "validate"  # case b still missing
    _touch(fd / "validation" / "b.nii.gz")
    assert training_status(fd, ["a", "b"]) == "done"
    base = ["nnUNetv2_train", "Dataset950_X", "2d", "1", "-tr", "T", "-p", "nnUNetPlans_study", "-device", "cpu"]
    assert train_command("Dataset950_X", 1, "T", "new") == base
    assert train_command("Dataset950_X", 1, "T", "resume") == [*base, "--c"]
    assert train_command("Dataset950_X", 1, "T", "validate") == [*base, "--val"]
    with pytest.raises(ValueError):
        train_command("Dataset950_X", 1, "T", "done")


def test_epoch_times_from_training_logs(tmp_path):
    (tmp_path / "training_log_2024_1_1_10_00_00.txt").write_text(
        "2024-01-01 10:00:01: Epoch 0\n2024-01-01 10:00:09: Epoch time: 8.5 s\n...\nEpoch time: 7.25 s\n")
    (tmp_path / "training_log_2024_1_1_11_00_00.txt").write_text("x: Epoch time: 6.0 s\n")
    assert epoch_times(tmp_path) == [8.5, 7.25, 6.0]


def test_autoencoder_dice_is_the_last_frozen_line(tmp_path):
    assert autoencoder_dice(tmp_path) is None  # no log
    (tmp_path / "training_log_2024_1_1_10_00_00.txt").write_text(
        "x: MJAP autoencoder it 300/300: CE 0.1 MSC 1.1 validation reconstruction Dice 0.2561\n"
        "x: MJAP autoencoder frozen; validation reconstruction Dice 0.2561\nx: Epoch 0\n")
    assert autoencoder_dice(tmp_path) == pytest.approx(0.2561)
    # a restart from scratch in a later log trains a new autoencoder: its value counts
    (tmp_path / "training_log_2024_1_1_11_00_00.txt").write_text(
        "x: MJAP autoencoder frozen; validation reconstruction Dice 0.3386\n")
    assert autoencoder_dice(tmp_path) == pytest.approx(0.3386)
    (tmp_path / "training_log_2024_1_1_12_00_00.txt").write_text("x: Epoch time: 6.0 s\n")  # resumed: no phase 1
    assert autoencoder_dice(tmp_path) == pytest.approx(0.3386)


def test_state_resume_and_config_check(tmp_path):
    st = StudyState(tmp_path / "state.json")
    st.set_config({"budget": {"iterations": 10, "epochs": 2}, "sources": ["A", "B"]})
    st.mark_done("prepare", seconds=3)
    st.add_seconds("train:fold0:DSL:D", 10.0)
    st.add_seconds("train:fold0:DSL:D", 5.5)
    st.add_command("nnUNetv2_train x")
    st.add_command("nnUNetv2_train x")
    again = StudyState(tmp_path / "state.json")  # what a re-run sees
    assert again.is_done("prepare") and not again.is_done("train:fold0:DSL:D")
    assert again.data["seconds"]["train:fold0:DSL:D"] == 15.5
    assert again.data["commands"] == ["nnUNetv2_train x"]
    again.set_config({"budget": {"iterations": 10, "epochs": 2}, "sources": ["A", "B"]})  # same: accepted
    with pytest.raises(InputDataError, match=r"budget.iterations: recorded 10, now 20"):
        again.set_config({"budget": {"iterations": 20, "epochs": 2}, "sources": ["A", "B"]})
    again.unmark("prepare")
    assert not StudyState(tmp_path / "state.json").is_done("prepare")


def test_config_differences():
    assert config_differences({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}, "d": 4}) == [
        "b.c: recorded 2, now 3", "d: recorded None, now 4"]


# ------------------------------------------------------------------------------------ plans
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


# ----------------------------------------------------------------------------------- sources
def test_find_sources_domain_names(tmp_path):
    for i, name in enumerate(("LumbarVertebraeMR", "Hip_MR")):
        make_raw_dataset(tmp_path, 901 + i, name, ["a"], n_cases=1, shape=(2, 8, 8))
    got = find_sources(tmp_path)
    assert [s.domain for s in got] == ["lumbar", "HipMR"]  # the real dataset's name; derived from the name
    assert [s.dataset_id for s in got] == [901, 902]
    assert [s.domain for s in find_sources(tmp_path, ["spine", "hip"])] == ["spine", "hip"]
    with pytest.raises(InputDataError, match="gives 1 names"):
        find_sources(tmp_path, ["spine"])
    with pytest.raises(InputDataError, match="does not exist"):
        find_sources(tmp_path / "nope")


# ------------------------------------------------------------------------------ study options
def test_study_takes_recorded_options_and_refuses_a_different_budget(tmp_path):
    from nnunetv2_mtmd.study import Study, StudyOptions, study_command

    src = _sources(tmp_path, n_cases=1)
    work = tmp_path / "work"
    first = Study(StudyOptions(work, sources_dir=src, schemes=["Individual", "DSL"], folds=[1],
                               budget={"iterations": 4, "epochs": 2}, report=tmp_path / "docs" / "results.md"))
    first.run("report")  # records the configuration; nothing evaluated yet, so no report
    assert not first.report_path.exists()
    again = Study(StudyOptions(work))  # a plain re-run: sources, schemes, folds, budget, report as recorded
    assert again.sources_dir == src.resolve() and again.schemes == ["Individual", "DSL"] and again.folds == [1]
    assert (again.budget.iterations, again.budget.epochs, again.budget.batch_size) == (4, 2, 12)
    assert study_command(again)[3:] == [
        "--workdir", str(work.resolve()), "--sources", str(src.resolve()), "--domains", "Ankle", "Knee", "Shoulder",
        "--folds", "1", "--schemes", "Individual", "DSL", "--iterations", "4", "--epochs", "2",
        "--val-iterations", "2", "--ae-iterations", "300", "--batch-size", "12", "--spacing", "4",
        "--patch-size", "64", "--max-features", "256", "--base-features", "16", "--fixed-orientation",
        "--report", str((tmp_path / "docs" / "results.md").resolve())]
    other = Study(StudyOptions(work, budget={"iterations": 6, "epochs": 2}))
    with pytest.raises(InputDataError, match="budget.iterations: recorded 4, now 6"):
        other.run("report")
    stock_da = Study(StudyOptions(tmp_path / "work2", sources_dir=src, budget={"fixed_orientation": False}))
    assert study_command(stock_da)[-3:] == ["--no-fixed-orientation", "--report", str(stock_da.report_path)]
    assert "study stage 'report'" in (work / "study_log.txt").read_text()


@pytest.mark.parametrize("jobs, cores, threads", [(1, 2, 2), (2, 2, 1), (3, 2, 1), (2, 16, 8), (3, 16, 5)])
def test_job_threads(jobs, cores, threads):
    from nnunetv2_mtmd.study import job_threads

    assert job_threads(jobs, cores) == threads


def test_training_env_limits_threads_only_with_jobs(tmp_path, monkeypatch):
    from nnunetv2_mtmd.study import THREADS_ENV, Study, StudyOptions, job_threads

    src = _sources(tmp_path, n_cases=1)
    monkeypatch.setenv(THREADS_ENV, "7")  # inherited from the caller: never passed on unchanged
    one = Study(StudyOptions(tmp_path / "w1", sources_dir=src))
    assert THREADS_ENV not in one.env(train=True) and THREADS_ENV not in one.env()
    assert one.env(train=True)["nnUNet_n_proc_DA"] == "0"
    two = Study(StudyOptions(tmp_path / "w2", sources_dir=src, jobs=2))
    env = two.env(train=True)
    n = str(job_threads(2))
    assert (env[THREADS_ENV], env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"]) == (n, n, n)
    assert THREADS_ENV not in two.env()  # planning, preprocessing, evaluation keep their threads


class _FakeTrainings:
    """A Study whose trainings are sleeps: records how many overlap and when folds are evaluated."""

    def __init__(self, study, runs, fail=None, slow_waits_for_evaluation=False, done_before=()):
        self.study, self.lock, self.running, self.max_running = study, threading.Lock(), 0, 0
        self.done, self.events, self.fail = set(done_before), [], fail
        # "slow" ends only after the other fold was evaluated: no race with the scheduler (CI runs
        # this under load, where fixed sleeps let both folds complete before the first evaluation)
        self.slow_waits, self.evaluated = slow_waits_for_evaluation, threading.Event()
        study.pending_trainings = lambda: [r for r in runs if tuple(r[:2]) not in self.done]
        study._train_one = self.train_one
        study.fold_complete = lambda fold: all((f, s) in self.done for f, s, *_ in runs if f == fold)
        study.evaluate = self.evaluate
        study.report = lambda: self.events.append(("report",))

    def evaluate(self):
        self.events.append(("evaluate", sorted(self.done)))
        self.evaluated.set()

    def train_one(self, fold, scheme, dataset, trainer, status):
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        if scheme.startswith("slow") and self.slow_waits:
            assert self.evaluated.wait(30), "the other fold was never evaluated while this one trained"
        else:
            time.sleep(0.3 if scheme.startswith("slow") else 0.1)
        with self.lock:
            self.running -= 1
            self.done.add((fold, scheme))
        if (fold, scheme) == self.fail:
            raise StudyError(f"fold {fold} {scheme} failed")


@pytest.mark.parametrize("jobs, expected_max", [(1, 1), (2, 2), (3, 3)])
def test_train_runs_jobs_at_once_and_evaluates_each_fold_when_complete(tmp_path, jobs, expected_max):
    from nnunetv2_mtmd.study import Study, StudyOptions

    runs = [(0, "a", "D", "T", "new"), (0, "slow", "D", "T", "new"), (1, "a", "D", "T", "new"),
            (1, "b", "D", "T", "new")]
    study = Study(StudyOptions(tmp_path / "w", sources_dir=_sources(tmp_path, n_cases=1), folds=[0, 1], jobs=jobs))
    fake = _FakeTrainings(study, runs, slow_waits_for_evaluation=jobs > 1)
    study.train(evaluate_as_we_go=True)
    assert fake.max_running == expected_max
    assert fake.done == {(0, "a"), (0, "slow"), (1, "a"), (1, "b")}
    evals = [e[1] for e in fake.events if e[0] == "evaluate"]
    assert len(evals) == 2 and [e[0] for e in fake.events].count("report") == 2  # once per fold
    # each evaluation came when one more fold had all its models (with jobs, fold 1 finishes first)
    folds_complete = [sum(all(tuple(r[:2]) in snap for r in runs if r[0] == f) for f in (0, 1)) for snap in evals]
    assert folds_complete == [1, 2]
    if jobs == 1:
        assert set(evals[0]) == {(0, "a"), (0, "slow")}
    else:  # fold 1 was evaluated while fold 0's slow model still trained
        assert {(1, "a"), (1, "b")} <= set(evals[0]) and (0, "slow") not in evals[0]


@pytest.mark.parametrize("jobs", [1, 2])
def test_train_first_evaluates_a_fold_completed_before_it_started(tmp_path, jobs):
    """A study stopped during a fold's evaluation: the rerun evaluates that fold at once, not only when
    its next training ends (with jobs, while the trainings run)."""
    from nnunetv2_mtmd.study import Study, StudyOptions

    # with jobs, both fold-1 models wait until fold 0 is evaluated: they cannot end first
    runs = [(0, "a", "D", "T", "new"), (1, "slow", "D", "T", "new"), (1, "slow_b", "D", "T", "new")]
    study = Study(StudyOptions(tmp_path / "w", sources_dir=_sources(tmp_path, n_cases=1), folds=[0, 1], jobs=jobs))
    fake = _FakeTrainings(study, runs, slow_waits_for_evaluation=jobs > 1, done_before={(0, "a")})
    study.train(evaluate_as_we_go=True)
    evals = [e[1] for e in fake.events if e[0] == "evaluate"]
    assert evals == [[(0, "a")], [(0, "a"), (1, "slow"), (1, "slow_b")]]  # fold 0 first, before any training ended
    assert fake.max_running == jobs


def test_parallel_train_failure_stops_new_trainings_and_raises(tmp_path):
    from nnunetv2_mtmd.study import Study, StudyOptions

    runs = [(0, "a", "D", "T", "new"), (0, "slow", "D", "T", "new")] + [(1, f"s{i}", "D", "T", "new")
                                                                      for i in range(6)]
    study = Study(StudyOptions(tmp_path / "w", sources_dir=_sources(tmp_path, n_cases=1), folds=[0, 1], jobs=2))
    fake = _FakeTrainings(study, runs, fail=(0, "a"))
    with pytest.raises(StudyError, match="fold 0 a failed"):
        study.train(evaluate_as_we_go=True)
    assert (0, "slow") in fake.done  # the running one finished
    assert len(fake.done) < len(runs)  # the queued ones were not started
    assert not [e for e in fake.events if e[0] == "evaluate"]


@pytest.mark.parametrize("content, expected", [
    ("0123456789abcdef0123456789abcdef01234567\n", "0123456789ab"),  # filled in by git archive
    ("$Format:%H$\n", None),  # not filled in, and not in a git checkout
    ("", None),
])
def test_code_commit_outside_a_checkout(tmp_path, content, expected):
    (tmp_path / "COMMIT").write_text(content)
    assert code_commit(tmp_path / "COMMIT") == expected
    assert code_commit(tmp_path / "missing") is None


@pytest.mark.skipif(not (REPO / ".git").exists() or shutil.which("git") is None, reason="needs a git checkout")
def test_code_commit_of_the_checkout_and_of_a_git_archive_snapshot(tmp_path):
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    # the working tree: git rev-parse (plus -dirty when the package has uncommitted changes)
    assert code_commit().split("-")[0] == head[:12]
    # a snapshot as the study runs from: git archive fills in COMMIT (export-subst)
    tar = subprocess.run(["git", "-C", str(REPO), "archive", "HEAD", "nnunetv2_mtmd/COMMIT"], capture_output=True,
                         check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp_path)], input=tar, check=True)
    assert (tmp_path / "nnunetv2_mtmd" / "COMMIT").read_text().strip() == head
    assert code_commit(tmp_path / "nnunetv2_mtmd" / "COMMIT") == head[:12]


@pytest.mark.parametrize("schemes, expected", [
    (["Individual"], []),
    (["Individual", "DSL"], [("Individual", ["DSL"])]),
    (["Individual", "Shared", "DSL", "DSL_MSC", "DSL_MJAP"],
     [("Individual", ["Shared", "DSL", "DSL_MSC", "DSL_MJAP"]), ("DSL", ["DSL_MSC", "DSL_MJAP"])]),
    (["DSL", "DSL_MSC"], [("DSL", ["DSL_MSC"])]),  # DSL is already the reference
    (["Individual", "DSL_MSC"], [("Individual", ["DSL_MSC"])]),  # no DSL to compare with
])
def test_paired_references(schemes, expected):
    assert paired_references(schemes) == expected


def test_case_level_text_compares_the_regularized_schemes_with_dsl_too(tmp_path):
    from nnunetv2_mtmd.study import case_level_text

    cases = {"knee_a": "knee", "knee_b": "knee", "knee_c": "knee", "hip_a": "hip", "hip_b": "hip", "hip_c": "hip"}
    base = {c: 0.5 + 0.05 * i for i, c in enumerate(cases)}
    # DSL+MSC is DSL + 0.01 on every case; DSL is Individual + 0.02
    offsets = {"Individual": 0.0, "Shared": -0.01, "DSL": 0.02, "DSL_MSC": 0.03}
    for scheme, off in offsets.items():
        d = tmp_path / "w" / "evaluation" / scheme / "raw"
        d.mkdir(parents=True)
        (d / "metrics.csv").write_text("case,domain,structure,dice\n" + "".join(
            f"{c},{dom},femur,{base[c] + off:.4f}\n" for c, dom in cases.items()))
    study = SimpleNamespace(dir=tmp_path / "w", spec=_spec(), merged="M", report_path=tmp_path / "docs" / "r.md",
                            load_splits=lambda _: [{"val": list(cases)}])
    text = "\n".join(case_level_text(study, "raw", list(offsets), [0], tmp_path / "docs" / "results"))
    first, _, second = text.partition("### Per-case paired comparison with DSL (what the regularization adds")
    assert "### Per-case paired comparison with Individual" in first and second
    # all 6 cases higher by the same amount: exact two-sided Wilcoxon p = 2 / 2^6
    assert "| DSL+MSC | +0.010 ± 0.000 (3/0 of 3), p=0.250 | +0.010 ± 0.000 (3/0 of 3), p=0.250 | " \
           "+0.010 ± 0.000 (6/0 of 6), p=0.031 |" in second
    assert "| DSL+MSC | +0.030 ± 0.000 (6/0 of 6)" not in second and "+0.030 ± 0.000 (6/0 of 6), p=0.031" in first
    assert "Shared" not in second and (tmp_path / "docs" / "results" / "case_dice_raw.png").is_file()


# ---------------------------------------------------------------------------------- status
_LOG = "2026-11-22 09:30:08.949156: Epoch {e}\n2026-11-22 09:30:09.1: Current learning rate: 0.006\n"



@pytest.mark.parametrize("times, epochs, hours", [
    ([[100.0, 100.0, 100.0]], 36, 1.0),
    # a paused epoch (1300 s) does not move the median; a repeated epoch is not counted twice
    ([[100.0, 1300.0, 100.0, 100.0]], 36, 1.0),
    # two models: (90 x 40 + 180 x 40) s = 3 h
    ([[90.0, 90.0], [180.0]], 40, 3.0),
    # a model without a logged epoch counts nothing
    ([[90.0], []], 40, 1.0),
    ([[], []], 40, None),
])
def test_training_hours(times, epochs, hours):
    assert training_hours(times, epochs) == (None if hours is None else pytest.approx(hours))


@pytest.mark.parametrize("logs, final, expected", [
    ([], False, 0),                                   # nothing logged yet
    (["0"], False, 0),                                # epoch 0 running
    (["0", "1", "2"], False, 2),                      # epochs 0 and 1 complete
    (["0", "1"], True, 30),                           # checkpoint_final: all epochs
    ([["0", "1", "2"], ["2", "3"]], False, 3),        # resumed into a second log file
    (["31"], False, 30),                              # never more than the budget
])
def test_epochs_completed(tmp_path, logs, final, expected):
    for i, epochs in enumerate(logs if logs and isinstance(logs[0], list) else [logs] if logs else []):
        (tmp_path / f"training_log_2026_11_22_0{i}_00_00.txt").write_text(
            "header\n" + "".join(_LOG.format(e=e) for e in epochs))
    if final:
        (tmp_path / "checkpoint_final.pth").write_bytes(b"x")
    assert epochs_completed(tmp_path, 30) == expected


def _row(scheme, state, left, spi, fold=0):
    return {"fold": fold, "scheme": scheme, "dataset": "D", "state": state, "epochs_done": 0, "epochs": 30,
            "iterations_left": left, "s_per_it": spi}


def test_format_progress_estimates_untimed_models_by_kind():
    rows = [_row("Individual", "done", 0, 0.2), _row("Individual", "training (epoch 3)", 1000, 0.4),
            _row("Individual", "not started", 3000, None), _row("DSL", "training (epoch 2)", 9000, 0.5),
            _row("DSL_MSC", "not started", 9000, None)]
    text = format_progress(rows, jobs=2)
    # 1000 * 0.4 + 3000 * median(0.2, 0.4) + 9000 * 0.5 + 9000 * 0.5 = 400 + 900 + 4500 + 4500 = 10300 s
    assert "about 1.4 h with --jobs 2" in text  # 10300 / 3600 / 2 = 1.43
    assert "~0.300 (estimate)" in text and "~0.500 (estimate)" in text
    assert "1 of 5 models done." in text
    assert "about 2.9 h with --jobs 1" in format_progress(rows)


def test_format_progress_estimates_from_the_same_scheme_first():
    rows = [_row("DSL", "done", 0, 0.5), _row("DSL_MJAP", "training (epoch 2)", 8000, 0.7),
            _row("DSL_MJAP", "not started", 9000, None, fold=1), _row("Shared", "not started", 9000, None, fold=1)]
    text = format_progress(rows)
    # 8000 * 0.7 + 9000 * 0.7 (DSL_MJAP of fold 0) + 9000 * median(0.5, 0.7) = 5600 + 6300 + 5400 = 17300 s
    assert "| 1 | DSL_MJAP | D | not started | 0/30 | 9000 | ~0.700 (estimate) |" in text
    assert "| 1 | Shared | D | not started | 0/30 | 9000 | ~0.600 (estimate) |" in text  # no scheme it contains
    assert "about 4.8 h with --jobs 1" in text  # 17300 / 3600 = 4.81


@pytest.mark.parametrize("scheme, expected", [
    ("DSL_MSC_MJAP", 0.7),  # contains DSL (0.5), DSL_MSC (0.55) and DSL_MJAP (0.7): the slowest
    ("DSL_MSC", 0.55),      # its own scheme, measured in another fold
    ("DSL_SSC", 0.5),       # contains DSL only
    ("Shared_MJAP", 0.4),   # contains Shared only
    ("Individual", 0.2),    # an Individual model is never estimated from multi-domain schemes
])
def test_format_progress_estimates_a_scheme_from_the_schemes_it_contains(scheme, expected):
    rows = [_row("Individual", "done", 0, 0.2), _row("Shared", "done", 0, 0.4), _row("DSL", "done", 0, 0.5),
            _row("DSL_MSC", "done", 0, 0.55), _row("DSL_MJAP", "done", 0, 0.7),
            _row(scheme, "not started", 9000, None, fold=1)]
    assert f"| 1 | {scheme} | D | not started | 0/30 | 9000 | ~{expected:.3f} (estimate) |" in format_progress(rows)


@pytest.mark.parametrize("jobs, expected", [
    # 1, 2, 0.5 h of fold 0 then 1 h of fold 1; two workers: [1, 0] -> [1, 2] -> [1.5, 2] -> [2.5, 2]
    (2, {0: 2.0, 1: 2.5}),
    (1, {0: 3.5, 1: 4.5}),
    (3, {0: 2.0, 1: 1.5}),  # [1, 2, 0.5]: fold 1 goes to the third worker, free after 0.5 h
])
def test_fold_finish_seconds(jobs, expected):
    queue = [(0, 3600.0), (0, 7200.0), (0, 1800.0), (1, 3600.0)]
    assert {f: t / 3600 for f, t in fold_finish_seconds(queue, jobs).items()} == expected


def test_format_progress_names_when_each_fold_is_trained():
    rows = [_row("Individual", "done", 0, 0.5), _row("Shared", "training (epoch 1)", 7200, 0.5),
            _row("DSL", "training (epoch 1)", 3600, 1.0), _row("DSL", "not started", 3600, 1.0, fold=1)]
    # 1 h and 1 h of fold 0 on two workers, then fold 1's 1 h: fold 0 after 1 h, fold 1 after 2 h
    assert "fold 0 1.0 h, fold 1 2.0 h from now (models in study order, 2 at a time)" in format_progress(rows, 2)


def test_format_progress_without_any_timing_says_unknown():
    text = format_progress([_row("Individual", "not started", 3000, None), _row("DSL", "done", 0, None)])
    assert "unknown (1 model(s) to train and no epoch timed yet)" in text and "n/a" in text
    assert "Remaining" not in format_progress([_row("DSL", "done", 0, 0.3)])


def test_status_stage_needs_a_study_and_reads_progress(tmp_path, capsys):
    from nnunetv2_mtmd.study import Study, StudyOptions

    src = _sources(tmp_path, n_cases=1)
    study = Study(StudyOptions(tmp_path / "w", sources_dir=src, schemes=["Individual", "DSL"], folds=[0]))
    with pytest.raises(InputDataError, match="No study in .* yet"):
        study.run("status")
    study.run("report")  # records the configuration only
    capsys.readouterr()
    Study(StudyOptions(tmp_path / "w")).run("status")
    out = capsys.readouterr().out
    assert out.count("| not started | 0/30 |") == 4  # 3 Individual models + DSL
    assert "| 0 | DSL | Dataset950_MSKBonesMR | not started | 0/30 | 9000 |" in out  # K x I = 3 x 3000
    assert "unknown (4 model(s)" in out


# ------------------------------------------------------------------------------------ report
def _stat(mean, std, n=2, undef=0):
    return {"mean": mean, "std": std, "n": n, "n_undefined": undef}


def test_metric_and_ks_tables():
    spec = _spec()

    def summary(v):
        return {"domains": {
            "knee": {"structures": {"femur": {"dice": _stat(v, 0.1)}, "tibia": {"dice": _stat(0.5, 0.0)}},
                     "mean": {"dice": _stat(0.6, 0.2)}},
            "hip": {"structures": {"femur": {"dice": _stat(0.9, 0.05)}}, "mean": {"dice": _stat(0.9, 0.05)}}}}

    text = metric_table({"Individual": summary(0.7), "DSL_MSC": summary(0.8)}, "dice", spec)
    lines = text.splitlines()
    assert lines[0] == "| Domain | Structure | Individual | DSL+MSC |"
    assert lines[2] == "| knee | femur | 0.700 ± 0.100 | 0.800 ± 0.100 |"
    assert lines[4] == "| knee | **mean** | 0.600 ± 0.200 | 0.600 ± 0.200 |"
    assert lines[6] == "| hip | **mean** | 0.900 ± 0.050 | 0.900 ± 0.050 |"
    assert domain_mean_dice(summary(0.7)) == pytest.approx(0.75)  # (0.6 + 0.9) / 2
    cj = {"reference_method": "Individual", "rows": [
        {"method": "Individual", "group": "pooled", "n_slices": 10, "mean": 0.5, "p16": 0.1, "p84": 0.9,
         "ks_statistic": None, "ks_pvalue": None},
        {"method": "DSL", "group": "pooled", "n_slices": 10, "mean": 0.6, "p16": 0.2, "p84": 0.95,
         "ks_statistic": 0.3, "ks_pvalue": 0.0001234}]}
    ks = ks_table(cj).splitlines()
    assert ks[2] == "| Individual | 0.500 [0.100, 0.900] / (reference) |"
    assert ks[3] == "| DSL | 0.600 [0.200, 0.950] / D=0.300, p=1.23e-04 |"
    # columns follow the given domain order, whatever the file's order
    cj["rows"] = [{**r, "group": g} for g in ("hip", "knee", "pooled") for r in cj["rows"][:2]]
    head = ks_table(cj, ["knee", "hip"]).splitlines()[0]
    assert head.startswith("| Scheme | knee: ") and head.index("| hip: ") < head.index("| pooled: ")


@pytest.mark.parametrize("summaries, expected", [
    ({"Individual": {"labels_of_other_domains": {"prediction": {}}, "n_cases": 4},
      "Shared": {"labels_of_other_domains": {"prediction": {"knee_2": {"3": 5, "2": 1}}}, "n_cases": 4}},
     "Shared in 1 of 4 cases (knee_2: hip_femur 5 voxels, knee_tibia 1 voxel); none: Individual."),
    ({"DSL": {"labels_of_other_domains": {"prediction": {}}}}, "none."),
    ({"DSL": {"labels_of_other_domains": {"prediction": {}}}, "Shared": {}},
     "none: DSL; not recorded by the evaluation of Shared."),
    ({"Shared": {}}, "not recorded by the evaluation of Shared."),
])
def test_other_domain_text(summaries, expected):
    text = other_domain_text(summaries, _spec())
    assert text.startswith("Predictions that contain labels of another domain")
    assert text.endswith("background): " + expected)


def test_embedding_table_sets_schemes_side_by_side():
    def rows(inter):
        return [{"stage_name": n, "channels": "16", "intra_mean": "0.99", "intra_std": "0.01",
                 "inter_mean": str(v), "inter_std": "0.05"} for n, v in zip(("enc0", "dec0"), inter)]

    sims = {"DSL": rows([0.9, 0.8]), "DSL_MSC": rows([0.3, 0.25])[:1]}
    lines = embedding_table(sims, "inter").splitlines()
    assert lines[0] == "| Stage | Channels | DSL: inter-domain | DSL+MSC: inter-domain |"
    assert lines[1] == "|---|---|---|---|"
    assert lines[2] == "| enc0 | 16 | 0.900 ± 0.050 | 0.300 ± 0.050 |"
    assert lines[3] == "| dec0 | 16 | 0.800 ± 0.050 | n/a |"  # a stage one scheme lacks
    assert embedding_table(sims, "intra").splitlines()[2] == "| enc0 | 16 | 0.990 ± 0.010 | 0.990 ± 0.010 |"
    with pytest.raises(ValueError, match="'inter' or 'intra'"):
        embedding_table(sims, "between")


def test_paired_and_fold_tables():
    ind = {"knee_1": ("knee", 0.5), "knee_2": ("knee", 0.7), "hip_1": ("hip", 0.9)}
    dsl = {"knee_1": ("knee", 0.6), "knee_2": ("knee", 0.8), "hip_1": ("hip", 0.8)}
    lines = paired_table({"Individual": ind, "DSL": dsl}, ["knee", "hip"]).splitlines()
    assert lines[0] == ("| Scheme | knee: ΔDice (better/worse of n), Wilcoxon p | hip: ΔDice (better/worse of n), "
                        "Wilcoxon p | pooled: ΔDice (better/worse of n), Wilcoxon p |")
    assert len(lines) == 3  # the reference has no row
    # knee: +0.1 twice (std 0); 2 of 2 better, exact p = 2/4; hip: -0.1, p = 1; pooled: 0.1/3, p = 6/8
    assert lines[2] == ("| DSL | +0.100 ± 0.000 (2/0 of 2), p=0.500 | -0.100 ± 0.000 (0/1 of 1), p=1.000 | "
                        "+0.033 ± 0.094 (2/1 of 3), p=0.750 |")
    folds = {0: ["knee_1", "hip_1"], 1: ["knee_2"]}
    ft = fold_table({"Individual": ind, "DSL": dsl}, folds, ["knee", "hip"]).splitlines()
    assert ft[0] == "| Scheme | knee fold 0 | knee fold 1 | hip fold 0 | hip fold 1 |"
    assert ft[2] == "| Individual | 0.500 | 0.700 | 0.900 | n/a |"
    assert ft[3] == "| DSL | 0.600 | 0.800 | 0.800 | n/a |"


# ---------------------------------------------------------------------------------- trainers
PLACEHOLDER = "## Discussion\n\n> **To be written by a human after reading the numbers.** Points...\n"


@pytest.mark.parametrize("old, new, expected", [
    # a written discussion replaces the new placeholder, sections after it stay the new ones
    ("# R\nold 0.5\n## Discussion\n\nMine.\n", "# R\nnew 0.7\n" + PLACEHOLDER,
     "# R\nnew 0.7\n## Discussion\n\nMine.\n"),
    ("# R\n## Discussion\nMine.\n## Appendix\nold\n", "# R\n" + PLACEHOLDER + "## Appendix\nnew\n",
     "# R\n## Discussion\nMine.\n## Appendix\nnew\n"),
    # no newline at the end of the written text
    ("## Discussion\nMine.", PLACEHOLDER + "## Commands\nx\n", "## Discussion\nMine.\n## Commands\nx\n"),
    # still the placeholder, or no discussion at all in the old report: the new text unchanged
    ("# R\n" + PLACEHOLDER, "# R\nnew\n" + PLACEHOLDER, "# R\nnew\n" + PLACEHOLDER),
    ("# R\nno section\n", "# R\n" + PLACEHOLDER, "# R\n" + PLACEHOLDER),
    # "### Discussion of x" is not the section
    ("### Discussion\nsub\n", "# R\n" + PLACEHOLDER, "# R\n" + PLACEHOLDER),
])
def test_keep_discussion(old, new, expected):
    assert keep_discussion(new, old) == expected


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


# ---------------------------------------------------------------------------------------- CLI
def _cli(args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "nnunetv2_mtmd.cli.study", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL, cwd=REPO)


def _sources(root: Path, n_cases: int = 5) -> Path:
    src = root / "sources"
    for i, (name, labels) in enumerate((("Ankle", ["calcaneus", "talus"]), ("Knee", ["femur"]),
                                        ("Shoulder", ["humerus", "scapula"]))):
        make_raw_dataset(src, 901 + i, name, labels, n_cases=n_cases, shape=(4, 24, 24), seed=i)
    return src


def test_cli_dry_run_prints_commands_and_writes_nothing(tmp_path):
    src = _sources(tmp_path, n_cases=1)
    work = tmp_path / "work"
    proc = _cli(["--workdir", str(work), "--sources", str(src), "--folds", "1", "--schemes", "Individual", "DSL",
                 "--iterations", "4", "--epochs", "2", "--dry-run"])
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "nnUNetv2_mtmd_merge -d" in out and "--domains Ankle Knee Shoulder -o 950" in out
    assert "nnUNetv2_preprocess -d 901 902 903 950 -plans_name nnUNetPlans_study -c 2d" in out
    assert "nnUNetv2_train Dataset902_Knee 2d 1 -tr nnUNetTrainer_study -p nnUNetPlans_study -device cpu" in out
    assert "nnUNetv2_train Dataset950_MSKBonesMR 2d 1 -tr nnUNetTrainerMTMD_DSL_study" in out
    assert "nnUNetv2_mtmd_embeddings -d Dataset950_MSKBonesMR" in out
    # post-processing per fold, with the parts counted in that fold's training labels
    assert "# count the parts of every structure in the training labels of fold 1" in out
    assert "--components " + str(work / "evaluation" / "components_fold1.json") in out
    assert not work.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workdir", str(REPO / "study_here")], "inside the repository"),
        (["--schemes", "DSL", "Fancy"], "Unknown scheme(s) ['Fancy']"),
        (["--folds", "5"], "Folds must be 0..4"),
        (["--iterations", "10", "--epochs", "3"], "multiple of --epochs"),
    ],
)
def test_cli_refuses_bad_options(tmp_path, args, message):
    src = _sources(tmp_path, n_cases=1)
    base = ["--workdir", str(tmp_path / "w"), "--sources", str(src), "--dry-run"]
    proc = _cli([*base, *args])
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_cli_missing_real_data_is_a_clear_error(tmp_path):
    proc = _cli(["--workdir", str(tmp_path / "w"), "--sources", str(tmp_path / "realdata"), "--dry-run"])
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "--sources" in proc.stderr


def test_union_folders_keeps_each_folds_json_and_refuses_overlapping_folds(tmp_path):
    folders = {}
    for fold, cases in [(0, ["a", "b"]), (2, ["c"])]:
        folders[fold] = tmp_path / f"fold_{fold}"
        folders[fold].mkdir()
        for c in cases:
            (folders[fold] / f"{c}.nii.gz").write_text(c)
        (folders[fold] / "postprocessing_mtmd.json").write_text(str(fold))
    assert union_folders(folders, tmp_path / "all") == 3
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == [
        "a.nii.gz", "b.nii.gz", "c.nii.gz", "postprocessing_mtmd_fold0.json", "postprocessing_mtmd_fold2.json"]
    assert (tmp_path / "all" / "postprocessing_mtmd_fold2.json").read_text() == "2"
    (folders[2] / "b.nii.gz").write_text("b again")
    with pytest.raises(StudyError, match="b.nii.gz is predicted by two folds"):
        union_folders(folders, tmp_path / "all")
    assert (tmp_path / "all" / "c.nii.gz").read_text() == "c"  # the old output is left as it was


def test_embeddings_are_reused_while_the_checkpoint_is_the_same(tmp_path, monkeypatch):
    from nnunetv2_mtmd.study import SCHEME_TRAINERS, Study, StudyOptions, fold_folder

    study = Study(StudyOptions(tmp_path / "w", sources_dir=_sources(tmp_path, n_cases=1)))
    calls = []

    def fake_run_cmd(step, cmd, log_name, env=None):  # the command's output: what the reuse check looks for
        calls.append(cmd[cmd.index("-tr") + 1])
        out = Path(cmd[cmd.index("-o") + 1])
        out.mkdir(parents=True, exist_ok=True)
        (out / "similarity.csv").write_text("stage\n")
        return 0.0

    monkeypatch.setattr(study, "run_cmd", fake_run_cmd)
    ckpts = {}
    for s in ("DSL", "DSL_MSC"):
        d = fold_folder(study.results, study.merged, SCHEME_TRAINERS[s], 0)
        d.mkdir(parents=True)
        ckpts[s] = d / "checkpoint_final.pth"
        ckpts[s].write_bytes(b"weights")
    dirs = study.embeddings(0, ["DSL", "DSL_MSC"])
    assert calls == [SCHEME_TRAINERS["DSL"], SCHEME_TRAINERS["DSL_MSC"]]
    assert dirs == {s: study.dir / "embeddings" / f"{s}_fold0" for s in ("DSL", "DSL_MSC")}
    # a later fold's evaluation: same checkpoints -> nothing recomputed
    assert study.embeddings(0, ["DSL", "DSL_MSC"]) == dirs and len(calls) == 2
    # a retrained model (new checkpoint) and a deleted output folder are computed again
    st = ckpts["DSL"].stat()
    os.utime(ckpts["DSL"], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    shutil.rmtree(dirs["DSL_MSC"])
    study.embeddings(0, ["DSL", "DSL_MSC"])
    assert calls[2:] == [SCHEME_TRAINERS["DSL"], SCHEME_TRAINERS["DSL_MSC"]]


def test_fold_components_counts_parts_in_the_folds_training_labels_only(tmp_path):
    from nnunetv2_mtmd.study import Study, StudyOptions
    from tests.evaluation.test_evaluate import merged_dataset_json

    study = Study(StudyOptions(tmp_path / "w", sources_dir=_sources(tmp_path, n_cases=1)))
    ds = study.raw / study.merged
    (ds / "labelsTr").mkdir(parents=True)
    (ds / "dataset.json").write_text(json.dumps(merged_dataset_json(_spec(), 4)))
    for case, runs in [("hip_a", 2), ("hip_b", 2), ("hip_c", 1), ("knee_a", 1)]:
        arr = np.zeros((2, 4, 12), np.uint8)
        for r in range(runs):
            arr[0, 1, 5 * r : 5 * r + 3] = 3 if case.startswith("hip") else 1
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(ds / "labelsTr" / f"{case}.nii.gz"))
    (study.pre / study.merged).mkdir(parents=True)
    splits = [{"train": ["hip_a", "hip_b", "knee_a"], "val": ["hip_c"]},
              {"train": ["hip_c", "knee_a"], "val": ["hip_a", "hip_b"]}]
    save_json(splits, study.pre / study.merged / "splits_final.json")
    # fold 0 trains on the two-part hips; fold 1's only training hip has one part (its held-out hips do not count)
    assert json.loads(study.fold_components(0).read_text()) == {"knee_femur": 1, "knee_tibia": 1, "hip_femur": 2}
    assert json.loads(study.fold_components(1).read_text()) == {"knee_femur": 1, "knee_tibia": 1, "hip_femur": 1}
    text = components_text(study.dir / "evaluation", [0, 1])
    assert "(fold 0: hip_femur 2; fold 1: none)" in text
    ev = study.dir / "evaluation"
    (ev / "components_fold3.json").write_text((ev / "components_fold0.json").read_text())
    assert "(folds 0, 3: hip_femur 2)" in components_text(ev, [0, 3])
    assert "largest component of every structure" in components_text(study.dir / "evaluation", [2])
    # held out in fold 1, hip_a and hip_b have two femur parts of 3 voxels each, but fold 1 keeps one
    comp = {f: ev / f"components_fold{f}.json" for f in (0, 1)}
    cut = json.loads(study.reference_parts([0, 1], comp).read_text())
    row = {"fold": 1, "label": 3, "name": "hip_femur", "components": 2, "kept": 1, "voxels": 6, "voxels_removed": 3}
    assert cut == {"folds": [0, 1], "structures": 3,
                   "cut": [{**row, "case": "hip_a"}, {**row, "case": "hip_b"}]}


@pytest.mark.parametrize("cut, limit, expected", [
    ([], 10, "perfect prediction (more 3D components, specks included, than it keeps; `reference_parts.json`): "
              "none of 7."),
    # most voxels removed first
    ([("a", 2, 1, 10, 1), ("b", 3, 2, 40, 15)], 10,
     ": 2 of 7: b s (3 components, 2 kept, 15 of 40 voxels outside them); a s (2 components, 1 kept, 1 of 10 "
     "voxels outside them)."),
    ([("a", 2, 1, 10, 1), ("b", 3, 2, 40, 15)], 1, ": 2 of 7: b s (3 components, 2 kept, 15 of 40 voxels outside "
                                                   "them) ..."),
])
def test_reference_cut_text(tmp_path, cut, limit, expected):
    rows = [{"case": c, "name": "s", "components": n, "kept": k, "voxels": v, "voxels_removed": r}
            for c, n, k, v, r in cut]
    save_json({"folds": [0], "structures": 7, "cut": rows}, tmp_path / "r.json")
    assert reference_cut_text(tmp_path / "r.json", limit).endswith(expected)
    assert reference_cut_text(tmp_path / "missing.json") == ""


@pytest.mark.parametrize("text, expected", [
    # quoted as printed in the tables: fine; rounded differently or typed: reported
    ("| a | 0.861 ± 0.034 |\n## Discussion\nDSL reaches 0.861 (+0.019, p=0.250).\n", ["0.019", "0.250"]),
    ("| a | 0.861 | −0.019 | p=0.250 |\n## Discussion\nDSL: 0.861, -0.019, p=0.250.\n", []),
    ("| a | 0.861 |\n## Discussion\nabout 0.86\n## Commands\nx 0.86\n", []),  # found after the section
    ("| a | 0.861 |\n## Discussion\nabout 0.86 in 3 folds\n", ["0.86", "3"]),
    ("no discussion 0.5\n", []),
])
def test_unsourced_numbers(text, expected):
    assert unsourced_numbers(text) == expected


STALE = ("> **Out of date?** This discussion quotes 1 number(s) that appear nowhere else in the report (0.86): "
         "it was probably written for earlier tables. Reread it against the tables above.\n\n")


@pytest.mark.parametrize("text, expected, stray", [
    # every number quoted from the tables: unchanged
    ("| 0.861 |\n## Discussion\n\nDSL 0.861.\n", "| 0.861 |\n## Discussion\n\nDSL 0.861.\n", []),
    # a stale number: the warning goes first in the section, the text stays
    ("| 0.861 |\n## Discussion\n\nDSL 0.86.\n## Commands\nx\n",
     "| 0.861 |\n## Discussion\n\n" + STALE + "DSL 0.86.\n## Commands\nx\n", ["0.86"]),
    ("| 0.861 |\n## Discussion\nDSL 0.86.\n", "| 0.861 |\n## Discussion\n\n" + STALE + "DSL 0.86.\n", ["0.86"]),
    # the warning of an earlier regeneration is replaced, not repeated ...
    ("| 0.861 |\n## Discussion\n\n" + STALE + "DSL 0.86.\n",
     "| 0.861 |\n## Discussion\n\n" + STALE + "DSL 0.86.\n", ["0.86"]),
    # ... and removed once the text quotes the tables again
    ("| 0.861 |\n## Discussion\n\n" + STALE + "DSL 0.861.\n", "| 0.861 |\n## Discussion\n\nDSL 0.861.\n", []),
    # the placeholder and a report without the section are left alone
    ("| 0.861 |\n" + PLACEHOLDER, "| 0.861 |\n" + PLACEHOLDER, []),
    ("no section 0.5\n", "no section 0.5\n", []),
])
def test_mark_stale_discussion(text, expected, stray):
    assert mark_stale_discussion(text) == (expected, stray)


def test_mark_stale_discussion_shortens_a_long_list():
    text = "| 1 |\n## Discussion\n\n" + " ".join(f"{i}.5" for i in range(15)) + "\n"
    marked, stray = mark_stale_discussion(text, limit=3)
    assert len(stray) == 15
    assert "quotes 15 number(s) that appear nowhere else in the report (0.5, 1.5, 2.5 and 12 more)" in marked


# ------------------------------------------------------------------------------------- smoke
@pytest.mark.slow
def test_smoke_whole_pipeline_on_tiny_data_and_resume(tmp_path):
    """prepare -> train (Individual x3, DSL; 1 fold, 2 iterations) -> evaluate -> report; then a
    second run finds everything done. results.md must hold the numbers of the evaluation files."""
    from nnunetv2_mtmd.evaluation.evaluate import format_stat

    src = _sources(tmp_path)
    work = tmp_path / "work"
    report = tmp_path / "docs" / "results.md"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("nnUNet_n_proc_DA", None)
    args = ["--workdir", str(work), "--sources", str(src), "--domains", "ankle", "knee", "shoulder", "--folds", "0",
            "--schemes", "Individual", "DSL", "--iterations", "2", "--epochs", "1", "--val-iterations", "1",
            "--ae-iterations", "2",
            "--batch-size", "6", "--spacing", "1", "--patch-size", "16", "--max-features", "32", "-np", "1",
            "--n-proc-da", "0", "--skip-verify", "--report", str(report), "--jobs", "2"]
    proc = _cli(args, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    state = json.loads((work / "state.json").read_text())
    train_keys = sorted(k for k in state["done"] if k.startswith("train:"))
    assert train_keys == ["train:fold0:DSL:Dataset950_MSKBonesMR",
                          "train:fold0:Individual:Dataset901_Ankle", "train:fold0:Individual:Dataset902_Knee",
                          "train:fold0:Individual:Dataset903_Shoulder"]
    # Individual splits hold out the merged split's cases of their domain
    merged = json.loads((work / "nnUNet_preprocessed" / "Dataset950_MSKBonesMR" / "splits_final.json").read_text())
    knee = json.loads((work / "nnUNet_preprocessed" / "Dataset902_Knee" / "splits_final.json").read_text())
    assert knee[0]["val"] == sorted(c[5:] for c in merged[0]["val"] if c.startswith("knee_"))
    # Individual predictions were gathered in the unified label space (knee femur = unified 3)
    knee_case = next(c for c in merged[0]["val"] if c.startswith("knee_"))
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(work / "predictions" / "Individual" / f"{knee_case}.nii.gz")))
    assert set(np.unique(pred)) <= {0, 3}
    # same budget: the Individual model ran 2 iterations, the multi-domain ones 3 x 2
    plans = json.loads((work / "nnUNet_preprocessed" / "Dataset950_MSKBonesMR" / "nnUNetPlans_study.json").read_text())
    assert plans["configurations"]["2d"]["patch_size"] == [16, 16]
    log = next((work / "nnUNet_results" / "Dataset950_MSKBonesMR" / "nnUNetTrainerMTMD_DSL_study__nnUNetPlans_study__2d"
                / "fold_0").glob("training_log_*.txt")).read_text()
    assert "1 epochs x 6 iterations = 6 iterations" in log
    # --jobs 2: two trainings at once, each with its share of the cores
    from nnunetv2_mtmd.study import THREADS_ENV, job_threads

    n = job_threads(2)
    assert f"{THREADS_ENV}={n}: torch uses {n} CPU thread(s)" in log
    assert "2 trainings at once" in proc.stderr

    # post-processed fold by fold, with the parts counted in the fold's training labels (one each here)
    comp = json.loads((work / "evaluation" / "components_fold0.json").read_text())
    assert comp == {"ankle_calcaneus": 1, "ankle_talus": 1, "knee_femur": 1, "shoulder_humerus": 1,
                    "shoulder_scapula": 1}
    for scheme in ("Individual", "DSL"):
        raw_cases = sorted(p.name for p in (work / "predictions" / scheme).glob("*.nii.gz"))
        pp = work / "predictions_postprocessed" / scheme
        held_out = sorted(f"{c}.nii.gz" for c in merged[0]["val"])
        assert sorted(p.name for p in pp.glob("*.nii.gz")) == raw_cases == held_out
        assert json.loads((pp / "postprocessing_mtmd_fold0.json").read_text())["components_kept"] == comp

    text = report.read_text()
    assert "## Results without post-processing" in text and "## Results with the paper's post-processing" in text
    assert text.count("### Sensitivity") == 2
    assert f"(code of commit {code_commit() or 'unknown'}, which wrote this report)" in text
    assert "Structures with k > 1 (fold 0: none)" in text
    ref_parts = json.loads((work / "evaluation" / "reference_parts.json").read_text())
    assert ref_parts["folds"] == [0] and ref_parts["structures"] >= len(merged[0]["val"])
    assert reference_cut_text(work / "evaluation" / "reference_parts.json") in text
    # neither an Individual model (remapped) nor DSL's per-domain heads can output another domain's label
    assert text.count("another domain (not scored above; post-processing sets them to background): none.") == 2
    assert "To be written by a human" in text
    for scheme in ("Individual", "DSL"):
        summ = json.loads((work / "evaluation" / scheme / "raw" / "summary.json").read_text())
        for metric in ("dice", "sensitivity"):
            assert format_stat(summ["domains"]["ankle"]["structures"]["talus"][metric], metric) in text
    compare = json.loads((work / "evaluation" / "compare_raw" / "compare.json").read_text())
    assert compare["reference_method"] == "Individual"
    pooled = next(r for r in compare["rows"] if r["method"] == "DSL" and r["group"] == "pooled")
    assert f"{pooled['mean']:.3f} [{pooled['p16']:.3f}, {pooled['p84']:.3f}]" in text
    evaluated = json.loads((work / "evaluation" / "evaluated.json").read_text())
    assert evaluated["folds"] == [0] and evaluated["best_multi_domain"] == "DSL"
    assert list((report.parent / "results").glob("tsne_*.png"))
    assert evaluated["embeddings_by_scheme"] == {"DSL": str(work / "embeddings" / "DSL_fold0")}
    with open(work / "embeddings" / "DSL_fold0" / "similarity.csv", newline="") as fh:
        sim = next(csv.DictReader(fh))
    inter = f"{float(sim['inter_mean']):.3f} ± {float(sim['inter_std']):.3f}"
    assert f"| {sim['stage_name']} | {sim['channels']} | {inter} |" in text
    # the per-case paired comparison, computed independently from the two metrics.csv files
    from nnunetv2_mtmd.evaluation.paired import load_case_scores

    ind, dsl = (load_case_scores(work / "evaluation" / s / "raw") for s in ("Individual", "DSL"))
    d = np.array([dsl[c][1] - ind[c][1] for c in sorted(ind)])
    pooled_cell = f"{d.mean():+.3f} ± {d.std():.3f} ({int((d > 1e-9).sum())}/{int((d < -1e-9).sum())} of {d.size})"
    assert pooled_cell in text
    assert "### Dice per fold" in text and "| Individual | " in text
    assert (report.parent / "results" / "case_dice_raw.png").is_file()
    assert (report.parent / "results" / "case_dice_postprocessed.png").is_file()

    # a discussion written into the report survives the regeneration of the resume
    head, _, _ = text.partition("## Discussion")
    report.write_text(head + "## Discussion\n\nDSL was no better here (2 iterations, 0.123456 Dice).\n")
    # resume with the recorded options: nothing is trained or evaluated again
    proc = _cli(["--workdir", str(work)], env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # ... with a visible warning, since 0.123456 (typed by hand) appears in no table
    assert report.read_text().endswith(
        "## Discussion\n\n> **Out of date?** This discussion quotes 1 number(s) that appear nowhere else in the "
        "report (0.123456): it was probably written for earlier tables. Reread it against the tables above.\n\n"
        "DSL was no better here (2 iterations, 0.123456 Dice).\n")
    assert "quotes numbers that appear nowhere else in the report" in proc.stderr and "0.123456" in proc.stderr
    assert proc.stderr.count("done (skipped)") == 4
    assert "already evaluated (skipped)" in proc.stderr
    again = json.loads((work / "state.json").read_text())
    assert again["seconds"] == state["seconds"] and again["commands"] == state["commands"]
