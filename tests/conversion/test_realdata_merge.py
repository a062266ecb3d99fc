"""dataset_conversion/merge_real_musculoskeletal.py: on a synthetic stand-in of the real folder (always
run) and on the real data in ../shared/realdata (marked realdata + slow; skipped when absent)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import REALDATA, REPO
from tests.conversion.test_merge import run_verify_dataset_integrity
from tests.datagen import make_raw_dataset

SCRIPT = REPO / "dataset_conversion" / "merge_real_musculoskeletal.py"
#: hand-written from the sources' dataset.json files: lumbar L1-L5, sij 1 label, pelvis 4 labels
EXPECTED_LABELS = {
    "background": 0,
    "lumbar_L1": 1,
    "lumbar_L2": 2,
    "lumbar_L3": 3,
    "lumbar_L4": 4,
    "lumbar_L5": 5,
    "sij_sij_bone_region": 6,
    "pelvis_femur": 7,
    "pelvis_ilium": 8,
    "pelvis_spine": 9,
    "pelvis_sacrum": 10,
}
OFFSETS = {"lumbar": 0, "sij": 5, "pelvis": 6}
SOURCES = {
    "lumbar": "Dataset901_LumbarVertebraeMR",
    "sij": "Dataset902_SacroiliacMR",
    "pelvis": "Dataset903_PelvisBoneMR",
}


def load_script():
    spec = importlib.util.spec_from_file_location("merge_real_musculoskeletal", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def check_sample(src_root: Path, out: Path, per_domain: int, skip: tuple[str, ...] = ()) -> int:
    """Images byte-identical, code channel constant, labels = original + domain offset, for a sample."""
    n = 0
    for code, (dom, ds) in enumerate(SOURCES.items(), start=1):
        labels = [f for f in sorted((src_root / ds / "labelsTr").glob("*.nii.gz")) if f.name not in skip]
        idx = np.unique(np.linspace(0, len(labels) - 1, per_domain).round().astype(int))
        for i in idx:
            f = labels[i]
            case = f.name[: -len(".nii.gz")]
            img = src_root / ds / "imagesTr" / f"{case}_0000.nii.gz"
            assert (out / "imagesTr" / f"{dom}_{case}_0000.nii.gz").read_bytes() == img.read_bytes()
            code_arr = sitk.GetArrayFromImage(
                sitk.ReadImage(str(out / "imagesTr" / f"{dom}_{case}_0001.nii.gz"))
            )
            assert code_arr.shape == sitk.GetArrayFromImage(sitk.ReadImage(str(img))).shape
            assert np.all(code_arr == code)
            orig = sitk.GetArrayFromImage(sitk.ReadImage(str(f))).astype(np.int64)
            got = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / f"{dom}_{f.name}")))
            np.testing.assert_array_equal(got, np.where(orig > 0, orig + OFFSETS[dom], 0))
            n += 1
    return n


def test_script_on_synthetic_stand_in(nnunet_dirs, tmp_path, capsys):
    fake = tmp_path / "realdata"
    make_raw_dataset(fake, 901, "LumbarVertebraeMR", ["L1", "L2", "L3", "L4", "L5"], 3, (3, 16, 16), ("MRI",))
    make_raw_dataset(fake, 902, "SacroiliacMR", ["sij_bone_region"], 2, (3, 16, 16), ("T1",), seed=1)
    make_raw_dataset(
        fake, 903, "PelvisBoneMR", ["femur", "ilium", "spine", "sacrum"], 2, (3, 16, 16), ("MRI",), seed=2
    )
    # the original lumbar source repeated one volume under two numbers: the script keeps one copy
    ds = fake / SOURCES["lumbar"]
    for sub, suffix in (("imagesTr", "_0000.nii.gz"), ("labelsTr", ".nii.gz")):
        (ds / sub / f"lum002{suffix}").write_bytes((ds / sub / f"lum001{suffix}").read_bytes())
    assert load_script().main(["--realdata", str(fake)]) == 0
    out = nnunet_dirs["raw"] / "Dataset950_MSKBonesMR"
    dj = json.loads((out / "dataset.json").read_text())
    assert dj["labels"] == EXPECTED_LABELS
    assert dj["channel_names"] == {"0": "MRI", "1": "noNorm"}
    assert dj["numTraining"] == 2 + 2 + 2
    assert "dropped duplicates: lumbar_lum002" in capsys.readouterr().out
    assert not (out / "labelsTr" / "lumbar_lum002.nii.gz").exists()
    assert check_sample(fake, out, 2, skip=("lum002.nii.gz",)) == 6


@pytest.mark.realdata
@pytest.mark.slow
def test_real_data_merge(nnunet_dirs, monkeypatch, capsys):
    assert load_script().main(["--realdata", str(REALDATA)]) == 0
    printed = capsys.readouterr().out
    assert "dropped duplicates" not in printed  # the shared copy already keeps only case 18
    out = nnunet_dirs["raw"] / "Dataset950_MSKBonesMR"
    dj = json.loads((out / "dataset.json").read_text())
    assert dj["numTraining"] == 54
    assert [d["num_cases"] for d in dj["mtmd"]["domains"]] == [29, 9, 16]
    assert dj["labels"] == EXPECTED_LABELS and len(dj["labels"]) == 11
    assert dj["channel_names"] == {"0": "MRI", "1": "noNorm"}
    assert len(list((out / "imagesTr").iterdir())) == 2 * 54
    assert check_sample(REALDATA, out, 3) == 9
    run_verify_dataset_integrity(out, monkeypatch)
    assert "verify_dataset_integrity Done" in capsys.readouterr().out
