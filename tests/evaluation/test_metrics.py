"""Metrics against hand-computed values on tiny masks, and against a brute-force surface distance."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from nnunetv2_mtmd.evaluation.metrics import (
    METRICS,
    binary_metrics,
    bounding_box,
    nanmean_std,
    slice_dice,
    surface_distances,
    surface_voxels,
)

NAN = float("nan")


def line_mask(n: int, idx) -> np.ndarray:
    """Shape (1, 1, n) mask with the given x indices set (every voxel is a surface voxel)."""
    m = np.zeros((1, 1, n), dtype=bool)
    m[0, 0, list(idx)] = True
    return m


def assert_metrics(got: dict, expected: dict) -> None:
    assert list(got) == list(METRICS)
    for k, v in expected.items():
        if isinstance(v, float) and math.isnan(v):
            assert math.isnan(got[k]), (k, got[k])
        else:
            assert got[k] == pytest.approx(v, abs=1e-9), (k, got[k], v)


# Hand-computed table. Line masks of 10 voxels, spacing (z, y, x) = (1, 1, 0.5):
# ref {2,3,4,5}, pred {4,5,6,7}: TP 2, FP 2, FN 2, TN 4.
#   d(pred->ref) = {0, 0, 1, 2} voxels, d(ref->pred) = {2, 1, 0, 0} -> union {0,0,0,0,1,1,2,2} * 0.5 mm
#   max 1.0; 95th percentile: position 0.95 * 7 = 6.65 between 2 and 2 -> 1.0; mean 6/8 * 0.5 = 0.375.
# ref {2..5}, pred {2,3}: TP 2, FN 2; d(pred->ref)={0,0}, d(ref->pred)={0,0,1,2} -> union {0,0,0,0,1,2}*0.5
#   max 1.0, p95 at 0.95*5=4.75: 1 + 0.75 * (2 - 1) = 1.75 -> 0.875 mm, mean 3/6 * 0.5 = 0.25; RAVD 50 %.
CASES = [
    (
        "partial overlap",
        [2, 3, 4, 5],
        [4, 5, 6, 7],
        dict(
            dice=0.5,
            sensitivity=0.5,
            specificity=4 / 6,
            mssd_mm=1.0,
            hd95_mm=1.0,
            assd_mm=0.375,
            ravd_pct=0.0,
        ),
    ),
    (
        "under-segmentation",
        [2, 3, 4, 5],
        [2, 3],
        dict(
            dice=4 / 6,
            sensitivity=0.5,
            specificity=1.0,
            mssd_mm=1.0,
            hd95_mm=0.875,
            assd_mm=0.25,
            ravd_pct=50.0,
        ),
    ),
    (
        "over-segmentation",
        [2, 3],
        [1, 2, 3, 4, 5, 6],
        dict(dice=0.5, sensitivity=1.0, specificity=4 / 8, ravd_pct=200.0),
    ),
    (
        "identical",
        [1, 2, 3],
        [1, 2, 3],
        dict(dice=1.0, sensitivity=1.0, specificity=1.0, mssd_mm=0.0, hd95_mm=0.0, assd_mm=0.0, ravd_pct=0.0),
    ),
    (
        "both empty",
        [],
        [],
        dict(dice=1.0, sensitivity=1.0, specificity=1.0, mssd_mm=0.0, hd95_mm=0.0, assd_mm=0.0, ravd_pct=0.0),
    ),
    (
        "reference empty",
        [],
        [3, 4],
        dict(dice=0.0, sensitivity=NAN, specificity=0.8, mssd_mm=NAN, hd95_mm=NAN, assd_mm=NAN, ravd_pct=NAN),
    ),
    (
        "prediction empty",
        [2, 3, 4, 5],
        [],
        dict(
            dice=0.0, sensitivity=0.0, specificity=1.0, mssd_mm=NAN, hd95_mm=NAN, assd_mm=NAN, ravd_pct=100.0
        ),
    ),
]


@pytest.mark.parametrize("name,ref,pred,expected", CASES, ids=[c[0] for c in CASES])
def test_binary_metrics_hand_table(name, ref, pred, expected):
    got = binary_metrics(line_mask(10, ref), line_mask(10, pred), spacing=(1.0, 1.0, 0.5))
    assert_metrics(got, expected)


def test_anisotropic_spacing_two_voxels():
    # one voxel each, 2 slices and 3 columns apart; spacing z 3 mm, x 0.5 mm:
    # distance sqrt((2*3)^2 + (3*0.5)^2) = sqrt(38.25) in both directions.
    ref = np.zeros((3, 1, 4), dtype=bool)
    pred = np.zeros_like(ref)
    ref[0, 0, 0] = True
    pred[2, 0, 3] = True
    d = math.sqrt(38.25)
    got = binary_metrics(ref, pred, spacing=(3.0, 1.0, 0.5))
    assert_metrics(
        got,
        dict(dice=0.0, sensitivity=0.0, specificity=10 / 11, mssd_mm=d, hd95_mm=d, assd_mm=d, ravd_pct=0.0),
    )
    # swapping the spacing of z and x gives a different, also hand-computed, distance: sqrt(2^2*0.25+9*9)
    got = binary_metrics(ref, pred, spacing=(0.5, 1.0, 3.0))
    assert got["mssd_mm"] == pytest.approx(math.sqrt(1.0 + 81.0))


def test_surface_of_cube_excludes_interior_and_counts_image_border():
    m = np.zeros((5, 5, 5), dtype=bool)
    m[1:4, 1:4, 1:4] = True
    s = surface_voxels(m)
    assert s.sum() == 26 and not s[2, 2, 2]
    full = np.ones((3, 3, 3), dtype=bool)  # touches the image border everywhere
    assert surface_voxels(full).sum() == 26


def _surface_brute(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: in the mask with a face neighbour outside the mask or outside the image."""
    p = np.pad(mask, 1)
    inner = np.ones_like(mask)
    for ax in range(3):
        for sh in (-1, 1):
            inner &= np.roll(p, sh, axis=ax)[1:-1, 1:-1, 1:-1]
    return np.argwhere(mask & ~inner)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_surface_distances_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    shape = (9, 11, 10)
    ref = np.zeros(shape, dtype=bool)
    pred = np.zeros(shape, dtype=bool)
    ref[2:7, 3:9, 1:8] = True
    pred[1:6, 4:11, 2:10] = True  # touches the image border in y and x
    ref &= rng.random(shape) > 0.15
    pred &= rng.random(shape) > 0.15
    spacing = np.array([3.3, 0.7, 1.1])
    sr, sp = _surface_brute(ref) * spacing, _surface_brute(pred) * spacing
    dist = cdist(sp, sr)
    d_pr, d_rp = dist.min(axis=1), dist.min(axis=0)
    got_pr, got_rp = surface_distances(ref, pred, spacing)
    np.testing.assert_allclose(np.sort(got_pr), np.sort(d_pr), atol=1e-9)
    np.testing.assert_allclose(np.sort(got_rp), np.sort(d_rp), atol=1e-9)
    union = np.concatenate([d_pr, d_rp])
    m = binary_metrics(ref, pred, spacing)
    assert m["mssd_mm"] == pytest.approx(union.max())
    assert m["hd95_mm"] == pytest.approx(np.percentile(union, 95))
    assert m["assd_mm"] == pytest.approx(union.mean())


