"""Adding a domain to a trained model, in process (issue 24, part 1): what nnUNetv2_mtmd_add_domain writes,
its bad inputs (nothing half-written), the weight transfer, the row masks, AdaBN, and the trainer's
bitwise guarantee under weight decay and momentum. The console-script run is
tests/test_add_domain_end_to_end.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunetv2_mtmd.errors import DomainSpecError, InputDataError, OutputExistsError
from nnunetv2_mtmd.inference.model import ModelFolderError
from nnunetv2_mtmd.training.add_domain import add_domain
from nnunetv2_mtmd.training.domain_transfer import adabn, prepare_new_domain_training, transfer_source_weights
from tests.datagen import make_raw_dataset
from tests.reliability.model_folder import DATASET, TRAINER, make_model_folder

NEW = "Dataset961_Rel_shoulder"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    """One source model and one add_domain run (nnU-Net's fingerprint extraction spawns workers: slow),
    shared by the tests; a test that writes gets its own copy (:func:`dirs`)."""
    root = tmp_path_factory.mktemp("add_domain_base")
    d = {k: root / f"nnUNet_{k}" for k in ("raw", "preprocessed", "results")}
    for p in d.values():
        p.mkdir()
    src = _source(d)
    _new_raw(d)
    res = add_domain(DATASET, 903, 961, 0, trainer=TRAINER, domain="shoulder", num_processes=1, progress=False,
                     raw_root=d["raw"], preprocessed_root=d["preprocessed"], results_root=d["results"])
    return {**d, "root": root, "source": src, "result": res}


@pytest.fixture
def dirs(base, tmp_path, monkeypatch) -> dict:
    """A copy of the base folders, exported as nnU-Net's environment (the recorded source checkpoint stays
    the base's, read only)."""
    import shutil

    shutil.copytree(base["root"], tmp_path / "d", symlinks=True)
    d = {k: tmp_path / "d" / f"nnUNet_{k}" for k in ("raw", "preprocessed", "results")}
    for k, p in d.items():
        monkeypatch.setenv(f"nnUNet_{k}", str(p))
    return {**d, "source": base["source"], "result": base["result"]}


def _source(nnunet_dirs) -> Path:
    """The tiny untrained 2-domain model (ankle: labels 1, 2; knee: 3) with distinct random DSBN rows and
    heads, so that a copied, a mixed-up and a re-initialised row all differ."""
    folder = make_model_folder(nnunet_dirs["results"])
    ckpt_file = folder / "fold_0" / "checkpoint_final.pth"
    ckpt = torch.load(ckpt_file, weights_only=False)
    g = torch.Generator().manual_seed(3)
    for key, t in ckpt["network_weights"].items():
        if t.dtype.is_floating_point:
            if key.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.5 + (1.0 if key.endswith("norm.weight") else 0.0))
    torch.save(ckpt, ckpt_file)
    return folder


def _new_raw(nnunet_dirs, did: int = 903, **kw) -> Path:
    return make_raw_dataset(nnunet_dirs["raw"], did, kw.pop("name", "Shoulder"), kw.pop("labels", ["humerus"]),
                            n_cases=2, shape=(2, 16, 16), **kw)


def _add(**kw):
    args = {"trainer": TRAINER, "domain": "shoulder", "num_processes": 1, "progress": False, **kw}
    return add_domain(DATASET, args.pop("new", 903), 961, 0, **args)


def _nothing_written(nnunet_dirs) -> None:
    for root in ("raw", "preprocessed"):
        left = [p.name for p in nnunet_dirs[root].iterdir() if "961" in p.name]
        assert not left, f"{root}: {left}"


