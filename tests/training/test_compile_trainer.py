"""The trainers under ``torch.compile`` (issue 25): compile is nnU-Net's own decision, and nnU-Net's
``train_step`` (loss with MSC / MJAP read from the plain network under the wrapper, the gradient-norm
probe, backward, SGD) gives the same losses and weights with a compiled network as without.

nnU-Net compiles only on CUDA, so the compiled network is made here with ``torch.compile(...,
backend="aot_eager")`` (forward and backward traced, executed eagerly) on the initialised trainer,
exactly where nnU-Net's ``initialize`` puts it (``trainer.network``)."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch._dynamo as dynamo
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch._dynamo.eval_frame import OptimizedModule

import nnunetv2_mtmd.training.trainers as trainers
from tests.forked import forked
from tests.training.test_trainers import _batch, _tiny_trainer


def _mtmd_trainer_classes() -> list[type]:
    return [c for _, c in inspect.getmembers(trainers, inspect.isclass)
            if issubclass(c, nnUNetTrainer) and c.__module__.startswith("nnunetv2_mtmd")]


#: Trainers that keep compile off on purpose: the add-domain fine-tuning (its own trainer module; not
#: part of issue 25's change).
COMPILE_OFF = ("nnunetv2_mtmd.training.trainers.add_domain",)


def test_every_mtmd_trainer_compiles_where_nnunet_does():
    classes = [c for c in _mtmd_trainer_classes() if not c.__module__.startswith(COMPILE_OFF)]
    assert len(classes) > 10 and "nnUNetTrainerMTMD_DSL" in {c.__name__ for c in classes}
    assert [c.__name__ for c in classes if c._do_i_compile is not nnUNetTrainer._do_i_compile] == []


@pytest.mark.parametrize("env, expected", [(None, True), ("f", False), ("false", False), ("t", True)])
def test_compile_switch_on_cuda_honours_nnunet_compile(nnunet_dirs, monkeypatch, env, expected):
    tr = _tiny_trainer(nnunet_dirs, "nnUNetTrainerMTMD_DSL")  # built on CPU: stock nnU-Net never compiles there
    assert not isinstance(tr.network, OptimizedModule) and tr._do_i_compile() is False
    if env is None:
        monkeypatch.delenv("nnUNet_compile", raising=False)
    else:
        monkeypatch.setenv("nnUNet_compile", env)
    monkeypatch.setattr(tr, "device", torch.device("cuda"))  # only compared by the switch, nothing allocated
    assert tr._do_i_compile() is expected


@pytest.mark.parametrize("name", ["nnUNetTrainerMTMD_DSL_MSC", "nnUNetTrainerMTMD"])
@forked  # compiles: keeps autograd's threads out of the pytest process (tests/forked.py)
def test_train_step_with_a_compiled_network_matches_eager(nnunet_dirs, name):
    dynamo.reset()
    eager = _tiny_trainer(nnunet_dirs, name, grad_ratio_every=1)
    comp = _tiny_trainer(nnunet_dirs, name, grad_ratio_every=1)
    comp.network.load_state_dict(eager.network.state_dict())
    if eager.autoencoder is not None:
        comp.autoencoder.load_state_dict(eager.autoencoder.state_dict())
    n_graphs = []

    def counting_backend(gm, example_inputs):
        from torch._dynamo.backends.debugging import aot_eager

        n_graphs.append(1)
        return aot_eager(gm, example_inputs)

    plain = comp.network
    comp.network = torch.compile(comp.network, backend=counting_backend)
    assert comp._plain_network() is plain
    for i in range(3):
        le = eager.train_step(_batch(eager, seed=i))["loss"]
        lc = comp.train_step(_batch(comp, seed=i))["loss"]
        assert float(le) > 0 and lc == pytest.approx(le, rel=1e-5)
    for (key, pe), pc in zip(eager.network.state_dict().items(), plain.state_dict().values()):
        torch.testing.assert_close(pc, pe, rtol=1e-4, atol=1e-6, msg=key)
    me, mc = eager.loss.tracker.pop_means(), comp.loss.tracker.pop_means()
    assert me.keys() == mc.keys() and "msc" in me
    for key in me:
        assert mc[key] == pytest.approx(me[key], rel=1e-4, abs=1e-7), key
    ratios_e, ratios_c = eager.loss.grad_probe.ratios, comp.loss.grad_probe.ratios
    assert len(ratios_c["msc"]) == 3 and ratios_c["msc"] == pytest.approx(ratios_e["msc"], rel=1e-3)
    assert len(n_graphs) == 1  # three batches, one training-mode compilation
    dynamo.reset()