def test_crop_does_not_change_results():
    small_ref = np.zeros((6, 6, 6), dtype=bool)
    small_ref[1:4, 1:5, 2:5] = True
    small_pred = np.roll(small_ref, 1, axis=2)
    big_ref = np.zeros((40, 50, 45), dtype=bool)
    big_pred = np.zeros_like(big_ref)
    big_ref[20:26, 30:36, 10:16] = small_ref
    big_pred[20:26, 30:36, 10:16] = small_pred
    a = binary_metrics(small_ref, small_pred, (2.0, 1.0, 1.0))
    b = binary_metrics(big_ref, big_pred, (2.0, 1.0, 1.0))
    for k in ("dice", "sensitivity", "mssd_mm", "hd95_mm", "assd_mm", "ravd_pct"):
        assert a[k] == pytest.approx(b[k])
    # specificity depends on the image size: TN grows with it
    n_small, n_big = small_ref.size, big_ref.size
    fp = int((small_pred & ~small_ref).sum())
    assert b["specificity"] == pytest.approx(
        (n_big - (small_ref | small_pred).sum()) / (n_big - small_ref.sum())
    )
    assert a["specificity"] == pytest.approx(1 - fp / (n_small - small_ref.sum()))


def test_slice_dice_hand():
    ref = np.zeros((3, 2, 2), dtype=bool)
    pred = np.zeros_like(ref)
    ref[0, 0, :] = True  # slice 0: ref 2, pred 2, overlap 1 -> 0.5
    pred[0, :, 0] = True
    ref[2, 1, 1] = True  # slice 1: both empty -> skipped; slice 2: ref 1, pred 0 -> 0
    idx, dice = slice_dice(ref, pred, axis=0)
    assert idx.tolist() == [0, 2]
    np.testing.assert_allclose(dice, [0.5, 0.0])
    idx, dice = slice_dice(
        ref, pred, axis=2
    )  # x slices: x=0: ref 1, pred 2, overlap 1 -> 2/3; x=1: ref 2 -> 0
    assert idx.tolist() == [0, 1]
    np.testing.assert_allclose(dice, [2 / 3, 0.0])


def test_nanmean_std_counts_undefined():
    s = nanmean_std([1.0, NAN, 3.0])
    assert s == {"mean": 2.0, "std": 1.0, "n": 2, "n_undefined": 1}
    s = nanmean_std([NAN])
    assert s["n"] == 0 and s["n_undefined"] == 1 and math.isnan(s["mean"])


def test_bounding_box():
    m = np.zeros((4, 5, 6), dtype=bool)
    assert bounding_box(m) is None
    m[1, 2, 3] = m[2, 4, 5] = True
    assert bounding_box(m) == (slice(1, 3), slice(2, 5), slice(3, 6))
    assert bounding_box(m, margin=1) == (slice(0, 4), slice(1, 5), slice(2, 6))


def test_bad_input_raises():
    with pytest.raises(ValueError):
        binary_metrics(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)), (1, 1, 1))
    with pytest.raises(ValueError):
        binary_metrics(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), (1, 0, 1))
