"""The trainer classes (nnunetv2_mtmd/training/trainers/) against the one scheme registry: every scheme's
trainer, ``_debug`` and ``_study`` class exists, is a literal ``class`` statement (searching for the
name finds its definition), and switches on exactly the scheme's regularizers, norm and heads; the
study trainers read their budget from the plans."""

from __future__ import annotations

import ast
import json
from types import SimpleNamespace

import pytest
import torch

import nnunetv2_mtmd.training.trainers as trainers
from nnunetv2_mtmd.schemes import MULTI_DOMAIN, SCHEMES
from nnunetv2_mtmd.training.budget import BUDGET_ENV, PLANS_BUDGET_KEY, StudyBudget
from tests.conftest import REPO
from tests.reliability.model_folder import dataset_json, plans

#: Every trainer name the plugin has ever documented or written into a results folder name (git history
#: of docs, tests and code): each must stay findable by nnU-Net's lookup.
HISTORICAL_TRAINERS = [
    "nnUNetTrainerMTMD", "nnUNetTrainerMTMD_1epoch", "nnUNetTrainerMTMD_5epochs", "nnUNetTrainerMTMD_DSL",
    "nnUNetTrainerMTMD_DSL_MJAP", "nnUNetTrainerMTMD_DSL_MJAP_debug", "nnUNetTrainerMTMD_DSL_MJAP_study",
    "nnUNetTrainerMTMD_DSL_MSC", "nnUNetTrainerMTMD_DSL_MSC_debug", "nnUNetTrainerMTMD_DSL_MSC_study",
    "nnUNetTrainerMTMD_DSL_SSC", "nnUNetTrainerMTMD_DSL_SSC_debug", "nnUNetTrainerMTMD_DSL_SSC_study",
    "nnUNetTrainerMTMD_DSL_debug", "nnUNetTrainerMTMD_DSL_study", "nnUNetTrainerMTMD_Shared",
    "nnUNetTrainerMTMD_Shared_MJAP", "nnUNetTrainerMTMD_Shared_MJAP_debug", "nnUNetTrainerMTMD_Shared_MJAP_study",
    "nnUNetTrainerMTMD_Shared_debug", "nnUNetTrainerMTMD_Shared_study", "nnUNetTrainerMTMD_debug",
    "nnUNetTrainerMTMD_demo", "nnUNetTrainerMTMD_resumetest", "nnUNetTrainerMTMD_study", "nnUNetTrainer_study",
]


