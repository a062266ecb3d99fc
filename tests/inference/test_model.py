"""Tests of locating a trained model in nnU-Net's results folder and rebuilding its network
(``nnunetv2_mtmd.inference.model``)."""

from __future__ import annotations

import pytest
import torch

from nnunetv2_mtmd.architectures.unet import MultiDomainUNetBase
from nnunetv2_mtmd.errors import InputDataError, MTMDError
from nnunetv2_mtmd.inference.model import (
    ModelFolderError,
    load_trained_network,
    locate_model_folder,
    model_location,
)
from tests.reliability.model_folder import DATASET, TRAINER, make_model_folder


# ------------------------------------------------------------------------------------ model folder
def _results_tree(root):
    fold = root / "Dataset950_Joints" / "nnUNetTrainerMTMD__nnUNetPlans__2d" / "fold_0"
    fold.mkdir(parents=True)
    (fold / "checkpoint_best.pth").write_bytes(b"x")
    for f in ("plans.json", "dataset.json"):
        (fold.parent / f).write_text("{}")
    return fold


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"dataset": 951}, ["951", "Dataset950_Joints"]),
        ({"trainer": "nnUNetTrainerMTMD_DSL"}, ["nnUNetTrainerMTMD_DSL__nnUNetPlans__2d",
                                                "nnUNetTrainerMTMD__nnUNetPlans__2d"]),
        ({"plans": "nnUNetResEncUNetMPlans"}, ["nnUNetTrainerMTMD__nnUNetResEncUNetMPlans__2d",
                                               "nnUNetTrainerMTMD__nnUNetPlans__2d"]),
        ({"fold": 3}, ["fold_3", "Existing folds: fold_0"]),
        ({"fold": "x"}, ["'x'"]),
        ({"checkpoint_name": "checkpoint_final.pth"}, ["checkpoint_final.pth", "checkpoint_best.pth"]),
    ],
)
def test_locate_model_folder_errors(tmp_path, kwargs, expected):
    _results_tree(tmp_path)
    args = {"dataset": 950, "trainer": "nnUNetTrainerMTMD", "plans": "nnUNetPlans", "configuration": "2d",
            "fold": 0, "checkpoint_name": "checkpoint_best.pth", **kwargs}
    with pytest.raises(ModelFolderError) as ei:
        locate_model_folder(results_root=tmp_path, **args)
    assert isinstance(ei.value, MTMDError)
    for text in expected:
        assert text in str(ei.value)


def test_locate_model_folder_ok(tmp_path):
    fold = _results_tree(tmp_path)
    loc = locate_model_folder("Dataset950_Joints", "nnUNetTrainerMTMD", "nnUNetPlans", "2d", "0",
                              "checkpoint_best.pth", results_root=tmp_path)
    assert loc.fold == 0 and loc.checkpoint == fold / "checkpoint_best.pth"
    assert loc.training_output_dir == fold.parent and loc.dataset_name == "Dataset950_Joints"


def test_model_location_checks_a_given_folder(tmp_path):
    fold = _results_tree(tmp_path)
    loc = model_location(fold.parent, 0, "checkpoint_best.pth")
    assert loc == locate_model_folder(950, "nnUNetTrainerMTMD", "nnUNetPlans", "2d", 0, "checkpoint_best.pth",
                                      results_root=tmp_path)
    with pytest.raises(ModelFolderError, match="does not exist"):
        model_location(tmp_path / "nope", 0)
    (fold.parent / "plans.json").unlink()
    with pytest.raises(ModelFolderError, match="plans.json is missing"):
        model_location(fold.parent, 0, "checkpoint_best.pth")


def test_old_import_path_still_works():
    from nnunetv2_mtmd.evaluation import embeddings

    assert embeddings.locate_model_folder is locate_model_folder
    assert embeddings.load_trained_network is load_trained_network
    assert embeddings.ModelFolderError is ModelFolderError


# ------------------------------------------------------------------------------------ the network
def test_load_trained_network_rebuilds_the_fold(tmp_path):
    folder = make_model_folder(tmp_path / "results")
    loc = locate_model_folder(DATASET, TRAINER, "nnUNetPlans", "2d", 0, results_root=tmp_path / "results")
    net, pm, cm, dj = load_trained_network(loc)
    assert isinstance(net, MultiDomainUNetBase) and not net.training and not net.deep_supervision
    assert cm.patch_size == [16, 16] and pm.plans["dataset_name"] == DATASET and "mtmd" in dj
    saved = torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=True)["network_weights"]
    for k, v in net.state_dict().items():
        assert torch.equal(v, saved[k]), k


def test_load_trained_network_errors(tmp_path):
    folder = make_model_folder(tmp_path / "results")
    chk = folder / "fold_0" / "checkpoint_final.pth"
    loc = model_location(folder, 0)
    ckpt = torch.load(chk, weights_only=True)
    torch.save({k: v for k, v in ckpt.items() if k != "trainer_name"}, chk)
    with pytest.raises(ModelFolderError, match="has no 'trainer_name'"):
        load_trained_network(loc)
    torch.save({**ckpt, "trainer_name": "nnUNetTrainerNoSuchThing"}, chk)
    with pytest.raises(ModelFolderError, match="'nnUNetTrainerNoSuchThing'"):
        load_trained_network(loc)
    torch.save({**ckpt, "init_args": {"configuration": "3d_fullres"}}, chk)
    with pytest.raises(ModelFolderError, match="'3d_fullres'"):
        load_trained_network(loc)
    chk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFolderError, match="Cannot load checkpoint"):
        load_trained_network(loc)
    if not torch.cuda.is_available():
        with pytest.raises(InputDataError, match="no CUDA device"):
            load_trained_network(loc, device="cuda")
