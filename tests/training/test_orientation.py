"""Fixed-orientation augmentation (nnunetv2_mtmd/training/orientation.py) on real nnU-Net trainers."""

import math

import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_mtmd.training.budget import StudyBudget
from nnunetv2_mtmd.training.orientation import FixedOrientationDA, fixed_orientation_params


def _plans(patch=(64, 64)) -> dict:
    """A minimal stock nnU-Net 2d plans dict (two-stage PlainConvUNet), enough to construct a trainer."""
    arch = {"n_stages": 2, "features_per_stage": [4, 8], "conv_op": "torch.nn.modules.conv.Conv2d",
            "kernel_sizes": [[3, 3], [3, 3]], "strides": [[1, 1], [2, 2]], "n_conv_per_stage": [1, 1],
            "n_conv_per_stage_decoder": [1], "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True}}
    conf = {"data_identifier": "x", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
            "patch_size": list(patch), "median_image_size_in_voxels": list(patch), "spacing": [1, 1],
            "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {}, "resampling_fn_seg_kwargs": {},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape", "resampling_fn_probabilities_kwargs": {},
            "batch_dice": True,
            "architecture": {
                "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                "arch_kwargs": arch, "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}}
    return {"dataset_name": "Dataset999_Orient", "plans_name": "nnUNetPlans",
            "original_median_spacing_after_transp": [1, 1, 1], "original_median_shape_after_transp": [4, *patch],
            "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "experiment_planner_used": "test", "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": {}, "configurations": {"2d": conf},
            "continue_training": False}


DATASET_JSON = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "bone": 1}, "numTraining": 2,
                "file_ending": ".nii.gz"}


# nnU-Net's get_patch_size rotates the corner (p, p) by the largest angle and divides by the smallest
# scale 0.85: 30 degrees -> p (cos 30 + sin 30) / 0.85 in one axis, p / 0.85 in the other.
@pytest.mark.parametrize("deg, patch, expected", [
    (0, (64, 64), [75, 75]),
    (30, (64, 64), [int(64 * (math.cos(math.pi / 6) + math.sin(math.pi / 6)) / 0.85), 75]),  # [102, 75]
    (30, (112, 112), [int(112 * (math.cos(math.pi / 6) + math.sin(math.pi / 6)) / 0.85), 131]),  # [179, 131]
])
def test_fixed_orientation_params(deg, patch, expected):
    rotation, initial = fixed_orientation_params(patch, deg)
    assert rotation == pytest.approx((-math.radians(deg), math.radians(deg)))
    assert initial == expected


def test_fixed_orientation_params_keeps_the_dummy_2d_axis():
    assert fixed_orientation_params((20, 64, 64), 30, dummy_2d=True)[1][0] == 20


@pytest.mark.parametrize("deg", [-1, 181])
def test_fixed_orientation_params_rejects_bad_angles(deg):
    with pytest.raises(ValueError, match="max_rotation_deg"):
        fixed_orientation_params((64, 64), deg)


class _FixedTrainer(FixedOrientationDA, nnUNetTrainer):
    pass


def test_mixin_on_the_real_nnunet_trainer(nnunet_dirs):
    stock = nnUNetTrainer(_plans(), "2d", 0, DATASET_JSON, torch.device("cpu"))
    rot, _, initial, mirror = stock.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert mirror == (0, 1) and stock.inference_allowed_mirroring_axes == (0, 1)
    assert rot[1] == pytest.approx(math.pi)  # nnU-Net's 2D default for square patches

    fixed = _FixedTrainer(_plans(), "2d", 0, DATASET_JSON, torch.device("cpu"))
    rot, dummy, initial, mirror = fixed.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert mirror is None and fixed.inference_allowed_mirroring_axes is None  # also no test-time mirroring
    assert rot == pytest.approx((-math.pi / 6, math.pi / 6)) and not dummy
    assert list(initial) == [102, 75]


@pytest.mark.parametrize("fixed", [False, True])
def test_study_budget_switches_every_scheme_including_individual(nnunet_dirs, monkeypatch, fixed):
    from nnunetv2_mtmd.training.trainers.study import nnUNetTrainer_study

    for k, v in StudyBudget(fixed_orientation=fixed).env().items():
        monkeypatch.setenv(k, v)
    t = nnUNetTrainer_study(_plans(), "2d", 0, DATASET_JSON, torch.device("cpu"))
    rot, _, _, mirror = t.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert (mirror is None) == fixed
    assert rot[1] == pytest.approx(math.pi / 6 if fixed else math.pi)


@pytest.mark.parametrize("raw, expected", [(None, None), ("", None), ("1", 1), ("3", 3)])
def test_study_torch_threads_reads_the_environment(raw, expected):
    from nnunetv2_mtmd.training.budget import THREADS_ENV
    from nnunetv2_mtmd.training.trainers.study import study_torch_threads

    assert study_torch_threads({} if raw is None else {THREADS_ENV: raw}) == expected


@pytest.mark.parametrize("raw", ["0", "-2", "two", "1.5"])
def test_study_torch_threads_refuses_bad_values(raw):
    from nnunetv2_mtmd.training.budget import THREADS_ENV
    from nnunetv2_mtmd.training.trainers.study import study_torch_threads

    with pytest.raises(ValueError, match=f"{THREADS_ENV} must be a positive integer.*found '{raw}'"):
        study_torch_threads({THREADS_ENV: raw})


def test_study_trainer_sets_torch_threads_from_the_environment(nnunet_dirs, monkeypatch):
    """nnUNetv2_train -device cpu sets every core; a study training of --jobs 2 must use its share."""
    from nnunetv2_mtmd.training.budget import THREADS_ENV
    from nnunetv2_mtmd.training.trainers.study import nnUNetTrainer_study

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setenv(THREADS_ENV, "1")
        nnUNetTrainer_study(_plans(), "2d", 0, DATASET_JSON, torch.device("cpu"))
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        monkeypatch.delenv(THREADS_ENV)
        nnUNetTrainer_study(_plans(), "2d", 0, DATASET_JSON, torch.device("cpu"))
        assert torch.get_num_threads() == 2  # unset: nnU-Net's choice stays
    finally:
        torch.set_num_threads(before)
