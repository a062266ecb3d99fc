"""Segmentation metrics of the paper's evaluation (Boutillon et al. 2022, Table 2 and Table 4).

Per structure (one binary mask pair ``ref``, ``pred`` of shape ``(Z, Y, X)``, or any ``ndim``):

- ``dice``        = 2 |R n P| / (|R| + |P|)
- ``sensitivity`` = TP / (TP + FN)
- ``specificity`` = TN / (TN + FP), over the whole image
- ``mssd_mm``     maximum symmetric surface distance = symmetric Hausdorff distance
                  = max of the union of both directed surface-distance sets (mm)
- ``hd95_mm``     95th percentile (numpy's default linear interpolation) of the UNION of both
                  directed surface-distance sets, in mm. This is medpy's ``hd95`` convention; MONAI's
                  ``compute_hausdorff_distance(percentile=95)`` instead takes the maximum of the two
                  directed 95th percentiles, which can be larger.
- ``assd_mm``     average symmetric surface distance = mean of the union of both directed sets,
                  i.e. (sum d(R->P) + sum d(P->R)) / (|S_R| + |S_P|) (Heimann et al. 2009, SLIVER07).
                  medpy's ``assd`` averages the two directed means instead; the two agree when both
                  surfaces have the same number of voxels.
- ``ravd_pct``    relative absolute volume difference = 100 |(|P| - |R|)| / |R| (absolute value;
                  medpy's ``ravd`` is signed).

Surfaces: the surface of a mask is ``mask XOR binary_erosion(mask, face connectivity)`` with
voxels outside the image counted as background (so an object touching the image border has a
surface there). Distances: ``scipy.ndimage.distance_transform_edt(~surface, sampling=spacing_zyx)``
sampled at the other mask's surface voxels, so anisotropic spacing is exact. Both masks are first
cropped to the bounding box of ``ref | pred`` plus a one-voxel margin, which changes nothing (the
Euclidean distance to the nearest surface voxel does not depend on voxels outside a box that
contains all surface voxels) but makes whole volumes cheap.

Empty masks (documented conventions, also printed in summary.md):

============================  =====  ===========  ===========  =========  ========
case                          dice   sensitivity  specificity  distances  ravd_pct
============================  =====  ===========  ===========  =========  ========
both empty                    1      1            1            0          0
reference empty, pred not     0      undefined    TN/(TN+FP)   undefined  undefined
pred empty, reference not     0      0            1            undefined  100
============================  =====  ===========  ===========  =========  ========

"undefined" is NaN in the per-case tables; summaries average the defined values only and always
report how many were undefined (see :func:`nanmean_std`), never a silent NaN.

2D slice Dice (Table 4's Kolmogorov-Smirnov test): :func:`slice_dice` computes the Dice of every
slice along ``axis`` (0 = the first array axis, z of a SimpleITK ``(Z, Y, X)`` array) where the
reference or the prediction has the structure; slices where both are empty are skipped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

METRICS: tuple[str, ...] = ("dice", "sensitivity", "specificity", "mssd_mm", "hd95_mm", "assd_mm", "ravd_pct")
DISTANCE_METRICS: tuple[str, ...] = ("mssd_mm", "hd95_mm", "assd_mm")
METRIC_LABELS: dict[str, str] = {
    "dice": "Dice",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "mssd_mm": "MSSD (mm)",
    "hd95_mm": "HD95 (mm)",
    "assd_mm": "ASSD (mm)",
    "ravd_pct": "RAVD (%)",
}
NAN = float("nan")


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """Slices of the bounding box of ``mask`` grown by ``margin`` voxels (clipped to the array), or
    None for an empty mask."""
    box = []
    for ax in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != ax)
        idx = np.flatnonzero(np.any(mask, axis=other)) if other else np.flatnonzero(mask)
        if idx.size == 0:
            return None
        box.append(slice(max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, mask.shape[ax])))
    return tuple(box)


def present_labels(arr: np.ndarray) -> set[int]:
    """Values present in an integer label array (``np.bincount`` for non-negative labels: several
    times faster than ``np.unique`` on whole volumes)."""
    arr = np.asarray(arr)
    if arr.size and np.issubdtype(arr.dtype, np.integer) and arr.min() >= 0 and arr.max() < 1_000_000:
        return {int(v) for v in np.flatnonzero(np.bincount(arr.ravel()))}
    return {int(v) for v in np.unique(arr)}


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels of a boolean mask: ``mask XOR erosion(mask)`` with a face-connected cross;
    voxels outside the array count as background."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    struct = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask ^ ndimage.binary_erosion(mask, structure=struct, border_value=0)


def _check_spacing(spacing: Sequence[float], ndim: int) -> np.ndarray:
    sp = np.asarray(spacing, dtype=np.float64)
    if sp.shape != (ndim,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing must be {ndim} positive numbers in array axis order, found {spacing!r}")
    return sp


def surface_distances(
    ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm: ``(d(pred surface -> ref surface), d(ref surface -> pred surface))``.

    ``ref``, ``pred``: boolean arrays of one shape, both non-empty; ``spacing``: voxel size per
    ARRAY axis (for a SimpleITK array ``(Z, Y, X)`` that is ``image.GetSpacing()[::-1]``)."""
    ref = np.asarray(ref, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    sp = _check_spacing(spacing, ref.ndim)
    box = bounding_box(ref | pred, margin=1)
    if box is None or not ref.any() or not pred.any():
        raise ValueError("surface_distances needs two non-empty masks")
    r, p = ref[box], pred[box]
    # Cropping with a margin of one keeps the surfaces identical, except where the crop touches the
    # image border, which is the image border itself (border_value=0 in both cases).
    sr, spr = surface_voxels(r), surface_voxels(p)
    dt_ref = ndimage.distance_transform_edt(~sr, sampling=sp)
    dt_pred = ndimage.distance_transform_edt(~spr, sampling=sp)
    return dt_ref[spr], dt_pred[sr]


def binary_metrics(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """All per-structure metrics of :data:`METRICS` for one mask pair (see module docstring,
    including the empty-mask conventions). ``ref``, ``pred``: arrays of one shape ``(Z, Y, X)``
    (any ndim), nonzero = structure; ``spacing`` per array axis in mm."""
    ref = np.asarray(ref, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    if ref.shape != pred.shape:
        raise ValueError(f"ref and pred shapes differ: {ref.shape} vs {pred.shape}")
    _check_spacing(spacing, ref.ndim)
    n_total = ref.size
    box = bounding_box(ref | pred, margin=1)
    if box is None:  # both empty
        return {
            "dice": 1.0,
            "sensitivity": 1.0,
            "specificity": 1.0,
            "mssd_mm": 0.0,
            "hd95_mm": 0.0,
            "assd_mm": 0.0,
            "ravd_pct": 0.0,
        }
    r, p = ref[box], pred[box]
    n_ref, n_pred = int(r.sum()), int(p.sum())
    tp = int(np.count_nonzero(r & p))
    fp, fn = n_pred - tp, n_ref - tp
    tn = n_total - tp - fp - fn
    out = {
        "dice": 2.0 * tp / (n_ref + n_pred),
        "sensitivity": tp / n_ref if n_ref else NAN,
        "specificity": tn / (tn + fp) if (tn + fp) else NAN,
        "ravd_pct": 100.0 * abs(n_pred - n_ref) / n_ref if n_ref else NAN,
    }
    if n_ref and n_pred:
        d_pr, d_rp = surface_distances(r, p, spacing)
        both = np.concatenate([d_pr, d_rp])
        out.update(
            mssd_mm=float(both.max()), hd95_mm=float(np.percentile(both, 95)), assd_mm=float(both.mean())
        )
    else:
        out.update(mssd_mm=NAN, hd95_mm=NAN, assd_mm=NAN)
    return {k: float(out[k]) for k in METRICS}


def slice_dice(ref: np.ndarray, pred: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """2D Dice of every slice along ``axis`` where ``ref`` or ``pred`` is non-empty.

    Returns ``(slice_indices, dice)``, both of length ``S`` (int64, float64)."""
    ref = np.asarray(ref, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    if ref.shape != pred.shape:
        raise ValueError(f"ref and pred shapes differ: {ref.shape} vs {pred.shape}")
    other = tuple(a for a in range(ref.ndim) if a != axis)
    nr = ref.sum(axis=other, dtype=np.int64)
    npr = pred.sum(axis=other, dtype=np.int64)
    inter = np.count_nonzero(ref & pred, axis=other) if other else (ref & pred).astype(np.int64)
    idx = np.flatnonzero((nr + npr) > 0)
    return idx.astype(np.int64), 2.0 * inter[idx] / (nr[idx] + npr[idx])


def nanmean_std(values: Sequence[float]) -> dict[str, float | int]:
    """Mean and population standard deviation (ddof=0) of the defined (finite) values, with their
    count ``n`` and the count of undefined (NaN) ones ``n_undefined``. mean/std are NaN only when no
    value is defined, and then ``n == 0`` says so."""
    a = np.asarray(list(values), dtype=np.float64)
    ok = np.isfinite(a)
    n = int(ok.sum())
    return {
        "mean": float(a[ok].mean()) if n else NAN,
        "std": float(a[ok].std()) if n else NAN,
        "n": n,
        "n_undefined": int(a.size - n),
    }
