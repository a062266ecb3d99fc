"""nnUNetv2_mtmd_export_labels: unified predictions back to each domain's original label ids."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_mtmd.cli.export_labels import main as export_main
from nnunetv2_mtmd.conversion.export_labels import domain_of_prediction, export_labels
from nnunetv2_mtmd.conversion.prepare_input import load_merged_dataset, prepare_input
from nnunetv2_mtmd.errors import InputDataError
from tests.conftest import venv_bin
from tests.conversion.test_merge import merged


def test_round_trip_recovers_original_label_files(nnunet_dirs, tmp_path):
    src, out = merged(nnunet_dirs["raw"])
    pred = tmp_path / "pred"
    shutil.copytree(out / "labelsTr", pred)
    for name in ("plans.json", "dataset.json", "predict_from_raw_data_args.json"):  # nnU-Net's extras
        (pred / name).write_text("{}")
    written = export_labels(pred, tmp_path / "exported", 950, progress=False)
    assert {k: len(v) for k, v in written.items()} == {"alpha": 3, "beta": 2, "gamma": 2}
    n = 0
    for dom, folder in src.items():
        originals = sorted((folder / "labelsTr").iterdir())
        assert sorted(p.name for p in (tmp_path / "exported" / dom).iterdir()) == [p.name for p in originals]
        for f in originals:
            a, b = sitk.ReadImage(str(f)), sitk.ReadImage(str(tmp_path / "exported" / dom / f.name))
            np.testing.assert_array_equal(sitk.GetArrayFromImage(b), sitk.GetArrayFromImage(a))
            assert sitk.GetArrayFromImage(b).dtype == np.uint8
            assert (a.GetSpacing(), a.GetOrigin(), a.GetDirection()) == (
                b.GetSpacing(),
                b.GetOrigin(),
                b.GetDirection(),
            )
            n += 1
    assert n == 7


def _pred(path: Path, values: list[int]) -> None:
    a = np.zeros((2, 6, 6), dtype=np.uint8)
    for i, v in enumerate(values):
        a[0, i, :] = v
    sitk.WriteImage(sitk.GetImageFromArray(a), str(path))


@pytest.mark.parametrize(
    "case, user_domain, expected",
    [
        ("alpha_x1", None, "alpha"),  # prefix
        ("alpha_x1", "gamma", "alpha"),  # prefix wins over --domain
        ("x1", "gamma", "gamma"),  # --domain
        ("alphax1", "2", "beta"),  # no '_' after the name: not a prefix; --domain by code
        ("delta_x1", "beta", "beta"),  # unknown prefix: --domain
    ],
)
def test_domain_resolution_order(nnunet_dirs, case, user_domain, expected):
    merged(nnunet_dirs["raw"])
    spec, _, _ = load_merged_dataset(950)
    dom = (
        spec.by_code(int(user_domain))
        if user_domain and user_domain.isdigit()
        else (spec.by_name(user_domain) if user_domain else None)
    )
    assert domain_of_prediction(case, spec, ".nii.gz", dom).name == expected


def test_domain_from_code_channel_of_prepared_input(nnunet_dirs, tmp_path):
    merged(nnunet_dirs["raw"])
    inp = tmp_path / "in"
    inp.mkdir()
    for c in ("case1", "case2"):
        sitk.WriteImage(sitk.GetImageFromArray(np.ones((2, 6, 6), np.float32)), str(inp / f"{c}_0000.nii.gz"))
    prepare_input(inp, tmp_path / "prepared", 950, "gamma", progress=False)
    pred = tmp_path / "pred"
    pred.mkdir()
    _pred(pred / "case1.nii.gz", [0, 4, 6])  # gamma_x, gamma_z -> 1, 3
    _pred(pred / "case2.nii.gz", [5])  # gamma_y -> 2
    written = export_labels(pred, tmp_path / "out", 950, input_folder=tmp_path / "prepared", progress=False)
    assert list(written) == ["gamma"]
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "gamma" / "case1.nii.gz")))
    assert got[0, :3, 0].tolist() == [0, 1, 3]
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "gamma" / "case2.nii.gz")))
    assert got[0, 0, 0] == 2 and got[1].max() == 0


def test_user_domain_for_unprefixed_cases_and_prefix_warning(nnunet_dirs, tmp_path, caplog):
    merged(nnunet_dirs["raw"])
    pred = tmp_path / "pred"
    pred.mkdir()
    _pred(pred / "p1.nii.gz", [3])  # beta_c -> 1
    _pred(pred / "alpha_p2.nii.gz", [2, 1])  # alpha_b, alpha_a -> 2, 1
    with caplog.at_level(logging.WARNING):
        written = export_labels(pred, tmp_path / "out", 950, domain="beta", progress=False)
    assert sorted(written) == ["alpha", "beta"]
    assert (tmp_path / "out" / "alpha" / "p2.nii.gz").is_file() and (
        tmp_path / "out" / "beta" / "p1.nii.gz"
    ).is_file()
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "beta" / "p1.nii.gz")))[0, 0, 0] == 1
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "alpha" / "p2.nii.gz")))[
        0, :2, 0
    ].tolist() == [2, 1]
    assert any("alpha_p2" in r.getMessage() and "precedence" in r.getMessage() for r in caplog.records)


def test_two_predictions_onto_one_output_name_refused(nnunet_dirs, tmp_path):
    merged(nnunet_dirs["raw"])
    pred = tmp_path / "pred"
    pred.mkdir()
    _pred(pred / "beta_p1.nii.gz", [3])
    _pred(pred / "p1.nii.gz", [3])
    with pytest.raises(InputDataError, match="beta/p1.nii.gz"):
        export_labels(pred, tmp_path / "out", 950, domain="beta", progress=False)
    assert not (tmp_path / "out").exists()


def test_cli_success_and_bad_input(nnunet_dirs, tmp_path, capsys):
    merged(nnunet_dirs["raw"])
    pred = tmp_path / "pred"
    pred.mkdir()
    _pred(pred / "beta_p1.nii.gz", [3])
    assert export_main(["-i", str(pred), "-o", str(tmp_path / "ok"), "-d", "950"]) == 0
    assert "beta: 1 case(s)" in capsys.readouterr().out
    _pred(pred / "beta_p2.nii.gz", [3, 5])  # 5 = gamma_y: not a beta label
    proc = subprocess.run(
        [venv_bin("nnUNetv2_mtmd_export_labels"), "-i", str(pred), "-o", str(tmp_path / "bad"), "-d", "950"],
        env=nnunet_dirs["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "beta_p2" in err[0] and "5 (gamma_y)" in err[0]
    assert not (tmp_path / "bad").exists()
