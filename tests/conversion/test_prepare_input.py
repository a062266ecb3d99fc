"""nnUNetv2_mtmd_prepare_input: code channel added with each case's geometry, files otherwise copied."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_mtmd.cli.prepare_input import main as prepare_main
from nnunetv2_mtmd.conversion.prepare_input import find_dataset_json, prepare_input
from tests.conftest import venv_bin
from tests.conversion.test_merge import SHAPE, merged
from tests.datagen import make_raw_dataset


def new_cases(tmp: Path, n: int = 2, spacing=(0.5, 0.75, 4.0), seed: int = 7) -> Path:
    """A folder of new single-channel cases ``new000_0000.nii.gz`` ... with an unusual geometry."""
    ds = make_raw_dataset(tmp / "incoming", 990, "New", ["c"], n, (2, 10, 12), spacing=spacing, seed=seed)
    return ds / "imagesTr"


@pytest.mark.parametrize("domain, code", [("alpha", 1), ("beta", 2), ("gamma", 3), ("2", 2), (3, 3)])
def test_code_channel_added_with_case_geometry(nnunet_dirs, tmp_path, domain, code):
    merged(nnunet_dirs["raw"])
    inp = new_cases(tmp_path)
    out = tmp_path / "prepared"
    written = prepare_input(inp, out, 950, domain, progress=False)
    assert sorted(written) == ["new000", "new001"]
    assert sorted(p.name for p in out.iterdir()) == [
        "new000_0000.nii.gz",
        "new000_0001.nii.gz",
        "new001_0000.nii.gz",
        "new001_0001.nii.gz",
    ]
    for case in ("new000", "new001"):
        src = inp / f"{case}_0000.nii.gz"
        assert (out / f"{case}_0000.nii.gz").read_bytes() == src.read_bytes()
        img, code_img = sitk.ReadImage(str(src)), sitk.ReadImage(str(out / f"{case}_0001.nii.gz"))
        a = sitk.GetArrayFromImage(code_img)
        assert a.shape == (2, 10, 12) and np.all(a == code)
        assert code_img.GetSpacing() == img.GetSpacing() == (0.5, 0.75, 4.0)
        assert code_img.GetOrigin() == img.GetOrigin() and code_img.GetDirection() == img.GetDirection()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_prefix_option(nnunet_dirs, tmp_path):
    merged(nnunet_dirs["raw"])
    inp = new_cases(tmp_path)
    shutil.move(inp / "new001_0000.nii.gz", inp / "beta_new001_0000.nii.gz")  # already prefixed: kept
    written = prepare_input(inp, tmp_path / "out", 950, "beta", prefix=True, progress=False)
    assert sorted(written) == ["beta_new000", "beta_new001"]
    assert (tmp_path / "out" / "beta_new000_0001.nii.gz").is_file()


def test_dataset_json_found_in_preprocessed_results_or_path(nnunet_dirs, tmp_path):
    _, out = merged(nnunet_dirs["raw"])
    dj = out / "dataset.json"
    assert find_dataset_json(950) == dj
    assert find_dataset_json("Dataset950_Merged") == dj
    assert find_dataset_json(dj) == dj
    assert find_dataset_json(out) == dj
    # raw dataset gone: preprocessed, then results (model folder) are searched
    moved = tmp_path / "raw_backup"
    shutil.move(out, moved)
    model = nnunet_dirs["results"] / "Dataset950_Merged" / "nnUNetTrainer__nnUNetPlans__2d"
    model.mkdir(parents=True)
    shutil.copy(moved / "dataset.json", model / "dataset.json")
    assert find_dataset_json(950) == model / "dataset.json"
    pre = nnunet_dirs["preprocessed"] / "Dataset950_Merged"
    pre.mkdir()
    shutil.copy(moved / "dataset.json", pre / "dataset.json")
    assert find_dataset_json(950) == pre / "dataset.json"
    written = prepare_input(new_cases(tmp_path), tmp_path / "out", 950, "gamma", progress=False)
    assert len(written) == 2


def test_two_channel_dataset(nnunet_dirs, tmp_path):
    raw = nnunet_dirs["raw"]
    make_raw_dataset(raw, 901, "Alpha", ["a"], 2, SHAPE, ("T1", "T2"))
    make_raw_dataset(raw, 902, "Beta", ["b"], 2, SHAPE, ("T1", "T2"))
    from nnunetv2_mtmd.conversion.merge import merge_datasets

    merge_datasets([901, 902], 950, raw_root=raw, progress=False)
    dj = json.loads((raw / "Dataset950_MultiDomain" / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "T1", "1": "T2", "2": "noNorm"}
    inp = make_raw_dataset(tmp_path, 990, "New", ["c"], 1, (2, 8, 8), ("T1", "T2")) / "imagesTr"
    prepare_input(inp, tmp_path / "out", 950, "Beta", progress=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "new000_0000.nii.gz",
        "new000_0001.nii.gz",
        "new000_0002.nii.gz",
    ]
    assert np.all(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "new000_0002.nii.gz"))) == 2)


def test_cli_success_and_bad_input(nnunet_dirs, tmp_path, capsys):
    merged(nnunet_dirs["raw"])
    inp = new_cases(tmp_path)
    assert prepare_main(["-i", str(inp), "-o", str(tmp_path / "ok"), "-d", "950", "--domain", "beta"]) == 0
    assert "Prepared 2 case(s)" in capsys.readouterr().out
    proc = subprocess.run(
        [
            venv_bin("nnUNetv2_mtmd_prepare_input"),
            "-i",
            str(inp),
            "-o",
            str(tmp_path / "bad"),
            "-d",
            "950",
            "--domain",
            "betta",
        ],
        env=nnunet_dirs["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "betta" in err[0] and "Did you mean 'beta'" in err[0]
    assert not (tmp_path / "bad").exists()
