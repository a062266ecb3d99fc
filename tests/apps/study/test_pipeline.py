"""nnunetv2_mtmd/apps/study/pipeline.py and stages/: recorded options, parallel training and its order, evaluation
steps, the budget in the plans."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_mtmd.apps.study import (
    SCHEME_TRAINERS,
    StudyError,
    components_text,
    union_folders,
)
from nnunetv2_mtmd.errors import InputDataError
from nnunetv2_mtmd.io import save_json
from tests.apps.study.helpers import make_sources, small_spec


def test_study_takes_recorded_options_and_refuses_a_different_budget(tmp_path):
    from nnunetv2_mtmd.apps.study import Study, StudyOptions, study_command

    src = make_sources(tmp_path, n_cases=1)
    work = tmp_path / "work"
    first = Study(StudyOptions(work, sources_dir=src, schemes=["Individual", "DSL"], folds=[1],
                               budget={"iterations": 4, "epochs": 2}, report=tmp_path / "docs" / "results.md"))
    first.run("report")  # records the configuration; nothing evaluated yet, so no report
    assert not first.report_path.exists()
    again = Study(StudyOptions(work))  # a plain re-run: sources, schemes, folds, budget, report as recorded
    assert again.sources_dir == src.resolve() and again.schemes == ["Individual", "DSL"] and again.folds == [1]
    assert (again.budget.iterations, again.budget.epochs, again.budget.batch_size) == (4, 2, 12)
    assert study_command(again.ctx)[3:] == [
        "--workdir", str(work.resolve()), "--sources", str(src.resolve()), "--domains", "Ankle", "Knee", "Shoulder",
        "--folds", "1", "--schemes", "Individual", "DSL", "--later", "--iterations", "4", "--epochs", "2",
        "--val-iterations", "2", "--ae-iterations", "300", "--batch-size", "12", "--spacing", "4",
        "--patch-size", "64", "--max-features", "256", "--base-features", "16", "--fixed-orientation",
        "--report", str((tmp_path / "docs" / "results.md").resolve())]
    other = Study(StudyOptions(work, budget={"iterations": 6, "epochs": 2}))
    with pytest.raises(InputDataError, match="budget.iterations: recorded 4, now 6"):
        other.run("report")
    stock_da = Study(StudyOptions(tmp_path / "work2", sources_dir=src, budget={"fixed_orientation": False}))
    assert study_command(stock_da.ctx)[-3:] == ["--no-fixed-orientation", "--report", str(stock_da.report_path)]
    assert "study stage 'report'" in (work / "study_log.txt").read_text()


@pytest.mark.parametrize("jobs, cores, threads", [(1, 2, 2), (2, 2, 1), (3, 2, 1), (2, 16, 8), (3, 16, 5)])
def test_job_threads(jobs, cores, threads):
    from nnunetv2_mtmd.apps.study import job_threads

    assert job_threads(jobs, cores) == threads


def test_training_env_limits_threads_only_with_jobs(tmp_path, monkeypatch):
    from nnunetv2_mtmd.apps.study import THREADS_ENV, Study, StudyOptions, job_threads

    src = make_sources(tmp_path, n_cases=1)
    monkeypatch.setenv(THREADS_ENV, "7")  # inherited from the caller: never passed on unchanged
    one = Study(StudyOptions(tmp_path / "w1", sources_dir=src))
    assert THREADS_ENV not in one.env(train=True) and THREADS_ENV not in one.env()
    assert one.env(train=True)["nnUNet_n_proc_DA"] == "0"
    two = Study(StudyOptions(tmp_path / "w2", sources_dir=src, jobs=2))
    env = two.env(train=True)
    n = str(job_threads(2))
    assert (env[THREADS_ENV], env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"]) == (n, n, n)
    assert THREADS_ENV not in two.env()  # planning, preprocessing, evaluation keep their threads


def test_each_study_logs_to_its_own_work_folder(tmp_path):
    from nnunetv2_mtmd.apps.study import Study, StudyOptions

    src = make_sources(tmp_path, n_cases=1)
    for name in ("a", "b", "a"):  # b after a, then a again: each run's lines in its own folder only
        Study(StudyOptions(tmp_path / name, sources_dir=src, schemes=["Individual"], folds=[0],
                           report=tmp_path / name / "r.md")).run("report")
    log_a, log_b = ((tmp_path / n / "study_log.txt").read_text() for n in ("a", "b"))
    assert log_a.count("study stage 'report'") == 2 and log_b.count("study stage 'report'") == 1
    assert str(tmp_path / "b") not in log_a and str(tmp_path / "a") not in log_b
    handlers = [h for h in logging.getLogger("nnunetv2_mtmd").handlers if getattr(h, "_mtmd_study", False)]
    assert [h.baseFilename for h in handlers] == [str((tmp_path / "a" / "study_log.txt").resolve())]


class _FakeTrainings:
    """A Study whose trainings are sleeps: records how many overlap and when folds are evaluated."""

    def __init__(self, study, runs, fail=None, slow_waits_for_evaluation=False, done_before=()):
        self.study, self.lock, self.running, self.max_running = study, threading.Lock(), 0, 0
        self.done, self.events, self.fail = set(done_before), [], fail
        # "slow" ends only after the other fold was evaluated: no race with the scheduler (CI runs
        # this under load, where fixed sleeps let both folds complete before the first evaluation)
        self.slow_waits, self.evaluated = slow_waits_for_evaluation, threading.Event()
        study.training.pending = lambda: [r for r in runs if tuple(r[:2]) not in self.done]
        study.training.train_one = self.train_one
        folds = sorted({r[0] for r in runs})
        study.ctx.evaluation_plan = lambda: (
            [fold for fold in folds if all((f, s) in self.done for f, s, *_ in runs if f == fold)], ["a"])
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
    from nnunetv2_mtmd.apps.study import Study, StudyOptions

    runs = [(0, "a", "D", "T", "new"), (0, "slow", "D", "T", "new"), (1, "a", "D", "T", "new"),
            (1, "b", "D", "T", "new")]
    study = Study(StudyOptions(tmp_path / "w", sources_dir=make_sources(tmp_path, n_cases=1), folds=[0, 1], jobs=jobs))
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
    from nnunetv2_mtmd.apps.study import Study, StudyOptions

    # with jobs, both fold-1 models wait until fold 0 is evaluated: they cannot end first
    runs = [(0, "a", "D", "T", "new"), (1, "slow", "D", "T", "new"), (1, "slow_b", "D", "T", "new")]
    study = Study(StudyOptions(tmp_path / "w", sources_dir=make_sources(tmp_path, n_cases=1), folds=[0, 1], jobs=jobs))
    fake = _FakeTrainings(study, runs, slow_waits_for_evaluation=jobs > 1, done_before={(0, "a")})
    study.train(evaluate_as_we_go=True)
    evals = [e[1] for e in fake.events if e[0] == "evaluate"]
    assert evals == [[(0, "a")], [(0, "a"), (1, "slow"), (1, "slow_b")]]  # fold 0 first, before any training ended
    assert fake.max_running == jobs


def test_parallel_train_failure_stops_new_trainings_and_raises(tmp_path):
    from nnunetv2_mtmd.apps.study import Study, StudyOptions

    runs = [(0, "a", "D", "T", "new"), (0, "slow", "D", "T", "new")] + [(1, f"s{i}", "D", "T", "new")
                                                                      for i in range(6)]
    study = Study(StudyOptions(tmp_path / "w", sources_dir=make_sources(tmp_path, n_cases=1), folds=[0, 1], jobs=2))
    fake = _FakeTrainings(study, runs, fail=(0, "a"))
    with pytest.raises(StudyError, match="fold 0 a failed"):
        study.train(evaluate_as_we_go=True)
    assert (0, "slow") in fake.done  # the running one finished
    assert len(fake.done) < len(runs)  # the queued ones were not started
    assert not [e for e in fake.events if e[0] == "evaluate"]


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


def test_embeddings_are_reused_while_the_model_is_the_same(tmp_path, monkeypatch):
    """Reused while the model's done record is the one they were computed from (a retrained model has a
    new one), so also for a model restored from an archive without its checkpoint."""
    from nnunetv2_mtmd.apps.study import Study, StudyOptions
    from nnunetv2_mtmd.apps.study.fingerprint import model_key

    study = Study(StudyOptions(tmp_path / "w", sources_dir=make_sources(tmp_path, n_cases=1)))
    calls = []

    def fake_run_cmd(step, cmd, log_name, env=None):  # the command's output: what the reuse check looks for
        calls.append(cmd[cmd.index("-tr") + 1])
        out = Path(cmd[cmd.index("-o") + 1])
        out.mkdir(parents=True, exist_ok=True)
        (out / "similarity.csv").write_text("stage\n")
        return 0.0

    monkeypatch.setattr(study.ctx.runner, "command", fake_run_cmd)
    done = study.state.data["done"]
    for s in ("DSL", "DSL_MSC"):
        done[model_key(0, s, study.merged)] = {"at": "2026-12-01T10:00:00"}
    dirs = study.evaluation.embeddings(0, ["DSL", "DSL_MSC"])
    assert calls == [SCHEME_TRAINERS["DSL"], SCHEME_TRAINERS["DSL_MSC"]]
    assert dirs == {s: study.dir / "embeddings" / f"{s}_fold0" for s in ("DSL", "DSL_MSC")}
    # a later fold's evaluation: same models -> nothing recomputed
    assert study.evaluation.embeddings(0, ["DSL", "DSL_MSC"]) == dirs and len(calls) == 2
    # a retrained model (new done record) and a deleted output folder are computed again
    done[model_key(0, "DSL", study.merged)] = {"at": "2026-12-01T11:00:00"}
    shutil.rmtree(dirs["DSL_MSC"])
    study.evaluation.embeddings(0, ["DSL", "DSL_MSC"])
    assert calls[2:] == [SCHEME_TRAINERS["DSL"], SCHEME_TRAINERS["DSL_MSC"]]


def test_fold_components_counts_parts_in_the_folds_training_labels_only(tmp_path):
    from nnunetv2_mtmd.apps.study import Study, StudyOptions
    from tests.evaluation.test_evaluate import merged_dataset_json

    study = Study(StudyOptions(tmp_path / "w", sources_dir=make_sources(tmp_path, n_cases=1)))
    ds = study.raw / study.merged
    (ds / "labelsTr").mkdir(parents=True)
    (ds / "dataset.json").write_text(json.dumps(merged_dataset_json(small_spec(), 4)))
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
    ev_stage = study.evaluation
    assert json.loads(ev_stage.fold_components(0).read_text()) == {"knee_femur": 1, "knee_tibia": 1, "hip_femur": 2}
    assert json.loads(ev_stage.fold_components(1).read_text()) == {"knee_femur": 1, "knee_tibia": 1, "hip_femur": 1}
    text = components_text(study.dir / "evaluation", [0, 1])
    assert "(fold 0: hip_femur 2; fold 1: none)" in text
    ev = study.dir / "evaluation"
    (ev / "components_fold3.json").write_text((ev / "components_fold0.json").read_text())
    assert "(folds 0, 3: hip_femur 2)" in components_text(ev, [0, 3])
    assert "largest component of every structure" in components_text(study.dir / "evaluation", [2])
    # held out in fold 1, hip_a and hip_b have two femur parts of 3 voxels each, but fold 1 keeps one
    comp = {f: ev / f"components_fold{f}.json" for f in (0, 1)}
    cut = json.loads(study.evaluation.reference_parts([0, 1], comp).read_text())
    row = {"fold": 1, "label": 3, "name": "hip_femur", "components": 2, "kept": 1, "voxels": 6, "voxels_removed": 3}
    assert cut == {"folds": [0, 1], "structures": 3,
                   "cut": [{**row, "case": "hip_a"}, {**row, "case": "hip_b"}]}


def test_runner_records_library_steps_and_names_the_step_of_a_failure(tmp_path, capsys):
    from nnunetv2_mtmd.apps.study import StudyRunner, StudyState

    state = StudyState(tmp_path / "state.json")
    runner = StudyRunner(tmp_path, state)
    calls = []
    runner.library("compare", ["nnUNetv2_mtmd_compare", "a b", "-o", "out"], lambda: calls.append(1))
    assert calls == [1] and state.data["commands"] == ["nnUNetv2_mtmd_compare 'a b' -o out"]

    def fail():
        raise InputDataError("no slices.csv in a")

    with pytest.raises(StudyError, match="Step 'compare' failed: nnUNetv2_mtmd_compare x\nno slices.csv in a"):
        runner.library("compare", ["nnUNetv2_mtmd_compare", "x"], fail)
    with pytest.raises(StudyError, match=r"Step 'merge' failed \(exit code 1\) after"):
        runner.command("merge", ["false"], "prepare", dict(os.environ))
    assert (tmp_path / "logs" / "prepare.txt").read_text().endswith("$ false\n")
    dry = StudyRunner(tmp_path / "dry", StudyState(tmp_path / "dry" / "state.json"), dry=True)
    dry.library("compare", ["nnUNetv2_mtmd_compare", "x"], fail)  # printed, not run
    dry.note("a Python step")
    assert capsys.readouterr().out == "nnUNetv2_mtmd_compare x\n# a Python step\n"
    assert not (tmp_path / "dry").exists()


class _FakeQueue:
    """The real train stage (run order, pending models, evaluation plan) over fake ``nnUNetv2_train``
    runs: a model is done once its fake training ran; records the order and each evaluation's plan."""

    def __init__(self, study, done=()):
        ctx = study.ctx
        self.done, self.order, self.evaluations = set(done), [], []
        ctx.run_status = lambda dataset, trainer, fold: "done" if (fold, trainer, dataset) in self.done else "new"
        study.training.train_one = self.train_one
        study.evaluate = lambda: self.evaluations.append((len(self.order), ctx.evaluation_plan()))
        study.report = lambda: None
        (ctx.pre / ctx.merged).mkdir(parents=True)
        save_json([], ctx.pre / ctx.merged / "splits_final.json")  # the plan needs the merged split

    def train_one(self, fold, scheme, dataset, trainer, status):
        assert status == "new"
        self.order.append((fold, scheme, dataset))
        self.done.add((fold, trainer, dataset))


