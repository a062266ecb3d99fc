"""Post-processing: largest component, closing with a 5x5x5 ball, no label overwrites, folder I/O."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from nnunetv2_mtmd.cli.postprocess import main as postprocess_main
from nnunetv2_mtmd.errors import InputDataError, OutputExistsError
from nnunetv2_mtmd.evaluation.postprocess import (
    ball,
    closing_exact,
    count_components,
    expected_components,
    largest_component,
    largest_components,
    merge_closings,
    parts_beyond_kept,
    postprocess_folder,
    postprocess_labels,
    read_components,
)
from tests.evaluation.test_evaluate import make_spec, write_merged_dataset


def test_ball_is_5x5x5_with_radius_2():
    b = ball(2)
    assert b.shape == (5, 5, 5)
    # offsets with dz^2 + dy^2 + dx^2 <= 4: 1 (centre) + 6 (dist 1) + 12 (sqrt 2) + 8 (sqrt 3) + 6 (dist 2)
    assert b.sum() == 33
    assert b[2, 2, 0] and b[2, 2, 4] and not b[0, 0, 0] and b[1, 1, 1] and not b[0, 1, 1]


def test_spurious_island_removed():
    seg = np.zeros((10, 12, 12), np.uint8)
    seg[2:7, 2:7, 2:7] = 1
    seg[9, 11, 11] = 1  # island far away
    seg[2:4, 9:11, 9:11] = 2
    seg[8, 0, 0] = 2  # island of structure 2
    out = postprocess_labels(seg, [1, 2])
    assert out[9, 11, 11] == 0 and out[8, 0, 0] == 0
    assert (out == 1).sum() == 125 and (out == 2).sum() == 8


def test_largest_component_connectivity():
    m = np.zeros((3, 5, 5), bool)
    m[1, 1:3, 1:3] = True  # 4 voxels
    m[2, 3, 3] = True  # touches (1, 2, 2) by a corner only
    assert largest_component(m, 26).sum() == 5
    assert largest_component(m, 6).sum() == 4
    assert not largest_component(np.zeros((2, 2, 2), bool)).any()


def test_one_voxel_gap_closed():
    seg = np.zeros((9, 9, 13), np.uint8)
    seg[2:7, 2:7, 2:11] = 3
    seg[4, 4, 6] = 0  # one-voxel hole inside
    seg[2:7, 4, 6] = 0  # one-voxel wide crack through the block in z (still one component)
    out = postprocess_labels(seg, [3])
    assert out[4, 4, 6] == 3
    assert (out[3:6, 4, 6] == 3).all()  # the crack is closed away from the block's faces
    assert ((out == 3) >= (seg == 3)).all()  # closing never removes a voxel


def test_closing_exact_matches_padded_scipy_and_touches_border():
    rng = np.random.default_rng(0)
    m = ndimage.binary_opening(rng.random((8, 10, 9)) > 0.4)
    m[:, :, 0] |= True  # touches the image border
    mine = closing_exact(m, 2)
    pad = 5
    ref = ndimage.binary_closing(np.pad(m, pad), structure=ball(2))[pad:-pad, pad:-pad, pad:-pad]
    np.testing.assert_array_equal(mine, ref)
    assert (mine >= m).all()


def test_closing_does_not_overwrite_other_structure():
    seg = np.zeros((9, 9, 13), np.uint8)
    seg[2:7, 2:7, 2:11] = 1
    seg[4, 4, 6] = 2  # a structure-2 voxel inside structure 1's hole
    out = postprocess_labels(seg, [1, 2])
    assert out[4, 4, 6] == 2
    assert ((out == 1) == (seg == 1)).all()  # the hole is not background, so nothing to add


def test_merge_closings_contested_voxel_stays_background():
    base = np.array([[0, 0, 0, 1, 2]])
    c1 = np.array([[1, 1, 0, 1, 1]], bool)  # claims voxels 0, 1 (and 3, 4 are not background)
    c2 = np.array([[0, 1, 1, 0, 1]], bool)  # claims voxels 1, 2
    out = merge_closings(base, {1: c1, 2: c2})
    assert out.tolist() == [[1, 0, 2, 1, 2]]
    assert merge_closings(base, {2: c2, 1: c1}).tolist() == out.tolist()  # order-independent


@pytest.mark.parametrize("seed", range(4))
def test_structures_never_swap_labels(seed):
    rng = np.random.default_rng(seed)
    seg = np.zeros((12, 16, 16), np.uint8)
    for lab in (1, 2, 3):
        for _ in range(3):
            z, y, x = rng.integers(0, 10), rng.integers(0, 13), rng.integers(0, 13)
            seg[z : z + rng.integers(2, 5), y : y + rng.integers(2, 6), x : x + rng.integers(2, 6)] = lab
    seg[rng.random(seg.shape) < 0.1] = 0  # holes everywhere
    out = postprocess_labels(seg, [1, 2, 3])
    changed = out != seg
    # a voxel changes only from structure to background (islands) or background to structure (closing)
    assert not (changed & (seg != 0) & (out != 0)).any()
    for lab in (1, 2, 3):
        kept = out == lab
        assert (seg[kept] != lab).sum() == (kept & (seg == 0)).sum()  # new voxels were background
        if kept.any():
            assert ndimage.label(kept, ndimage.generate_binary_structure(3, 3))[1] == 1


def test_other_domain_labels_removed():
    seg = np.zeros((5, 5, 5), np.uint8)
    seg[1:3, 1:3, 1:3] = 1
    seg[3:5, 3:5, 3:5] = 7
    out = postprocess_labels(seg, [1, 2, 3])
    assert set(np.unique(out)) == {0, 1}


def _write(arr, path, spacing=(0.8, 0.8, 3.0), origin=(1.0, -2.0, 5.0)):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, 1))
    sitk.WriteImage(img, str(path))


def test_folder_and_cli(tmp_path, nnunet_dirs):
    spec = make_spec()
    write_merged_dataset(nnunet_dirs["raw"], spec, 950)
    pred = tmp_path / "pred"
    pred.mkdir()
    knee = np.zeros((6, 10, 10), np.uint8)
    knee[1:5, 1:6, 1:6] = 4
    knee[3, 3, 3] = 0
    knee[5, 9, 9] = 4  # island
    knee[0, 9, 0] = 1  # an ankle label in a knee case
    _write(knee, pred / "knee_001.nii.gz")
    ankle = np.zeros((6, 10, 10), np.uint8)
    ankle[2:4, 2:4, 2:4] = 2
    _write(ankle, pred / "ankle_001.nii.gz")
    (pred / "plans.json").write_text("{}")
    ref = np.zeros((6, 10, 10), np.uint8)
    ref[1:5, 1:6, 1:6] = 4  # the knee femur is one object: --components auto keeps one component
    _write(ref, nnunet_dirs["raw"] / "Dataset950_Joints" / "labelsTr" / "knee_001.nii.gz")
    out = tmp_path / "pp"
    cases = postprocess_folder(pred, out, spec, ".nii.gz", num_processes=2)
    assert cases == ["ankle_001", "knee_001"]
    img = sitk.ReadImage(str(out / "knee_001.nii.gz"))
    arr = sitk.GetArrayFromImage(img)
    assert arr.dtype == np.uint8
    assert img.GetSpacing() == pytest.approx((0.8, 0.8, 3.0)) and img.GetOrigin() == pytest.approx((1, -2, 5))
    assert img.GetDirection() == pytest.approx((0, 1, 0, 1, 0, 0, 0, 0, 1))
    assert arr[3, 3, 3] == 4 and arr[5, 9, 9] == 0 and arr[0, 9, 0] == 0
    assert (out / "plans.json").is_file()
    assert json.loads((out / "postprocessing_mtmd.json").read_text())["closing_ball_size_voxels"] == 5
    with pytest.raises(OutputExistsError):
        postprocess_folder(pred, out, spec, ".nii.gz", num_processes=1)
    assert postprocess_main(["-i", str(pred), "-o", str(tmp_path / "pp2"), "-d", "950", "-np", "1"]) == 0
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "pp2" / "knee_001.nii.gz"))), arr
    )
    assert postprocess_main(["-i", str(pred), "-o", str(pred), "-d", "950"]) == 2


def test_removed_island_is_not_given_to_another_structure():
    seg = np.zeros((9, 9, 13), np.uint8)
    seg[2:7, 2:7, 2:11] = 1
    seg[4, 4, 6] = 2  # a one-voxel island of 2 inside structure 1's hole
    seg[0:2, 0:2, 0:3] = 2  # the larger component of 2
    out = postprocess_labels(seg, [1, 2])
    assert out[4, 4, 6] == 0  # removed from 2, and not background in the input, so 1 may not take it
    m = merge_closings(np.array([[0, 0]]), {1: np.array([[1, 1]], bool)}, fillable=np.array([[1, 0]], bool))
    assert m.tolist() == [[1, 0]]


# ------------------------------------------------------------- structures made of several parts
def _blobs(sizes: list[int], shape=(3, 8, 40)) -> np.ndarray:
    """Separate 1-voxel-thick runs along x in row 1 of slice 1 with the given lengths (gaps of 2)."""
    m = np.zeros(shape, bool)
    x = 0
    for n in sizes:
        m[1, 1, x : x + n] = True
        x += n + 2
    return m


@pytest.mark.parametrize(
    "sizes, k, kept",
    [
        ([5, 9, 1], 1, 9),  # the paper's largest component
        ([5, 9, 1], 2, 14),  # both femurs under one label
        ([5, 9, 1], 3, 15),
        ([5, 9, 1], 5, 15),  # fewer components than k: all kept
        ([4, 4, 2], 1, 4),  # tie: one of the two 4s
        ([4, 4, 2], 2, 8),
        ([], 2, 0),
    ],
)
def test_largest_components_keeps_k(sizes, k, kept):
    out = largest_components(_blobs(sizes), k)
    assert out.sum() == kept
    assert (out <= _blobs(sizes)).all()


def test_largest_components_tie_keeps_first_in_raster_order():
    out = largest_components(_blobs([4, 4, 2]), 1)
    assert out[1, 1, 0:4].all() and not out[1, 1, 6:10].any()
    with pytest.raises(ValueError, match="k must be >= 1"):
        largest_components(_blobs([1]), 0)


@pytest.mark.parametrize(
    "sizes, expected",
    [
        ([], 0),
        ([30], 1),
        ([30, 29], 2),  # left and right femur
        ([30, 3], 2),  # exactly 10 % of the largest: a part
        ([30, 2], 1),  # below 10 %: an annotation speck
        ([30, 29, 2, 1, 1], 2),
    ],
)
def test_count_components_ignores_specks(sizes, expected):
    assert count_components(_blobs(sizes)) == expected


def test_count_components_connectivity():
    m = np.zeros((3, 5, 5), bool)
    m[1, 1:3, 1:3] = True
    m[2, 3, 3] = True  # a corner neighbour: one component with 26-connectivity, a second (speck) with 6
    assert count_components(m, 26) == 1
    assert count_components(m, 6, min_fraction=0.0) == 2


def _two_sided(case_parts: list[int], shape=(3, 8, 40)) -> np.ndarray:
    return np.where(_blobs([10] * case_parts, shape), 4, 0).astype(np.uint8)


def _with_stray_knee_femur(arr: np.ndarray) -> np.ndarray:
    arr = arr.copy()
    arr[1, 5, 0:5] = 4  # a one-part knee femur in an ankle case: counted, it would make the knee's lower median 1
    return arr


def test_expected_components_lower_median_over_the_domains_cases(tmp_path):
    spec = make_spec()
    files = []
    # knee femur (4): 2 parts in two cases, 1 in one -> lower median 2; ankle talus (2) 1 and 2 parts -> 1;
    # shoulder cases have no scapula (9) -> 1; a knee label in an ankle case is not counted
    for name, arr in [
        ("knee_001", _two_sided(2)),
        ("knee_002", _two_sided(2)),
        ("knee_003", _two_sided(1)),
        ("ankle_001", np.where(_blobs([10]), 2, 0).astype(np.uint8)),
        ("ankle_002", _with_stray_knee_femur(np.where(_blobs([10, 10]), 2, 0).astype(np.uint8))),
        ("shoulder_001", np.where(_blobs([10, 10]), 8, 0).astype(np.uint8)),
    ]:
        _write(arr, tmp_path / f"{name}.nii.gz")
        files.append(tmp_path / f"{name}.nii.gz")
    comp = expected_components(files, spec, ".nii.gz")
    assert comp == {1: 1, 2: 1, 3: 1, 4: 2, 5: 1, 6: 1, 7: 1, 8: 2, 9: 1}
    with pytest.raises(InputDataError, match="file ending"):
        expected_components([tmp_path / "knee_001.nii.gz"], spec, ".mha")


def test_parts_beyond_kept_lists_reference_structures_the_postprocessing_would_cut(tmp_path):
    spec = make_spec()
    cases = {
        "knee_001": _two_sided(2),  # femur (4): 2 parts, 2 kept: not cut
        "knee_002": np.where(_blobs([10, 10, 1]), 4, 0).astype(np.uint8),  # 2 parts + a 1-voxel speck
        "ankle_001": _with_stray_knee_femur(np.where(_blobs([10, 4]), 2, 0).astype(np.uint8)),  # talus 10 + 4
        "shoulder_001": np.where(_blobs([7]), 8, 0).astype(np.uint8),  # one part: not cut
    }
    for name, arr in cases.items():
        _write(arr, tmp_path / f"{name}.nii.gz")
    files = [tmp_path / f"{n}.nii.gz" for n in cases]
    n, rows = parts_beyond_kept(files, spec, ".nii.gz", {4: 2})
    # the knee femur in the ankle case is not an ankle structure: neither counted nor cut
    assert n == 4
    assert rows == [
        {"case": "knee_002", "label": 4, "name": "knee_femur", "components": 3, "kept": 2, "voxels": 21,
         "voxels_removed": 1},
        {"case": "ankle_001", "label": 2, "name": "ankle_talus", "components": 2, "kept": 1, "voxels": 14,
         "voxels_removed": 4},
    ]
    # with the paper's k = 1 everywhere, both sides of knee_001's femur count as a cut
    _, rows1 = parts_beyond_kept(files[:1], spec, ".nii.gz", {})
    assert rows1[0]["voxels_removed"] == 10
    with pytest.raises(InputDataError, match="file ending"):
        parts_beyond_kept(files, spec, ".mha", {})


def test_postprocess_keeps_both_sides_of_a_two_part_structure():
    seg = np.zeros((5, 12, 30), np.uint8)
    seg[1:4, 2:6, 2:8] = 4  # right femur
    seg[1:4, 2:6, 20:27] = 4  # left femur (larger)
    seg[4, 11, 14] = 4  # speck
    one = postprocess_labels(seg, [4])
    two = postprocess_labels(seg, [4], components={4: 2})
    assert (one == 4).sum() == 3 * 4 * 7 and not one[1:4, 2:6, 2:8].any()
    assert (two == 4).sum() == 3 * 4 * 6 + 3 * 4 * 7 and two[4, 11, 14] == 0


def test_read_components_by_name_or_id_and_errors(tmp_path):
    spec = make_spec()
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"knee_femur": 2, "8": 3}))
    assert read_components(f, spec) == {4: 2, 8: 3}
    for content, match in [
        ({"knee_femr": 2}, "Did you mean 'knee_femur'"),
        ({"knee_femur": 0}, "integer >= 1, found 0"),
        ({"knee_femur": 1.5}, "integer >= 1"),
        ({"99": 2}, "not a structure"),
        ([2], "JSON object"),
    ]:
        f.write_text(json.dumps(content))
        with pytest.raises(InputDataError, match=match):
            read_components(f, spec)
    f.write_text("{not json")
    with pytest.raises(InputDataError, match="Cannot read"):
        read_components(f, spec)


def test_cli_components_auto_1_and_file(tmp_path, nnunet_dirs):
    spec = make_spec()
    ds = write_merged_dataset(nnunet_dirs["raw"], spec, 950)
    pred = tmp_path / "pred"
    pred.mkdir()
    seg = np.zeros((5, 12, 30), np.uint8)
    seg[1:4, 2:6, 2:8] = 4
    seg[1:4, 2:6, 20:27] = 4
    _write(seg, pred / "knee_007.nii.gz")
    # no reference labels yet: auto cannot count, and says what to do
    assert postprocess_main(["-i", str(pred), "-o", str(tmp_path / "a"), "-d", "950", "-np", "1"]) == 2
    assert not (tmp_path / "a").exists()
    for i in range(3):  # reference: two femurs in every knee case
        _write(seg, ds / "labelsTr" / f"knee_00{i}.nii.gz")

    def femur_voxels(out: str, *extra: str) -> int:
        assert postprocess_main(["-i", str(pred), "-o", str(tmp_path / out), "-d", "950", "-np", "1", *extra]) == 0
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / out / "knee_007.nii.gz")))
        return int((arr == 4).sum())

    assert femur_voxels("auto") == 3 * 4 * 13
    kept = json.loads((tmp_path / "auto" / "postprocessing_mtmd.json").read_text())["components_kept"]
    assert kept["knee_femur"] == 2 and kept["knee_tibia"] == 1
    assert femur_voxels("one", "--components", "1") == 3 * 4 * 7
    cfile = tmp_path / "c.json"
    cfile.write_text(json.dumps({"knee_femur": 2}))
    assert femur_voxels("file", "--components", str(cfile)) == 3 * 4 * 13
    other = tmp_path / "other_ref"
    other.mkdir()
    _write(np.where(_blobs([10], (5, 12, 30)), 4, 0).astype(np.uint8), other / "knee_000.nii.gz")  # one femur
    assert femur_voxels("from", "--components-from", str(other)) == 3 * 4 * 7
    assert postprocess_main(["-i", str(pred), "-o", str(tmp_path / "bad"), "-d", "950",
                             "--components", "two"]) == 2
