"""Tests of the in-process prediction entry (``nnunetv2_mtmd.inference.predictor.load_predictor``):
nnU-Net's own predictor, built as ``nnUNetv2_predict`` builds it, with the input check installed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnunetv2_mtmd import compat
from nnunetv2_mtmd.errors import InputDataError
from nnunetv2_mtmd.inference.checks import predictor_domain_spec
from nnunetv2_mtmd.inference.model import ModelFolderError
from nnunetv2_mtmd.inference.predictor import load_predictor
from tests.reliability.model_folder import SHAPE, make_model_folder, write_case


@pytest.fixture
def model(tmp_path):
    return make_model_folder(tmp_path / "results")


def test_load_predictor_as_nnunetv2_predict(model, tmp_path):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    log = tmp_path / "log.txt"
    # the benchmark's call: positional (model_folder, device, disable_tta, log_path)
    pred = load_predictor(model, "cpu", True, log)
    assert isinstance(pred, nnUNetPredictor)
    assert pred.tile_step_size == 0.5 and pred.use_gaussian and not pred.use_mirroring
    assert pred.device == torch.device("cpu") and not pred.perform_everything_on_device
    assert len(pred.list_of_parameters) == 1 and pred.trainer_name == "nnUNetTrainerMTMD_DSL"
    assert predictor_domain_spec(pred) is not None  # a multi-domain network: its input is checked
    assert getattr(nnUNetPredictor.predict_from_files, compat._PATCH_MARK)
    assert load_predictor(model, torch.device("cpu"), folds=None).use_mirroring  # auto-detected fold 0
    assert load_predictor(model, "cpu", folds="0").list_of_parameters


def test_load_predictor_predicts_and_checks(model, tmp_path):
    write_case(tmp_path / "in", "ankle_001", 1)
    (tmp_path / "out").mkdir()
    pred = load_predictor(model, "cpu", disable_tta=True)
    pred.predict_from_files_sequential(str(tmp_path / "in"), str(tmp_path / "out"), save_probabilities=False,
                                       overwrite=True)
    assert (tmp_path / "out" / "ankle_001.nii.gz").is_file()
    with pytest.raises(InputDataError, match="holds 5"):
        pred.predict_single_npy_array(np.stack([np.zeros(SHAPE), np.full(SHAPE, 5.0)]).astype(np.float32),
                                      {"spacing": [2.0, 1.0, 1.0]})


def test_load_predictor_names_a_missing_fold_or_checkpoint(model):
    with pytest.raises(ModelFolderError, match="Existing folds: fold_0"):
        load_predictor(model, "cpu", folds=(0, 1))
    with pytest.raises(ModelFolderError, match="checkpoint_best.pth"):
        load_predictor(model, "cpu", checkpoint_name="checkpoint_best.pth")
