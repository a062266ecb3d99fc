"""The trainer classes (nnunetv2_mtmd/training/trainers/) against the one scheme registry: every scheme's
trainer, ``_debug`` and ``_study`` class exists, is a literal ``class`` statement (searching for the
name finds its definition), and switches on exactly the scheme's regularizers, norm and heads; the
study trainers read their budget from the plans."""

from __future__ import annotations

import ast
import json
from types import SimpleNamespace

import numpy as np
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
    "nnUNetTrainerMTMD_AddDomain", "nnUNetTrainerMTMD_AddDomain_debug",
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
    assert len(trainers.__all__) == len(set(trainers.__all__)) == 34


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


# ---------------------------------------------------- issue 22: weights, gradient ratios, MSC temperatures


def _tiny_trainer(nnunet_dirs, name: str, **attrs):
    """An initialised trainer on the tiny plans (three stages, so that deep supervision has weights)
    without preprocessed data: a dummy file lets nnU-Net infer the dataset class."""
    from tests.reliability.model_folder import DATASET

    pre = nnunet_dirs["preprocessed"] / DATASET / "nnUNetPlans_2d"
    pre.mkdir(parents=True, exist_ok=True)
    (pre / "dummy.b2nd").write_text("")
    p = {**plans(), "continue_training": False}
    ak = p["configurations"]["2d"]["architecture"]["arch_kwargs"]
    ak.update(n_stages=3, features_per_stage=[4, 8, 16], kernel_sizes=[[3, 3]] * 3, strides=[[1, 1], [2, 2], [2, 2]],
              n_conv_per_stage=[1, 1, 1], n_conv_per_stage_decoder=[1, 1])
    cls = type(name, (getattr(trainers, name),), attrs) if attrs else getattr(trainers, name)
    tr = cls(p, "2d", 0, dataset_json(), torch.device("cpu"))
    tr.initialize()
    return tr