def _models(study, folds, schemes):
    return [(f, s, d) for f in folds for s in schemes for _, d, _ in study.ctx.runs(f, [s])]


def test_default_run_order_main_schemes_and_replicate_first_then_the_later_ones(tmp_path):
    """A new study: every fold of Individual, DSL, DSL+MJAP, DSL+MSC+MJAP, DSL+MSC and the DSL replicate
    before any fold of Shared and Shared+MJAP; each fold evaluated when its main models are done, and
    again when a later scheme has finished every evaluated fold."""
    from nnunetv2_mtmd.apps.study import DEFAULT_LATER, DEFAULT_SCHEMES, Study, StudyOptions

    study = Study(StudyOptions(tmp_path / "w", sources_dir=make_sources(tmp_path, n_cases=1)))
    main = ["Individual", "DSL", "DSL_MJAP", "DSL_MSC_MJAP", "DSL_MSC", "DSL_seed2"]
    assert list(DEFAULT_SCHEMES) == [*main, *DEFAULT_LATER] and list(DEFAULT_LATER) == ["Shared", "Shared_MJAP"]
    assert study.ctx.later == ["Shared", "Shared_MJAP"] and study.folds == [0, 1, 2]
    fake = _FakeQueue(study)
    study.train(evaluate_as_we_go=True)
    expected = _models(study, [0, 1, 2], main) + _models(study, [0, 1, 2], ["Shared", "Shared_MJAP"])
    assert fake.order == expected
    assert fake.order[:4] == [(0, "Individual", "Dataset901_Ankle"), (0, "Individual", "Dataset902_Knee"),
                              (0, "Individual", "Dataset903_Shoulder"), (0, "DSL", study.merged)]
    table_main = ["Individual", "DSL", "DSL_MSC", "DSL_MJAP", "DSL_MSC_MJAP", "DSL_seed2"]  # registry order
    with_shared = ["Individual", "Shared", *table_main[1:]]
    # 8 models per fold (3 Individual + 5); the later tier: fold 0 Shared, Shared+MJAP, fold 1 ..., fold 2 Shared
    assert fake.evaluations == [(8, ([0], table_main)), (16, ([0, 1], table_main)), (24, ([0, 1, 2], table_main)),
                                (29, ([0, 1, 2], with_shared)),
                                (30, ([0, 1, 2], ["Individual", "Shared", "Shared_MJAP", *table_main[1:]]))]


