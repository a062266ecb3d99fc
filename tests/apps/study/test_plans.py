"""nnunetv2_mtmd/apps/study/plans.py: the budget travels in the plans, not in the environment (the study
plans record it, older plans get it before training, the measure stage has its own variant)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from nnunetv2_mtmd.apps.study import (
    BUDGET_ENV,
    MEASURE_ENV,
    MEASURE_PLANS_NAME,
    PLANS_BUDGET_KEY,
    PLANS_NAME,
    Study,
    StudyBudget,
    StudyError,
    StudyOptions,
    coarse_2d_plans,
)
from nnunetv2_mtmd.io import save_json
from tests.apps.study.helpers import make_sources, stock_plans, touch

BUDGET = {"iterations": 4, "epochs": 2, "batch_size": 6, "patch_size": 16, "max_features": 32}


def _study(tmp_path: Path, **kw) -> Study:
    return Study(StudyOptions(tmp_path / "w", sources_dir=make_sources(tmp_path, n_cases=1),
                              schemes=["Individual", "DSL"], folds=[0], budget=BUDGET, **kw))


def _plans_path(study: Study, dataset: str, name: str = PLANS_NAME) -> Path:
    return study.pre / dataset / f"{name}.json"


def _write_study_plans(study: Study, with_budget: bool) -> None:
    """Study plans as --stage prepare writes them, or (``with_budget`` False) as it did before they
    carried the budget."""
    for ds in study.ctx.datasets:
        plans = coarse_2d_plans(stock_plans(), study.budget)
        if not with_budget:
            plans.pop(PLANS_BUDGET_KEY)
        _plans_path(study, ds).parent.mkdir(parents=True, exist_ok=True)
        save_json(plans, _plans_path(study, ds))


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_a_new_studys_plans_record_its_budget(tmp_path):
    study = _study(tmp_path)
    for ds in study.ctx.datasets:
        (study.pre / ds).mkdir(parents=True)
        save_json(stock_plans(), study.pre / ds / "nnUNetPlans.json")
    info = study.preparation.plans_variant()
    assert sorted(info["plans"]) == sorted(study.ctx.datasets)
    for ds in study.ctx.datasets:
        plans = _read(_plans_path(study, ds))
        assert plans[PLANS_BUDGET_KEY] == study.budget.to_json()
        assert StudyBudget.from_plans(plans) == study.budget
        assert plans["configurations"]["2d"]["patch_size"] == [16, 16]


def test_training_env_carries_no_budget(tmp_path, monkeypatch):
    monkeypatch.setenv(BUDGET_ENV, json.dumps({"iterations": 99, "epochs": 1}))  # inherited: never passed on
    monkeypatch.setenv(MEASURE_ENV, "1")
    study = _study(tmp_path)
    for env in (study.env(), study.env(train=True)):
        assert BUDGET_ENV not in env and MEASURE_ENV not in env
        assert env["nnUNet_preprocessed"] == str(study.pre)


def _fake_training(study: Study, seen: list, done: bool = True):
    """A runner.command that records each training's command, environment and the budget its plans
    held at that moment, and leaves the files of a finished training."""

    def command(step, cmd, log_name, env):
        plans_name = cmd[cmd.index("-p") + 1]
        plans = _read(study.pre / cmd[1] / f"{plans_name}.json")
        seen.append({"cmd": cmd, "env": env, "budget": plans.get(PLANS_BUDGET_KEY)})
        fd = Path(env["nnUNet_results"]) / cmd[1] / f"{cmd[cmd.index('-tr') + 1]}__{plans_name}__2d" / f"fold_{cmd[3]}"
        if done:
            touch(fd / "checkpoint_final.pth")
            touch(fd / "validation" / "summary.json")
        return 1.0

    return command


def test_plans_without_the_budget_get_it_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv(BUDGET_ENV, json.dumps({"iterations": 99, "epochs": 1}))
    study = _study(tmp_path)
    _write_study_plans(study, with_budget=False)  # a work folder prepared before the plans carried the budget
    before = {ds: _read(_plans_path(study, ds)) for ds in study.ctx.datasets}
    seen: list = []
    monkeypatch.setattr(study.ctx.runner, "command", _fake_training(study, seen))
    study.train()
    assert len(seen) == 4  # 3 Individual models and DSL, each trained with the budget in its plans
    for s in seen:
        assert s["budget"] == study.budget.to_json()
        assert BUDGET_ENV not in s["env"] and MEASURE_ENV not in s["env"]
        assert s["cmd"][s["cmd"].index("-p") + 1] == PLANS_NAME
    for ds in study.ctx.datasets:
        after = _read(_plans_path(study, ds))
        assert after.pop(PLANS_BUDGET_KEY) == study.budget.to_json() and after == before[ds]  # nothing else changed
        assert not list(_plans_path(study, ds).parent.glob(".*.tmp"))  # written atomically
    notes = [c for c in study.state.data["commands"] if c.startswith("# record the study budget")]
    assert len(notes) == 4
    # plans that record it already are left alone
    mtimes = {ds: _plans_path(study, ds).stat().st_mtime_ns for ds in study.ctx.datasets}
    study.train()
    assert {ds: _plans_path(study, ds).stat().st_mtime_ns for ds in study.ctx.datasets} == mtimes


def test_plans_recording_another_budget_are_refused(tmp_path, monkeypatch):
    study = _study(tmp_path)
    _write_study_plans(study, with_budget=True)
    path = _plans_path(study, study.merged)
    save_json(StudyBudget(iterations=8, epochs=2).to_plans(_read(path)), path)
    seen: list = []
    monkeypatch.setattr(study.ctx.runner, "command", _fake_training(study, seen))
    with pytest.raises(StudyError, match=re.escape(f"{path} records the budget")):
        study.train()
    assert not seen


def test_measure_trains_with_its_own_plans_variant(tmp_path, monkeypatch):
    study = _study(tmp_path, measure_iterations=3)
    _write_study_plans(study, with_budget=True)
    seen: list = []
    fake = _fake_training(study, seen, done=False)

    def command(step, cmd, log_name, env):
        fake(step, cmd, log_name, env)
        fd = (Path(env["nnUNet_results"]) / cmd[1] / f"{cmd[cmd.index('-tr') + 1]}__{MEASURE_PLANS_NAME}__2d"
              / "fold_0")
        fd.mkdir(parents=True, exist_ok=True)
        (fd / "training_log_x.txt").write_text(
            "Study measure: epoch 1: train_step wall median 0.5000 s, process CPU median 0.4000 s over 3 "
            "iterations; load average 1.00\nEpoch time: 2.0 s\n")
        return 3.0

    monkeypatch.setattr(study.ctx.runner, "command", command)
    out = study.measure()
    mb = StudyBudget(**{**study.budget.to_json(), "iterations": 6, "epochs": 2, "ae_iterations": 6})
    assert out["budget"] == mb.to_json() and sorted(out["runs"]) == ["DSL", "Individual"]
    assert [s["budget"] for s in seen] == [mb.to_json()] * 4
    for s in seen:
        assert s["cmd"][s["cmd"].index("-p") + 1] == MEASURE_PLANS_NAME and "--disable_checkpointing" in s["cmd"]
        assert s["env"][MEASURE_ENV] == "1" and BUDGET_ENV not in s["env"]
        assert s["env"]["nnUNet_results"] == str(study.dir / "measure" / "nnUNet_results")
    for ds in study.ctx.datasets:
        study_plans, measure_plans = _read(_plans_path(study, ds)), _read(_plans_path(study, ds, MEASURE_PLANS_NAME))
        assert study_plans[PLANS_BUDGET_KEY] == study.budget.to_json()  # the study's plans keep the study budget
        assert measure_plans[PLANS_BUDGET_KEY] == mb.to_json() and measure_plans["plans_name"] == MEASURE_PLANS_NAME
        # the same preprocessed data
        assert measure_plans["configurations"] == study_plans["configurations"]
    assert json.loads((study.dir / "measure" / "speed.json").read_text())["seconds_per_iteration_wall"] == {
        "Individual": 0.5, "DSL": 0.5}
