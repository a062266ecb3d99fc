"""A tiny, untrained multi-domain model folder in nnU-Net's results layout, made without training
(plans.json, dataset.json, fold_0/checkpoint_final.pth), and helpers to write prediction input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

DATASET = "Dataset951_Rel"
TRAINER = "nnUNetTrainerMTMD_DSL"
DOMAINS = {"ankle": 1, "knee": 2}
SHAPE = (2, 16, 16)  # z, y, x of the test images


def dataset_json() -> dict:
    return {
        "channel_names": {"0": "MRI", "1": "noNorm"},
        "labels": {"background": 0, "ankle_talus": 1, "ankle_tibia": 2, "knee_femur": 3},
        "numTraining": 4, "file_ending": ".nii.gz", "name": "Rel",
        "mtmd": {"format_version": 1, "code_channel": 1, "domains": [
            {"name": "ankle", "code": 1, "source_dataset": "Dataset901_A", "num_cases": 2, "num_test_cases": 0,
             "labels": {"talus": {"unified": 1, "original": 1}, "tibia": {"unified": 2, "original": 2}}},
            {"name": "knee", "code": 2, "source_dataset": "Dataset902_K", "num_cases": 2, "num_test_cases": 0,
             "labels": {"femur": {"unified": 3, "original": 1}}}]},
    }


def plans() -> dict:
    resampling = {"resampling_fn_data": "resample_data_or_seg_to_shape",
                  "resampling_fn_seg": "resample_data_or_seg_to_shape",
                  "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                  "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                  "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                  "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                         "force_separate_z": None}}
    arch = {"network_class_name": "nnunetv2_mtmd.architectures.unet.MultiDomainPlainConvUNet",
            "arch_kwargs": {"n_stages": 2, "features_per_stage": [4, 8], "conv_op": "torch.nn.modules.conv.Conv2d",
                            "kernel_sizes": [[3, 3], [3, 3]], "strides": [[1, 1], [2, 2]], "n_conv_per_stage": [1, 1],
                            "n_conv_per_stage_decoder": [1], "conv_bias": True,
                            "norm_op": "nnunetv2_mtmd.architectures.dsbn.DomainSpecificBatchNorm2d",
                            "norm_op_kwargs": {"num_domains": 2, "eps": 1e-5, "momentum": 0.1, "affine": True},
                            "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                            "nonlin_kwargs": {"inplace": True}, "domain_label_ids": [[1, 2], [3]],
                            "head_mode": "domain"},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    cfg = {"data_identifier": "nnUNetPlans_2d", "preprocessor_name": "DefaultPreprocessor", "batch_size": 4,
           "patch_size": [16, 16], "median_image_size_in_voxels": [16.0, 16.0], "spacing": [1.0, 1.0],
           "normalization_schemes": ["ZScoreNormalization", "NoNormalization"], "use_mask_for_norm": [False, False],
           **resampling, "architecture": arch, "batch_dice": True}
    props = {"max": 1.0, "mean": 0.0, "median": 0.0, "min": -1.0, "percentile_00_5": -1.0, "percentile_99_5": 1.0,
             "std": 1.0}
    return {"dataset_name": DATASET, "plans_name": "nnUNetPlans",
            "original_median_spacing_after_transp": [2.0, 1.0, 1.0],
            "original_median_shape_after_transp": list(SHAPE), "image_reader_writer": "SimpleITKIO",
            "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "configurations": {"2d": cfg},
            "experiment_planner_used": "nnUNetPlannerMTMD", "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": {"0": props, "1": props}}


def make_model_folder(results: Path) -> Path:
    """``results/Dataset951_Rel/nnUNetTrainerMTMD_DSL__nnUNetPlans__2d`` with an untrained fold 0."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunetv2_mtmd.training.trainers.base import nnUNetTrainerMTMD_DSL

    folder = Path(results) / DATASET / f"{TRAINER}__nnUNetPlans__2d"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans(), indent=1))
    (folder / "dataset.json").write_text(json.dumps(dataset_json(), indent=1))
    pm = PlansManager(plans())
    torch.manual_seed(0)
    net = nnUNetTrainerMTMD_DSL.build_network_architecture(pm, pm.get_configuration("2d"), 2, 4, False)
    torch.save({"network_weights": net.state_dict(), "trainer_name": TRAINER, "init_args": {"configuration": "2d"},
                "inference_allowed_mirroring_axes": (0, 1)}, folder / "fold_0" / "checkpoint_final.pth")
    return folder


def write_image(arr: np.ndarray, path: Path) -> None:
    img = sitk.GetImageFromArray(arr.astype(np.float32))
    img.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(img, str(path))


def write_case(folder: Path, case: str, code: float | np.ndarray | None, n_image_channels: int = 1,
               channel_indices: list[int] | None = None) -> None:
    """Write ``<case>_XXXX.nii.gz``: image channel(s), then the code channel (constant ``code``, or the
    given array, or none when ``code`` is None). ``channel_indices`` overrides the file numbering."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    arrays = [rng.normal(0, 1, SHAPE) for _ in range(n_image_channels)]
    if code is not None:
        arrays.append(np.full(SHAPE, code) if np.isscalar(code) else np.asarray(code))
    idx = channel_indices or list(range(len(arrays)))
    for i, a in zip(idx, arrays):
        write_image(a, folder / f"{case}_{i:04d}.nii.gz")