def test_run_order_follows_schemes_with_individual_first_and_later_last(tmp_path):
    from nnunetv2_mtmd.apps.study import Study, StudyOptions

    study = Study(StudyOptions(tmp_path / "w", sources_dir=make_sources(tmp_path, n_cases=1), folds=[0, 1],
                               schemes=["DSL_MSC", "Shared", "Individual", "DSL"], later=["Shared"]))
    fake = _FakeQueue(study, done={(1, "nnUNetTrainerMTMD_DSL_study", study.merged)})
    study.train(evaluate_as_we_go=True)
    assert fake.order == (_models(study, [0], ["Individual", "DSL_MSC", "DSL"])
                          + _models(study, [1], ["Individual", "DSL_MSC"]) + _models(study, [0, 1], ["Shared"]))
    assert [e[1][0] for e in fake.evaluations] == [[0], [0, 1], [0, 1]]
    assert fake.evaluations[-1][1][1] == ["Individual", "Shared", "DSL", "DSL_MSC"]
    # --stage status lists the models in the same order (the remaining-time estimate assumes it)
    rows = study.status.rows()
    assert [(r["fold"], r["scheme"]) for r in rows] == [(f, s) for f, s, _ in _models(study, [0], [
        "Individual", "DSL_MSC", "DSL"]) + _models(study, [1], ["Individual", "DSL_MSC", "DSL"])] + [
        (0, "Shared"), (1, "Shared")]
    assert [r["later"] for r in rows].count(True) == 2