def _literal_classes() -> dict[str, str]:
    """Class name -> file of every top-level ``class`` statement in the trainers package."""
    out = {}
    for path in sorted((REPO / "nnunetv2_mtmd" / "training" / "trainers").glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                out[node.name] = path.name
    return out


def test_every_exported_trainer_is_a_literal_class_statement():
    literal = _literal_classes()
    missing = [n for n in trainers.__all__ if n not in literal]
    assert not missing, f"trainers made without a class statement (searching their name finds nothing): {missing}"
    assert len(trainers.__all__) == len(set(trainers.__all__)) == 32


def test_every_scheme_has_its_trainer_debug_and_study_classes():
    for s in SCHEMES:
        names = [s.study_trainer] + ([s.trainer, s.debug_trainer] if s.multi_domain else [])
        for name in names:
            assert name in trainers.__all__, f"{s.name}: {name} is not exported to nnU-Net's trainer lookup"
            cls = getattr(trainers, name)
            assert cls.__name__ == name
        if s.multi_domain:  # the debug and study classes run the scheme's own trainer
            assert issubclass(getattr(trainers, s.debug_trainer), getattr(trainers, s.trainer))
            assert issubclass(getattr(trainers, s.study_trainer), getattr(trainers, s.trainer))


@pytest.mark.parametrize("name", HISTORICAL_TRAINERS)
def test_every_trainer_name_ever_written_resolves(name):
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    # the same lookup as nnUNetv2_train / nnUNetv2_predict, in the plugin's trainer package
    found = recursive_find_python_class(str(REPO / "nnunetv2_mtmd" / "training" / "trainers"), name,
                                        "nnunetv2_mtmd.training.trainers")
    assert found is not None and found.__name__ == name


def test_seed_option_seeds_every_generator(nnunet_dirs):
    import random

    import numpy as np

    draws = []
    for _ in range(2):
        trainers.nnUNetTrainerMTMD_DSL_seed2(_study_plans(None), "2d", 0, dataset_json(), torch.device("cpu"))
        draws.append((random.random(), float(np.random.rand()), float(torch.rand(1))))
    assert draws[0] == draws[1]
    assert trainers.nnUNetTrainerMTMD_DSL_seed2.seed == 2 and trainers.nnUNetTrainerMTMD_DSL.seed is None


@pytest.mark.parametrize("scheme", MULTI_DOMAIN, ids=lambda s: s.name)
def test_trainer_switches_match_the_registry(scheme):
    cls = getattr(trainers, scheme.trainer)
    msc = getattr(cls, "lambda_msc", 0.0)
    assert (msc > 0) == (scheme.msc is not None)
    if scheme.msc is not None:
        assert cls.msc_stages == scheme.msc
    assert (getattr(cls, "lambda_mjap", 0.0) > 0) == scheme.mjap
    overrides = cls.network_overrides_for(SimpleNamespace(patch_size=[64, 64]))
    assert overrides.get("head_mode", "per_domain") == scheme.heads
    assert ("BatchNorm2d" in overrides.get("norm_op", "")) == (scheme.norm == "shared")


def _study_plans(budget: StudyBudget | None) -> dict:
    p = {**plans(), "continue_training": False}
    return budget.to_plans(p) if budget is not None else p


def test_study_trainer_reads_the_budget_from_the_plans(nnunet_dirs, monkeypatch):
    recorded = StudyBudget(iterations=60, epochs=3, val_iterations=2, ae_iterations=7, batch_size=4)
    monkeypatch.setenv(BUDGET_ENV, json.dumps(StudyBudget(iterations=900, epochs=9).to_json()))  # plans win
    t = trainers.nnUNetTrainerMTMD_study(_study_plans(recorded), "2d", 0, dataset_json(), torch.device("cpu"))
    k = t.domain_spec.num_domains
    assert (t.num_epochs, t.num_iterations_per_epoch, t.num_val_iterations_per_epoch) == (3, k * 60 // 3, 2 * k)
    assert t.ae_iterations == 7 and t.study_budget == recorded


def test_study_trainer_without_a_recorded_budget_falls_back_to_env_then_defaults(nnunet_dirs, monkeypatch):
    monkeypatch.setenv(BUDGET_ENV, json.dumps(StudyBudget(iterations=90, epochs=9).to_json()))
    t = trainers.nnUNetTrainerMTMD_DSL_study(_study_plans(None), "2d", 0, dataset_json(), torch.device("cpu"))
    assert (t.num_epochs, t.num_iterations_per_epoch) == (9, t.domain_spec.num_domains * 10)
    monkeypatch.delenv(BUDGET_ENV)
    t = trainers.nnUNetTrainerMTMD_DSL_study(_study_plans(None), "2d", 0, dataset_json(), torch.device("cpu"))
    assert t.study_budget == StudyBudget()


def test_recorded_budget_round_trip_and_bad_value():
    b = StudyBudget(iterations=120, epochs=4)
    p = b.to_plans({"plans_name": "x"})
    assert p[PLANS_BUDGET_KEY] == b.to_json() and StudyBudget.from_plans(p) == b
    assert StudyBudget.from_plans({"plans_name": "x"}) is None
    with pytest.raises(ValueError, match=rf"plans\['{PLANS_BUDGET_KEY}'\] must be a JSON object"):
        StudyBudget.from_plans({PLANS_BUDGET_KEY: [1, 2]})
    with pytest.raises(ValueError, match="unknown budget keys \\['iters'\\]"):
        StudyBudget.from_plans({PLANS_BUDGET_KEY: {"iters": 3}})
