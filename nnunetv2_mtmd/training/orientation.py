"""Spatial augmentation for images that always come in one anatomical orientation.

nnU-Net's 2D default mirrors both in-plane axes (each with probability 0.5) and rotates by up to
+-180 degrees, so a quarter of the training samples are turned upside down and back to front. For
joint MR acquired in a standard plane this erases the one cue that tells structures of the same
look apart by position: mirrored in both axes, the patella (anterior, above the joint line) lands
where the fibular head is (posterior, below it), and L1 trades places with L5 while L3 stays put.
The network has to learn them from context alone. (Measured in short CPU trainings, switching
mirroring off did not by itself fix the fibular head or the lumbar levels: docs/demo.md,
docs/study.md.)

:class:`FixedOrientationDA` is a trainer mixin that keeps everything nnU-Net does except mirroring
(training and test-time) and limits rotations to +-``max_rotation_deg`` (nnU-Net's own 3D
default is 30 degrees). It is nnU-Net's ``nnUNetTrainerNoMirroring`` plus the rotation limit.
"""

from __future__ import annotations

import numpy as np
from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size


def fixed_orientation_params(patch_size: tuple[int, ...] | list[int], max_rotation_deg: float,
                             dummy_2d: bool = False) -> tuple[tuple[float, float], list[int]]:
    """Rotation range in radians ``(-r, r)`` and nnU-Net's initial (pre-rotation) patch size for a
    rotation limit of ``max_rotation_deg`` degrees and nnU-Net's scaling range (0.85, 1.25)."""
    if not 0 <= max_rotation_deg <= 180:
        raise ValueError(f"max_rotation_deg must be within [0, 180] degrees, found {max_rotation_deg}.")
    r = float(np.deg2rad(max_rotation_deg))
    rotation = (-r, r)
    initial = [int(i) for i in get_patch_size(list(patch_size), rotation, rotation, rotation, (0.85, 1.25))]
    if dummy_2d:
        initial[0] = int(patch_size[0])
    return rotation, initial


DEFAULT_MAX_ROTATION_DEG = 30.0


def fixed_orientation_config(trainer, dummy_2d: bool, max_rotation_deg: float = DEFAULT_MAX_ROTATION_DEG):
    """The return value of nnU-Net's ``configure_rotation_dummyDA_mirroring_and_inital_patch_size``
    for fixed-orientation augmentation: ``(rotation, dummy_2d, initial_patch_size, mirror_axes=None)``.
    Also switches test-time mirroring off (nnU-Net stores ``inference_allowed_mirroring_axes`` in the
    checkpoint, and ``nnUNetv2_predict`` reads it from there)."""
    patch_size = trainer.configuration_manager.patch_size
    rotation, initial = fixed_orientation_params(patch_size, max_rotation_deg, dummy_2d)
    trainer.inference_allowed_mirroring_axes = None
    trainer.print_to_log_file(f"Fixed-orientation augmentation: no mirroring, rotation within "
                              f"+-{max_rotation_deg:g} degrees, initial patch size {initial}")
    return rotation, dummy_2d, initial, None


class FixedOrientationDA:
    """Trainer mixin (put it before the trainer in the bases): no mirroring in training or at
    inference, rotations limited to +-``max_rotation_deg``. Everything else is nnU-Net's."""

    max_rotation_deg: float = DEFAULT_MAX_ROTATION_DEG

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        _, dummy_2d, _, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        return fixed_orientation_config(self, dummy_2d, self.max_rotation_deg)
