"""Tiny nnU-Net raw datasets for tests (independent of the package's own synthetic generator)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def write_image(arr: np.ndarray, path: Path, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0)) -> None:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in origin))
    sitk.WriteImage(img, str(path))


def make_raw_dataset(
    root: Path,
    dataset_id: int,
    name: str,
    labels: list[str],
    n_cases: int = 3,
    shape: tuple[int, int, int] = (4, 24, 24),
    channels: tuple[str, ...] = ("MRI",),
    spacing: tuple[float, float, float] = (1.0, 1.0, 2.0),
    n_test: int = 0,
    seed: int = 0,
) -> Path:
    """Write ``root/DatasetXXX_name`` with images (float32) and labels (uint8): label ``i`` is a box
    at a case-dependent position; intensity = 100 * label + noise. Returns the dataset folder."""
    rng = np.random.default_rng(seed)
    ds = Path(root) / f"Dataset{dataset_id:03d}_{name}"
    (ds / "imagesTr").mkdir(parents=True)
    (ds / "labelsTr").mkdir()
    if n_test:
        (ds / "imagesTs").mkdir()
    z, y, x = shape
    for split, n in (("Tr", n_cases), ("Ts", n_test)):
        for c in range(n):
            seg = np.zeros(shape, dtype=np.uint8)
            for i in range(len(labels)):
                y0 = 2 + (i * 5 + c) % max(1, y - 6)
                x0 = 2 + (i * 3 + 2 * c) % max(1, x - 6)
                seg[:, y0:y0 + 4, x0:x0 + 4] = i + 1
            case = f"{name.lower()[:3]}{c:03d}"
            for ch in range(len(channels)):
                img = seg.astype(np.float32) * 100 + rng.normal(0, 5, shape).astype(np.float32) + 10 * ch
                write_image(img, ds / f"images{split}" / f"{case}_{ch:04d}.nii.gz", spacing)
            if split == "Tr":
                write_image(seg, ds / "labelsTr" / f"{case}.nii.gz", spacing)
    dj = {
        "channel_names": {str(i): c for i, c in enumerate(channels)},
        "labels": {"background": 0, **{lab: i + 1 for i, lab in enumerate(labels)}},
        "numTraining": n_cases,
        "file_ending": ".nii.gz",
        "name": name,
    }
    (ds / "dataset.json").write_text(json.dumps(dj, indent=2))
    return ds