def test_a_fold_finished_before_the_run_is_evaluated_first(tmp_path):
    from nnunetv2_mtmd.apps.study import SCHEME_TRAINERS, Study, StudyOptions

    study = Study(StudyOptions(tmp_path / "w", sources_dir=make_sources(tmp_path, n_cases=1), folds=[0, 1],
                               schemes=["Individual", "DSL", "Shared"]))
    done = {(0, SCHEME_TRAINERS[s], d) for _, s, d in _models(study, [0], ["Individual", "DSL"])}
    fake = _FakeQueue(study, done=done)
    study.train(evaluate_as_we_go=True)
    assert fake.evaluations[0] == (0, ([0], ["Individual", "DSL"]))  # before any training
    assert fake.order[0] == (1, "Individual", "Dataset901_Ankle")  # fold 1's main models before fold 0's Shared
    assert fake.evaluations[-1][1] == ([0, 1], ["Individual", "Shared", "DSL"])


def test_later_schemes_are_recorded_and_checked(tmp_path, caplog):
    from nnunetv2_mtmd.apps.study import Study, StudyOptions, study_command

    src = make_sources(tmp_path, n_cases=1)
    work = tmp_path / "w"
    with pytest.raises(InputDataError, match="--later names Individual, the reference"):
        Study(StudyOptions(work, sources_dir=src, later=["Individual"]))
    with pytest.raises(InputDataError, match=r"Unknown scheme\(s\) \['Sharde'\] in --later"):
        Study(StudyOptions(work, sources_dir=src, later=["Sharde"]))
    Study(StudyOptions(work, sources_dir=src, folds=[0])).run("report")  # a new study: the default order
    state = json.loads((work / "state.json").read_text())
    assert state["later"] == ["Shared", "Shared_MJAP"] and state["schemes"][-2:] == ["Shared", "Shared_MJAP"]
    again = Study(StudyOptions(work))
    assert again.ctx.later == ["Shared", "Shared_MJAP"]
    assert study_command(again.ctx)[study_command(again.ctx).index("--later"):][:3] == ["--later", "Shared",
                                                                                        "Shared_MJAP"]
    Study(StudyOptions(work, later=[])).run("report")  # --later alone: every scheme is a main scheme
    assert json.loads((work / "state.json").read_text())["later"] == [] and Study(StudyOptions(work)).ctx.later == []
    with caplog.at_level(logging.WARNING):
        Study(StudyOptions(tmp_path / "w2", sources_dir=src, schemes=["Individual", "DSL"], later=["Shared"]))
    assert "--later names ['Shared'], which are not among the schemes to train (Individual DSL)" in caplog.text


