"""The single-threshold baseline of the synthetic data (part of :mod:`nnunetv2_mtmd.conversion.synthetic`).

How far from trivial is a dataset? :func:`best_threshold` finds the single intensity threshold (either
direction) that segments "any structure" best, pooled over all cases; :func:`threshold_report` does
that for written raw datasets (``nnUNetv2_mtmd_synthetic --report``). The synthetic module re-exports
these names.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunetv2_mtmd.errors import InputDataError


def best_threshold(
    images: np.ndarray | Sequence[np.ndarray],
    labels: np.ndarray | Sequence[np.ndarray],
    normalize: bool = False,
) -> tuple[float, float, str]:
    """Best single-threshold segmentation of "any structure" (label > 0) vs background.

    All voxels of all cases are pooled; the prediction is ``image > t`` or ``image < t``; every
    threshold between two distinct intensities is tried. With ``normalize`` each case is z-scored
    first (as nnU-Net does for MRI). Returns ``(dice, threshold, direction)``, direction ``'>'`` or
    ``'<'``. Arrays of any (matching) shape, e.g. ``(Z, Y, X)``."""
    if isinstance(images, np.ndarray):
        images = [images]
    if isinstance(labels, np.ndarray):
        labels = [labels]
    if len(images) != len(labels) or not images:
        raise InputDataError(
            f"best_threshold: need equally many images and labels (>0), found "
            f"{len(images)} and {len(labels)}."
        )
    vals, fgs = [], []
    for i, (im, lb) in enumerate(zip(images, labels)):
        im, lb = np.asarray(im, dtype=np.float64), np.asarray(lb)
        if im.shape != lb.shape:
            raise InputDataError(
                f"best_threshold: case {i}: image shape {im.shape} differs from label shape {lb.shape}."
            )
        if normalize:
            im = (im - im.mean()) / max(float(im.std()), 1e-8)
        vals.append(im.reshape(-1))
        fgs.append(lb.reshape(-1) > 0)
    val = np.concatenate(vals)
    fg = np.concatenate(fgs)
    n_fg = int(fg.sum())
    if n_fg == 0:
        raise InputDataError("best_threshold: the labels contain no foreground; Dice is undefined.")
    order = np.argsort(val, kind="stable")
    sv, sf = val[order], fg[order]
    # Candidate predictions are "the k smallest" / "the n-k largest", only where sv[k-1] < sv[k].
    n = sv.size
    cum = np.concatenate([[0], np.cumsum(sf)])  # foreground among the k smallest, k = 0..n
    ks = np.concatenate([[0], np.nonzero(sv[1:] > sv[:-1])[0] + 1, [n]])
    k = ks.astype(np.float64)
    tp_low = cum[ks]
    dice_low = 2 * tp_low / (k + n_fg)  # predict the k smallest
    dice_high = 2 * (n_fg - tp_low) / ((n - k) + n_fg)  # predict the n-k largest
    il, ih = int(np.argmax(dice_low)), int(np.argmax(dice_high))

    def thr(i: int) -> float:
        kk = ks[i]
        if kk == 0:
            return float(sv[0]) - 1.0
        if kk == n:
            return float(sv[-1]) + 1.0
        return float(0.5 * (sv[kk - 1] + sv[kk]))

    if dice_high[ih] >= dice_low[il]:
        return float(dice_high[ih]), thr(ih), ">"
    return float(dice_low[il]), thr(il), "<"


def best_threshold_dice(
    images: np.ndarray | Sequence[np.ndarray],
    labels: np.ndarray | Sequence[np.ndarray],
    normalize: bool = False,
) -> float:
    """Dice of the best single intensity threshold (either direction) for foreground = any label > 0
    vs background, pooled over all cases; see :func:`best_threshold`."""
    return best_threshold(images, labels, normalize=normalize)[0]


def threshold_report(datasets: Sequence[str | Path]) -> dict[str, dict[str, float | str]]:
    """Best-threshold Dice of written raw datasets (training cases), raw and per-case z-scored."""
    out = {}
    for ds in datasets:
        ds = Path(ds)
        with open(ds / "dataset.json") as f:
            ending = json.load(f)["file_ending"]
        imgs, labs = [], []
        for lp in sorted((ds / "labelsTr").glob(f"*{ending}")):
            case = lp.name[: -len(ending)]
            imgs.append(sitk.GetArrayFromImage(sitk.ReadImage(str(ds / "imagesTr" / f"{case}_0000{ending}"))))
            labs.append(sitk.GetArrayFromImage(sitk.ReadImage(str(lp))))
        d, t, direction = best_threshold(imgs, labs)
        out[ds.name] = {
            "dice": d,
            "threshold": t,
            "direction": direction,
            "dice_zscored": best_threshold_dice(imgs, labs, normalize=True),
        }
    return out
