"""Shared helpers of the study tests: a small domain spec, tiny synthetic source datasets, the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from nnunetv2_mtmd.domains import Domain, DomainLabel, DomainSpec
from tests.datagen import make_raw_dataset

REPO = Path(__file__).resolve().parents[3]


def small_spec() -> DomainSpec:
    """knee (femur=1 -> 1, tibia=2 -> 2) and hip (femur=1 -> 3), codes 1 and 2."""
    knee = Domain("knee", 1, "Dataset901_Knee", (DomainLabel("femur", 1, 1), DomainLabel("tibia", 2, 2)), 3)
    hip = Domain("hip", 2, "Dataset902_Hip", (DomainLabel("femur", 1, 3),), 2)
    return DomainSpec((knee, hip), code_channel=1)


def touch(path: Path) -> None:
    """An empty stand-in for a file whose presence is all that counts (checkpoints, predictions)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")


def study_cli(args: list[str], env: dict[str, str] | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    """``python -m nnunetv2_mtmd.cli.study ARGS`` in a subprocess from the repository root, output captured."""
    return subprocess.run([sys.executable, "-m", "nnunetv2_mtmd.cli.study", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL, cwd=REPO)


def make_sources(root: Path, n_cases: int = 5) -> Path:
    """Three tiny raw nnU-Net datasets (ankle, knee, shoulder; Dataset901-903) under ``root/sources``."""
    src = root / "sources"
    for i, (name, labels) in enumerate((("Ankle", ["calcaneus", "talus"]), ("Knee", ["femur"]),
                                        ("Shoulder", ["humerus", "scapula"]))):
        make_raw_dataset(src, 901 + i, name, labels, n_cases=n_cases, shape=(4, 24, 24), seed=i)
    return src


def stock_plans() -> dict:
    """A minimal nnU-Net plans file with a ``2d`` configuration (what :func:`coarse_2d_plans` reads)."""
    ak = {"n_stages": 6, "features_per_stage": [32, 64, 128, 256, 512, 512], "kernel_sizes": [[3, 3]] * 6,
          "strides": [[1, 1]] + [[2, 2]] * 5, "n_conv_per_stage": [2] * 6, "n_conv_per_stage_decoder": [2] * 5}
    conf = {"data_identifier": "nnUNetPlans_2d", "batch_size": 26, "patch_size": [192, 192], "spacing": [2.0, 2.0],
            "median_image_size_in_voxels": [175.0, 175.0],
            "architecture": {"network_class_name": "a.PlainConvUNet", "arch_kwargs": ak}}
    return {"plans_name": "nnUNetPlans", "configurations": {"2d": conf, "3d_fullres": {"x": 1}}}