def _batch(tr, seed: int = 0) -> dict:
    """A domain-balanced batch of the tiny dataset (ankle labels 1, 2; knee label 3) with nnU-Net's targets."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    d = torch.tensor([0, 1, 0, 1])
    x = torch.randn(4, 2, 16, 16, generator=g)
    x[:, 1] = (d + 1).float().view(4, 1, 1)
    t = torch.zeros(4, 1, 16, 16)
    t[0, :, 4:10, 4:10], t[1, :, 4:10, 4:10], t[2, :, 2:8, 2:8], t[3, :, 8:12, 8:12] = 1, 3, 2, 3
    targets = [t if s[0] == 1 else F.interpolate(t, scale_factor=tuple(s), mode="nearest")
               for s in tr._get_deep_supervision_scales()]
    return {"data": x, "target": targets}


def _train_epoch(tr, iterations: int) -> None:
    tr.on_train_epoch_start()
    tr.on_train_epoch_end([tr.train_step(_batch(tr, i)) for i in range(iterations)])


def test_default_weights_lambda2_from_the_paper_lambda3_from_the_measured_ratio():
    t = trainers.nnUNetTrainerMTMD
    assert (t.lambda_msc, t.lambda_mjap, t.mjap_form, t.msc_temperature) == (0.5, 0.001, "l2", 0.1)
    assert t.grad_ratio_every == 50 and t.msc_learnable_temperature is False
    assert trainers.nnUNetTrainerMTMD_DSL_MSC_LT.msc_learnable_temperature is True
    assert trainers.nnUNetTrainerMTMD_DSL_MSC_LT.msc_temperature_range == (0.03, 1.0)


@pytest.mark.parametrize("name, msc, mjap", [
    ("nnUNetTrainerMTMD", True, True), ("nnUNetTrainerMTMD_DSL_MSC", True, False),
    ("nnUNetTrainerMTMD_DSL_MJAP", False, True), ("nnUNetTrainerMTMD_Shared", False, False)])
def test_epoch_end_logs_the_gradient_norm_ratios(nnunet_dirs, name, msc, mjap, tmp_path):
    """One log line of the parsed form per epoch, the medians in nnU-Net's logger (NaN for a term the
    scheme lacks), the MSC temperatures per scale, and progress_mtmd.png draws them."""
    from nnunetv2_mtmd.training.progress_plot import plot_loss_terms
    from tests.losses.test_gradient_ratio import LINE

    tr = _tiny_trainer(nnunet_dirs, name, grad_ratio_every=2)
    if tr.autoencoder is not None:
        assert tr.loss.mjap.form == "l2"
    _train_epoch(tr, 5)  # sampled at iterations 0, 2, 4
    lines = [ln.split(": ", 1)[1].strip() for ln in open(tr.log_file) if "Gradient-norm ratios" in ln]
    assert len(lines) == 1 and LINE.match(lines[0]), lines
    m = LINE.match(lines[0])
    logged = tr.logger.local_logger.my_fantastic_logging
    assert int(m.group(1)) == logged["grad_ratio_samples"][0] == (3 if msc or mjap else 0)
    for key, group, present in (("msc_grad_ratio", 2, msc), ("mjap_grad_ratio", 3, mjap)):
        value = logged[key][0]
        assert (np.isfinite(value) and value > 0) == present and (m.group(group) == "nan") == (not present)
        if present:
            assert float(m.group(group)) == pytest.approx(value, abs=5e-5)
    temps = logged["msc_temperature"][0]
    assert temps == ([0.1] * 5 if msc else [pytest.approx(np.nan, nan_ok=True)])
    plot_loss_terms(logged, 0, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 0


def test_learnable_temperatures_are_trained_logged_and_checkpointed(nnunet_dirs, tmp_path):
    from nnunetv2_mtmd.errors import InputDataError
    from nnunetv2_mtmd.training.trainers.schemes import MSC_TEMPERATURE_KEY

    tr = _tiny_trainer(nnunet_dirs, "nnUNetTrainerMTMD_DSL_MSC_LT")
    msc = tr.loss.msc
    theta = msc.temperatures.theta
    groups = tr.optimizer.param_groups
    assert len(groups) == 2 and groups[1]["params"] == [theta] and groups[1]["weight_decay"] == 0.0
    assert groups[0]["weight_decay"] == tr.weight_decay and theta.numel() == 5
    assert not any(p is theta for p in tr.network.parameters())  # not in the network's state dict
    tr.lr_scheduler.step(3)
    assert groups[1]["lr"] == groups[0]["lr"] < tr.initial_lr  # the same poly schedule
    before = theta.detach().clone()
    _train_epoch(tr, 3)
    assert theta.grad is not None and not torch.equal(theta.detach(), before)  # trained by nnU-Net's optimizer
    logged = tr.logger.local_logger.my_fantastic_logging["msc_temperature"][0]
    assert logged == pytest.approx(msc.temperature_values()) and all(0.03 <= t <= 1.0 for t in logged)
    assert any("MSC temperatures per scale:" in ln for ln in open(tr.log_file))

    ckpt = tmp_path / "checkpoint.pth"
    tr.save_checkpoint(str(ckpt))
    saved = torch.load(ckpt, weights_only=False)
    assert torch.equal(saved[MSC_TEMPERATURE_KEY]["theta"], theta.detach())
    tr2 = _tiny_trainer(nnunet_dirs, "nnUNetTrainerMTMD_DSL_MSC_LT")
    tr2.load_checkpoint(str(ckpt))  # what --c does
    theta2 = tr2.loss.msc.temperatures.theta
    assert torch.equal(theta2.detach(), theta.detach())
    assert tr2.optimizer.param_groups[1]["params"][0] is theta2  # the optimizer trains the restored tensor
    assert torch.equal(tr2.optimizer.state[theta2]["momentum_buffer"], tr.optimizer.state[theta]["momentum_buffer"])
    other = _tiny_trainer(nnunet_dirs, "nnUNetTrainerMTMD_DSL_MSC_LT", msc_temperature_range=(0.05, 0.5))
    with pytest.raises(InputDataError, match="range"):
        other.load_checkpoint(str(ckpt))


@pytest.mark.parametrize("class_seed, plans, expected", [
    (None, {}, None),                              # stock behaviour: unseeded
    (None, {"mtmd_training_seed": 7}, 7),          # the demo's plans
    (2, {"mtmd_training_seed": 7}, 2),             # the class (e.g. DSL_seed2) wins
    (None, {"mtmd_training_seed": 0}, 0),
])
def test_training_seed_from_class_or_plans(class_seed, plans, expected):
    from nnunetv2_mtmd.training.trainers.base import training_seed

    assert training_seed(class_seed, plans) == expected


@pytest.mark.parametrize("value", [-1, 1.5, "7", True])
def test_a_bad_plans_seed_names_the_key(value):
    from nnunetv2_mtmd.errors import InputDataError
    from nnunetv2_mtmd.training.trainers.base import training_seed

    with pytest.raises(InputDataError, match=r"plans\['mtmd_training_seed'\] must be a non-negative integer"):
        training_seed(None, {"mtmd_training_seed": value})