def test_written_dataset_plans_and_record(base):
    nnunet_dirs, src, res = base, base["source"], base["result"]
    raw = nnunet_dirs["raw"] / NEW
    assert res.raw_folder == raw and res.num_training == 2
    dj = json.loads((raw / "dataset.json").read_text())
    assert dj["labels"] == {"background": 0, "ankle_talus": 1, "ankle_tibia": 2, "knee_femur": 3,
                            "shoulder_humerus": 4}
    assert dj["channel_names"] == {"0": "MRI", "1": "noNorm"} and dj["numTraining"] == 2
    doms = dj["mtmd"]["domains"]
    assert [(d["name"], d["code"], d["num_cases"]) for d in doms] == [("ankle", 1, 0), ("knee", 2, 0),
                                                                       ("shoulder", 3, 2)]
    assert doms[2]["labels"] == {"humerus": {"unified": 4, "original": 1}}
    code = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "imagesTr" / "shoulder_sho000_0001.nii.gz")))
    assert code.shape == (2, 16, 16) and np.all(code == 3)
    orig = sitk.GetArrayFromImage(sitk.ReadImage(str(nnunet_dirs["raw"] / "Dataset903_Shoulder" / "labelsTr" /
                                                     "sho000.nii.gz")))
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "labelsTr" / "shoulder_sho000.nii.gz")))
    assert np.array_equal(lab, (orig == 1) * 4) and lab.max() == 4
    pre = nnunet_dirs["preprocessed"] / NEW
    assert sorted(p.name for p in pre.iterdir()) == ["dataset.json", "dataset_fingerprint.json", "nnUNetPlans.json"]
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    old = json.loads((src / "plans.json").read_text())
    ak, old_ak = (p["configurations"]["2d"]["architecture"]["arch_kwargs"] for p in (plans, old))
    assert ak["domain_label_ids"] == [[1, 2], [3], [4]] and ak["norm_op_kwargs"]["num_domains"] == 3
    assert {k: v for k, v in ak.items() if k not in ("domain_label_ids", "norm_op_kwargs")} == \
        {k: v for k, v in old_ak.items() if k not in ("domain_label_ids", "norm_op_kwargs")}
    assert plans["dataset_name"] == NEW
    rec = plans["mtmd_add_domain"]
    ckpt = src / "fold_0" / "checkpoint_final.pth"
    assert rec["source_checkpoint"] == str(ckpt.resolve())
    assert rec["source_checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert rec["source_domains"] == ["ankle", "knee"] and rec["new_domain"] == "shoulder"
    assert res.warnings == []


def test_bad_inputs_raise_and_write_nothing(nnunet_dirs):
    _source(nnunet_dirs)
    _new_raw(nnunet_dirs)
    with pytest.raises(ModelFolderError, match=r"No model folder .*nnUNetTrainerMTMD_DSL_MSC__nnUNetPlans__2d"):
        _add(trainer="nnUNetTrainerMTMD_DSL_MSC")
    with pytest.raises(ModelFolderError, match="No fold folder .*fold_3. Existing folds: fold_0"):
        add_domain(DATASET, 903, 961, 3, trainer=TRAINER, domain="shoulder")
    with pytest.raises(DomainSpecError, match="already has a domain 'knee'.*ankle, knee"):
        _add(domain="knee")
    _new_raw(nnunet_dirs, 904, name="TwoChannel", channels=("MRI", "T2"))
    with pytest.raises(InputDataError, match=r"has 2 image channel\(s\) \['MRI', 'T2'\].*expects 1: \['MRI'\]"):
        _add(new=904)
    _new_raw(nnunet_dirs, 905, name="OtherName", channels=("T1",))
    with pytest.raises(InputDataError, match="differ from the model's.*pass --channel_names MRI"):
        _add(new=905)
    with pytest.raises(InputDataError, match=r"--channel_names \['T1'\] must be the model's channel names"):
        _add(new=905, channel_names=["T1"])
    # an undeclared label value fails while the cases are written: nothing is left behind
    bad = _new_raw(nnunet_dirs, 906, name="BadLabel")
    (bad / "dataset.json").write_text(json.dumps({**json.loads((bad / "dataset.json").read_text()),
                                                  "labels": {"background": 0, "other": 2}}))
    with pytest.raises(InputDataError, match="contains value\\(s\\) \\[1\\]"):
        _add(new=906)
    _nothing_written(nnunet_dirs)
    assert not [p for r in ("raw", "preprocessed") for p in nnunet_dirs[r].iterdir() if p.name.startswith(".")]


def test_existing_output_is_refused(dirs):
    with pytest.raises(OutputExistsError, match="Dataset id 961 is already used"):
        _add()


def test_channel_names_given_explicitly_are_accepted(tmp_path):
    from nnunetv2_mtmd.conversion.add_domain import check_new_channels
    from nnunetv2_mtmd.conversion.merge_sources import read_source

    src = read_source(make_raw_dataset(tmp_path, 905, "OtherName", ["a"], n_cases=1, channels=("T1",)))
    check_new_channels(["MRI"], src, ["MRI"], "model dataset.json")  # no error
    with pytest.raises(InputDataError, match="differ from the model's"):
        check_new_channels(["MRI"], src, None, "model dataset.json")


@pytest.mark.parametrize("new, plans_spacing, transpose, expected", [
    ([2.0, 1.0, 1.0], [1.0, 1.0], [0, 1, 2], None),
    ([2.0, 1.0, 1.2], [1.0, 1.0], [0, 1, 2], None),  # 20 % <= 25 %
    ([2.0, 1.0, 2.0], [1.0, 1.0], [0, 1, 2], "by up to 100%"),
    ([1.0, 1.0, 2.0], [1.0, 1.0], [2, 0, 1], None),  # the 2D axes after the transpose are the first two
    ([1.0, 3.0, 1.0], [1.0, 1.0], [2, 0, 1], "by up to 200%"),
])
def test_differing_spacing_only_warns(new, plans_spacing, transpose, expected):
    from nnunetv2_mtmd.conversion.add_domain import spacing_mismatch

    msg = spacing_mismatch(new, {"configurations": {"2d": {"spacing": plans_spacing}}, "transpose_forward": transpose},
                           "2d")
    assert (msg is None) if expected is None else (expected in msg)


# ------------------------------------------------------------------------------------- networks
def _networks(base):
    """(source network, K+1 network, source state dict) from the model's and the extended plans, deep
    supervision off."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunetv2_mtmd.inference.model import load_trained_network, model_location
    from nnunetv2_mtmd.training.trainers.base import nnUNetTrainerMTMD_DSL

    src, res = base["source"], base["result"]
    old, _, _, _ = load_trained_network(model_location(src, 0))
    pm = PlansManager(json.loads(res.plans_file.read_text()))
    new = nnUNetTrainerMTMD_DSL.build_network_architecture(pm, pm.get_configuration("2d"), 2, 5, False)
    return old, new, torch.load(src / "fold_0" / "checkpoint_final.pth", weights_only=False)["network_weights"]


def _x(codes: list[int], seed: int = 0) -> torch.Tensor:
    x = torch.randn(len(codes), 2, 16, 16, generator=torch.Generator().manual_seed(seed))
    x[:, 1] = torch.tensor(codes, dtype=torch.float32).view(-1, 1, 1)
    return x


def test_transfer_copies_old_rows_and_starts_the_new_row_at_their_mean(base):
    old, new, state = _networks(base)
    assert transfer_source_weights(new, state, "src.pth") == 2
    got = new.state_dict()
    norm = "encoder.stages.0.0.convs.0.norm"
    assert torch.equal(got[f"{norm}.weight"][:2], state[f"{norm}.weight"])
    assert torch.equal(got[f"{norm}.weight"][2], (state[f"{norm}.weight"][0] + state[f"{norm}.weight"][1]) / 2)
    assert torch.equal(got[f"{norm}.running_mean"][2], torch.zeros(4))
    assert torch.equal(got[f"{norm}.running_var"][2], torch.ones(4))
    assert got[f"{norm}.num_batches_tracked"].tolist() == [*state[f"{norm}.num_batches_tracked"].tolist(), 0]
    new.eval()
    x = _x([1, 2, 1, 2])
    with torch.no_grad():
        a, b = old(x), new(x)
    assert torch.equal(b[:, :4], a) and torch.all(b[:, 4] == -1000)  # old domains: bitwise the old logits
    bad = {**state, "encoder.extra.weight": torch.zeros(3)}
    bad[f"{norm}.bias"] = torch.zeros(2, 5)
    with pytest.raises(InputDataError, match=r"2 key\(s\).*unexpected key 'encoder.extra.weight'.*'encoder.stages"
                                             r".0.0.convs.0.norm.bias': source \(2, 5\), network \(3, 4\)"):
        transfer_source_weights(new, bad, "src.pth")


def test_row_masks_zero_old_rows_even_for_a_mixed_batch(base):
    _, new, state = _networks(base)
    transfer_source_weights(new, state, "src.pth")
    prep = prepare_new_domain_training(new, 2)
    new.train()
    new(_x([1, 2, 3, 3])).square().mean().backward()  # old-domain samples too: their rows get gradients
    assert prep.row_masked and all(torch.equal(p.grad[:2], torch.zeros_like(p.grad[:2])) for p in prep.row_masked)
    assert all(p.grad[2].abs().sum() > 0 for p in prep.row_masked)
    frozen = dict(new.named_parameters())
    assert all(frozen[n].grad is None and not frozen[n].requires_grad for n in prep.frozen)
    assert {n for n, p in new.named_parameters() if any(p is q for q in prep.others)} == \
        {"heads.0.heads.2.weight", "heads.0.heads.2.bias"}
    # the control: without the hooks the old rows get nonzero gradients from that batch
    prep.remove_hooks()
    new.zero_grad()
    new(_x([1, 2, 3, 3])).square().mean().backward()
    assert any(p.grad[:2].abs().sum() > 0 for p in prep.row_masked)


def test_adabn_estimates_the_new_rows_from_the_new_domain_only(base):
    _, new, state = _networks(base)
    transfer_source_weights(new, state, "src.pth")
    first = new.encoder.stages[0][0].convs[0].norm
    seen: list[torch.Tensor] = []
    hook = first.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    before = {k: v.clone() for k, v in new.state_dict().items()}
    batches = [_x([3, 3, 3], seed=s) for s in range(3)]
    new.eval()
    assert adabn(new, batches, 2) == 3
    hook.remove()
    # independently: the mean of the three batches' per-channel means and unbiased variances of its input
    mean = torch.stack([t.mean((0, 2, 3)) for t in seen]).mean(0)
    var = torch.stack([t.var((0, 2, 3), unbiased=True) for t in seen]).mean(0)
    torch.testing.assert_close(first.running_mean[2], mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(first.running_var[2], var, rtol=1e-5, atol=1e-6)
    assert first.momentum == 0.1 and not new.training
    for k, v in new.state_dict().items():
        if "running" in k or "num_batches" in k:
            assert torch.equal(v[:2], before[k][:2]), k
    with pytest.raises(InputDataError, match=r"domain index\(es\) \[0, 2\]"):
        adabn(new, [_x([1, 3, 3])], 2)
    assert first.momentum == 0.1


# -------------------------------------------------------------------------------------- trainer
def _trainer(dirs, initialize: bool = True, **record):
    """The AddDomain trainer on the copied folders (``record``: entries of the plans' record replaced)."""
    from nnunetv2_mtmd.training.trainers import nnUNetTrainerMTMD_AddDomain

    pre = dirs["preprocessed"] / NEW
    (pre / "nnUNetPlans_2d").mkdir(exist_ok=True)
    (pre / "nnUNetPlans_2d" / "dummy.b2nd").write_text("")  # lets nnU-Net infer the dataset class
    plans = {**json.loads((pre / "nnUNetPlans.json").read_text()), "continue_training": False}
    plans["mtmd_add_domain"].update(record)
    tr = nnUNetTrainerMTMD_AddDomain(plans, "2d", 0, json.loads((pre / "dataset.json").read_text()),
                                     torch.device("cpu"))
    # the tiny plans have 2 stages: nnU-Net's deep-supervision weights would be [0] (NaN after normalising)
    tr.enable_deep_supervision = False
    if initialize:
        tr.initialize()
    return tr, dirs["source"]


def _train(tr, steps: int, weight_decay: float, all_in_one_group: bool = False) -> None:
    """``steps`` nnU-Net train steps on new-domain batches (code 3, label 4) after rebuilding the optimizer
    with ``weight_decay`` (nnU-Net's momentum 0.99, Nesterov); the control puts every trainable tensor in
    ONE group with weight decay."""
    tr.weight_decay = weight_decay
    tr.optimizer, tr.lr_scheduler = tr.configure_optimizers()
    if all_in_one_group:
        p = tr.new_domain_parameters
        tr.optimizer = torch.optim.SGD(p.others + p.row_masked, tr.initial_lr, weight_decay=weight_decay,
                                       momentum=0.99, nesterov=True)
    tr.network.train()
    for s in range(steps):
        t = torch.zeros(4, 1, 16, 16)
        t[:, :, 4 + s:10, 3:9] = 4
        tr.train_step({"data": _x([3, 3, 3, 3], seed=10 + s), "target": t})


def test_trainer_keeps_old_rows_bitwise_under_weight_decay_and_momentum(dirs):
    from nnunetv2_mtmd.inference.model import load_trained_network, model_location

    tr, src = _trainer(dirs)
    assert len(tr.optimizer.param_groups) == 2 and tr.optimizer.param_groups[1]["weight_decay"] == 0.0
    state = torch.load(src / "fold_0" / "checkpoint_final.pth", weights_only=False)["network_weights"]
    start = {k: v.clone() for k, v in tr.network.state_dict().items()}
    _train(tr, 4, weight_decay=0.1)
    after = tr.network.state_dict()
    for k, v in after.items():
        if k in state and state[k].shape == v.shape:
            assert torch.equal(v, state[k]), k  # shared convolutions and old heads
        elif k in state:
            assert torch.equal(v[:2], state[k]), k  # the old DSBN rows, affine and running statistics
    moved = [k for k in after if not torch.equal(after[k], start[k])]
    assert "heads.0.heads.2.weight" in moved and any(k.endswith("norm.weight") for k in moved)
    assert any(k.endswith("running_mean") for k in moved)
    old, _, _, _ = load_trained_network(model_location(src, 0))
    tr.network.eval()
    x = _x([1, 2, 2, 1], seed=5)
    with torch.no_grad():
        a, b = old(x), tr.network(x)
    assert torch.equal(b[:, :4], a)


def test_control_weight_decay_on_the_old_rows_changes_them(dirs):
    """What the separate no-weight-decay group prevents: SGD's weight decay moves the old rows although
    their gradient is zero."""
    tr, src = _trainer(dirs)
    state = torch.load(src / "fold_0" / "checkpoint_final.pth", weights_only=False)["network_weights"]
    _train(tr, 2, weight_decay=0.1, all_in_one_group=True)
    w = tr.network.state_dict()["encoder.stages.0.0.convs.0.norm.weight"]
    assert not torch.equal(w[:2], state["encoder.stages.0.0.convs.0.norm.weight"])


def test_trainer_refuses_plans_without_a_record(nnunet_dirs):
    from nnunetv2_mtmd.training.trainers import nnUNetTrainerMTMD_AddDomain
    from tests.reliability.model_folder import dataset_json, plans

    with pytest.raises(DomainSpecError, match="no 'mtmd_add_domain' record.*nnUNetv2_mtmd_add_domain"):
        nnUNetTrainerMTMD_AddDomain({**plans(), "continue_training": False}, "2d", 0, dataset_json(),
                                    torch.device("cpu"))


def test_trainer_refuses_a_changed_source_checkpoint(dirs, tmp_path):
    import shutil

    changed = tmp_path / "checkpoint_final.pth"
    shutil.copyfile(dirs["source"] / "fold_0" / "checkpoint_final.pth", changed)
    with open(changed, "ab") as f:
        f.write(b"\0")
    tr, _ = _trainer(dirs, initialize=False, source_checkpoint=str(changed))
    with pytest.raises(InputDataError, match="changed since nnUNetv2_mtmd_add_domain recorded it"):
        tr.initialize()
    tr, _ = _trainer(dirs, initialize=False, source_checkpoint=str(tmp_path / "gone.pth"))
    with pytest.raises(InputDataError, match="gone.pth recorded in the plans .* does not exist"):
        tr.initialize()
