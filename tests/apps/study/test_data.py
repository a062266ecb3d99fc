"""nnunetv2_mtmd/study/data.py: the Individual splits derived from the merged split, label remap, sources."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_mtmd.apps.study import (
    find_sources,
    individual_splits,
    remap_labels,
    strip_domain_prefix,
    unify_individual_prediction,
)
from nnunetv2_mtmd.errors import InputDataError
from tests.apps.study.helpers import small_spec
from tests.datagen import make_raw_dataset


def test_individual_splits_hold_out_the_same_cases():
    spec = small_spec()
    merged = [
        {"train": ["hip_h1", "knee_a", "knee_b"], "val": ["hip_h0", "knee_c"]},
        {"train": ["hip_h0", "knee_a", "knee_c"], "val": ["hip_h1", "knee_b"]},
    ]
    assert individual_splits(merged, spec) == {
        "knee": [{"train": ["a", "b"], "val": ["c"]}, {"train": ["a", "c"], "val": ["b"]}],
        "hip": [{"train": ["h1"], "val": ["h0"]}, {"train": ["h0"], "val": ["h1"]}],
    }


def test_individual_splits_refuse_a_fold_without_validation_case_of_a_domain():
    merged = [{"train": ["hip_h0", "knee_a"], "val": ["knee_b"]}]
    with pytest.raises(InputDataError, match="no val case of domain 'hip'"):
        individual_splits(merged, small_spec())


@pytest.mark.parametrize("case, domain, expected", [("knee_a", "knee", "a"), ("knee_case_01", "knee", "case_01"),
                                                    ("hip_knee_x", "hip", "knee_x")])
def test_strip_domain_prefix(case, domain, expected):
    assert strip_domain_prefix(case, small_spec().by_name(domain)) == expected


def test_strip_domain_prefix_refuses_another_domain():
    with pytest.raises(InputDataError, match="not a case of domain 'hip'"):
        strip_domain_prefix("knee_a", small_spec().by_name("hip"))


def test_remap_labels_to_unified_ids():
    hip = small_spec().by_name("hip")  # original femur 1 -> unified 3
    arr = np.array([[[0, 1], [1, 0]]], dtype=np.uint8)
    out = remap_labels(arr, hip.original_to_unified())
    np.testing.assert_array_equal(out, [[[0, 3], [3, 0]]])
    assert out.dtype == np.uint8
    knee = small_spec().by_name("knee")
    np.testing.assert_array_equal(remap_labels(np.array([2, 0, 1]), knee.original_to_unified()), [2, 0, 1])


def test_remap_labels_refuses_undeclared_ids():
    with pytest.raises(InputDataError, match=r"label ids \[2\]"):
        remap_labels(np.array([0, 1, 2]), small_spec().by_name("hip").original_to_unified())


def test_unify_individual_prediction_keeps_geometry(tmp_path):
    arr = np.zeros((2, 3, 4), dtype=np.uint8)
    arr[0, 1, 2] = 1
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.5, 0.7, 3.0))
    img.SetOrigin((1.0, 2.0, 3.0))
    sitk.WriteImage(img, str(tmp_path / "h0.nii.gz"))
    unify_individual_prediction(tmp_path / "h0.nii.gz", tmp_path / "hip_h0.nii.gz", small_spec().by_name("hip"))
    out = sitk.ReadImage(str(tmp_path / "hip_h0.nii.gz"))
    got = sitk.GetArrayFromImage(out)
    assert got[0, 1, 2] == 3 and got.sum() == 3
    assert out.GetSpacing() == pytest.approx((0.5, 0.7, 3.0))
    assert out.GetOrigin() == pytest.approx((1.0, 2.0, 3.0))


def test_find_sources_domain_names(tmp_path):
    for i, name in enumerate(("LumbarVertebraeMR", "Hip_MR")):
        make_raw_dataset(tmp_path, 901 + i, name, ["a"], n_cases=1, shape=(2, 8, 8))
    got = find_sources(tmp_path)
    assert [s.domain for s in got] == ["lumbar", "HipMR"]  # the real dataset's name; derived from the name
    assert [s.dataset_id for s in got] == [901, 902]
    assert [s.domain for s in find_sources(tmp_path, ["spine", "hip"])] == ["spine", "hip"]
    with pytest.raises(InputDataError, match="gives 1 names"):
        find_sources(tmp_path, ["spine"])
    with pytest.raises(InputDataError, match="does not exist"):
        find_sources(tmp_path / "nope")