def test_a_full_schemes_list_sets_the_recorded_order_and_a_subset_adds_to_it(tmp_path):
    """A work folder prepared with another scheme order (an older default) takes the rerun's order when
    its --schemes names every recorded scheme; a later plain run keeps it."""
    from nnunetv2_mtmd.apps.study import DEFAULT_SCHEMES, Study, StudyOptions

    src = make_sources(tmp_path, n_cases=1)
    work = tmp_path / "w"
    old = ["Individual", "Shared", "DSL", "DSL_MSC", "DSL_MJAP", "DSL_MSC_MJAP"]  # the default before the rerun
    Study(StudyOptions(work, sources_dir=src, schemes=old, folds=[0], later=[])).run("report")
    Study(StudyOptions(work, schemes=list(DEFAULT_SCHEMES), later=["Shared", "Shared_MJAP"])).run("report")
    again = Study(StudyOptions(work))
    assert again.schemes == list(DEFAULT_SCHEMES) and again.ctx.all_schemes == list(DEFAULT_SCHEMES)
    assert list(dict.fromkeys(s for _, s, *_ in again.ctx.train_order())) == list(DEFAULT_SCHEMES)
    Study(StudyOptions(work, schemes=["DSL_SSC"])).run("report")  # a subset: added at the end
    assert Study(StudyOptions(work)).schemes == [*DEFAULT_SCHEMES, "DSL_SSC"]
