"""Bad input to ``nnUNetv2_predict`` (issue 7, item 4): a missing, non-constant or unknown domain
code fails with a clear error naming the case, before any output file is written.

nnU-Net itself checks none of this (see docs/reliability.md); the plugin's check
(``nnunetv2_mtmd.inference.checks``) is installed into nnU-Net's predictor when the MTMD trainer
builds the network (the wrappers are an upstream patch: ``nnunetv2_mtmd.compat``). Tested at
three levels: the checks on files and arrays, nnU-Net's predictor in process (all four entry
points, fail-safe behaviour, non-MTMD models untouched), and the real ``nnUNetv2_predict`` console
script.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from nnunetv2_mtmd import compat
from nnunetv2_mtmd.domains import DomainSpec
from nnunetv2_mtmd.errors import InputDataError
from nnunetv2_mtmd.inference import checks as ic
from tests.conftest import venv_bin
from tests.reliability.model_folder import DATASET, SHAPE, TRAINER, dataset_json, make_model_folder, write_case

SPEC = DomainSpec.from_dataset_json(dataset_json())


# ----------------------------------------------------------------------------------- code values
@pytest.mark.parametrize("values,expected", [
    (np.full(SHAPE, 1.0), None),
    (np.full(SHAPE, 2.0), None),
    (np.full(SHAPE, 2.0004), None),  # within the tolerance
    (np.full(SHAPE, 0.0), "holds 0, which is not a domain code of this model (1=ankle, 2=knee)"),
    (np.full(SHAPE, 3.0), "holds 3, which is not a domain code"),
    (np.full(SHAPE, -1.0), "holds -1, which is not a domain code"),
    (np.full(SHAPE, 1.5), "holds 1.5, which is not a domain code"),
    (np.arange(np.prod(SHAPE), dtype=float).reshape(SHAPE), "is not constant: values from 0 to 511"),
    (np.where(np.arange(np.prod(SHAPE)).reshape(SHAPE) == 0, 0.0, 1.0), "is not constant: values from 0 to 1"),
    (np.full(SHAPE, np.nan), "contains NaN or inf"),
    (np.full(SHAPE, np.inf), "contains NaN or inf"),
    (np.zeros((0,)), "is empty"),
])
def test_code_values(values, expected):
    got = ic.check_code_values(values, SPEC)
    assert got is None if expected is None else (got is not None and expected in got), got


# ------------------------------------------------------------------------------------ input files
def bad_input_folder(folder: Path) -> dict[str, str]:
    """One good case per domain and one case per fault; returns {case: expected message part}."""
    write_case(folder, "ankle_001", 1)
    write_case(folder, "knee_001", 2)
    write_case(folder, "ankle_002", None)  # code channel missing
    write_case(folder, "knee_003", np.random.default_rng(0).normal(0, 1, SHAPE))  # image as last channel
    write_case(folder, "knee_004", 7)  # unknown code
    write_case(folder, "ankle_005", 0)  # code 0
    write_case(folder, "ankle_006", 1, channel_indices=[0, 2])  # gap in the channel numbering
    write_case(folder, "ankle_007", 1, n_image_channels=2)  # one channel too many
    (folder / "knee_008_0000.nii.gz").write_bytes(b"x")
    (folder / "knee_008_0001.nii.gz").write_bytes(b"not an image")  # unreadable code channel
    (folder / "scan.nii.gz").write_bytes(b"x")  # not <case>_XXXX
    return {
        "ankle_002": "the domain code channel _0001.nii.gz is missing; add the code channel with "
                     "nnUNetv2_mtmd_prepare_input",
        "knee_003": "knee_003_0001.nii.gz: the last channel (the domain code channel) is not constant",
        "knee_004": "knee_004_0001.nii.gz: the code channel holds 7, which is not a domain code",
        "ankle_005": "holds 0, which is not a domain code",
        "ankle_006": "has channel files _0000, _0002, expected _0000.._0001",
        "ankle_007": "has channel files _0000, _0001, _0002, expected _0000.._0001",
        "knee_008": "cannot read knee_008_0001.nii.gz",
        "scan.nii.gz": "file name is not <case>_XXXX.nii.gz",
    }


def test_check_prediction_inputs_names_every_bad_case(tmp_path):
    expected = bad_input_folder(tmp_path / "in")
    problems = ic.check_prediction_inputs(tmp_path / "in", dataset_json())
    got = {p.case: p.message for p in problems}
    assert set(got) == set(expected)  # the good cases ankle_001 and knee_001 are not reported
    for case, part in expected.items():
        assert part in got[case], (case, got[case])
    with pytest.raises(InputDataError) as e:
        ic.raise_for_problems(problems)
    msg = str(e.value)
    assert msg.startswith("8 input case(s) cannot be predicted") and "nothing was predicted or written" in msg
    assert all(f"case '{c}'" in msg for c in expected)


def test_list_of_lists_input_and_good_folder(tmp_path):
    write_case(tmp_path, "ankle_001", 1)
    write_case(tmp_path, "knee_001", 3)
    assert [p.case for p in ic.check_prediction_inputs(tmp_path, dataset_json())] == ["knee_001"]
    lol = [[str(tmp_path / "ankle_001_0000.nii.gz"), str(tmp_path / "ankle_001_0001.nii.gz")],
           [str(tmp_path / "knee_001_0000.nii.gz")]]
    problems = ic.check_prediction_inputs(lol, dataset_json())
    assert [(p.case, "is missing" in p.message) for p in problems] == [("knee_001", True)]
    assert ic.check_prediction_inputs(lol[:1], dataset_json()) == []
    with pytest.raises(InputDataError, match="does not exist"):
        ic.check_prediction_inputs(tmp_path / "nope", dataset_json())


def test_many_bad_cases_are_summarised(tmp_path):
    for i in range(25):
        write_case(tmp_path, f"ankle_{i:03d}", None)
    with pytest.raises(InputDataError) as e:
        ic.raise_for_problems(ic.check_prediction_inputs(tmp_path, dataset_json()))
    assert "25 input case(s)" in str(e.value) and "... and 5 more" in str(e.value)


# ----------------------------------------------------------------------- nnU-Net's predictor in process
@pytest.fixture
def model(tmp_path, monkeypatch):
    results = tmp_path / "results"
    folder = make_model_folder(results)
    return folder


def _predictor(folder: Path):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    p = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False, perform_everything_on_device=False,
                        device=torch.device("cpu"), verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    p.initialize_from_trained_model_folder(str(folder), use_folds=(0,), checkpoint_name="checkpoint_final.pth")
    return p


@pytest.mark.parametrize("method", ["predict_from_files", "predict_from_files_sequential"])
def test_predictor_refuses_bad_files_before_writing_anything(model, tmp_path, method):
    expected = bad_input_folder(tmp_path / "in")
    out = tmp_path / "out"
    pred = _predictor(model)
    with pytest.raises(InputDataError) as e:
        getattr(pred, method)(str(tmp_path / "in"), str(out), save_probabilities=False, overwrite=True)
    assert all(f"case '{c}'" in str(e.value) for c in expected)
    assert not out.exists()  # nnU-Net would have written predict_from_raw_data_args.json etc. first


def test_predictor_predicts_good_files(model, tmp_path):
    write_case(tmp_path / "in", "ankle_001", 1)
    write_case(tmp_path / "in", "knee_001", 2)
    (tmp_path / "out").mkdir()  # nnU-Net's sequential path expects it (its CLI creates it)
    pred = _predictor(model)
    pred.predict_from_files_sequential(str(tmp_path / "in"), str(tmp_path / "out"), save_probabilities=False,
                                       overwrite=True)
    assert (tmp_path / "out" / "ankle_001.nii.gz").is_file() and (tmp_path / "out" / "knee_001.nii.gz").is_file()


def test_predictor_refuses_bad_arrays(model):
    pred = _predictor(model)
    props = {"spacing": [2.0, 1.0, 1.0]}
    good = np.stack([np.zeros(SHAPE), np.full(SHAPE, 2.0)]).astype(np.float32)
    no_code = good[:1]
    wrong = np.stack([np.zeros(SHAPE), np.full(SHAPE, 5.0)]).astype(np.float32)
    with pytest.raises(InputDataError) as e:
        pred.predict_from_list_of_npy_arrays([good, no_code, wrong], None, [props] * 3, ["out/a", "out/b", "out/c"])
    msg = str(e.value)
    assert "case 'b'" in msg and "has 1 channel(s), the model needs 2" in msg
    assert "case 'c'" in msg and "holds 5" in msg and "case 'a'" not in msg
    with pytest.raises(InputDataError, match="case '#0'"):
        pred.predict_single_npy_array(wrong, props)
    seg = pred.predict_single_npy_array(good, props)
    assert seg.shape == SHAPE


def test_hook_fails_safe_and_ignores_other_models(model, tmp_path, monkeypatch, caplog):
    write_case(tmp_path / "in", "ankle_001", 1)
    (tmp_path / "out").mkdir()
    pred = _predictor(model)

    def broken(*a, **kw):
        raise RuntimeError("checker bug")

    monkeypatch.setattr(ic, "check_prediction_inputs", broken)
    with caplog.at_level(logging.WARNING):
        pred.predict_from_files_sequential(str(tmp_path / "in"), str(tmp_path / "out"), save_probabilities=False,
                                           overwrite=True)
    assert "input check was skipped (RuntimeError: checker bug)" in caplog.text
    assert (tmp_path / "out" / "ankle_001.nii.gz").is_file()
    # a non-MTMD network is never checked: stock nnU-Net models behave exactly as before
    called = []
    monkeypatch.setattr(ic, "check_prediction_inputs", lambda *a, **kw: called.append(1) or [])
    monkeypatch.setattr(ic, "check_prediction_arrays", lambda *a, **kw: called.append(1) or [])
    pred.network = torch.nn.Identity()
    assert ic.predictor_domain_spec(pred) is None
    with pytest.raises(Exception):  # noqa: B017 - nnU-Net's own failure with this fake network
        pred.predict_single_npy_array(np.zeros((2, *SHAPE), np.float32), {"spacing": [2.0, 1.0, 1.0]})
    assert not called


def test_install_is_idempotent():
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    assert ic.install_predictor_input_check()
    first = nnUNetPredictor.predict_from_files
    assert ic.install_predictor_input_check()
    assert nnUNetPredictor.predict_from_files is first and getattr(first, compat._PATCH_MARK)
    assert first.__wrapped__.__name__ == "predict_from_files"


# ------------------------------------------------------------------------------- real console script
@pytest.mark.slow
def test_nnunetv2_predict_console_script(nnunet_dirs, tmp_path):
    make_model_folder(nnunet_dirs["results"])
    inp, out = tmp_path / "in", tmp_path / "out"
    write_case(inp, "ankle_001", 1)
    write_case(inp, "knee_001", 2)
    write_case(inp, "knee_002", None)  # the code channel was forgotten
    args = [venv_bin("nnUNetv2_predict"), "-i", str(inp), "-o", str(out), "-d", DATASET, "-tr", TRAINER, "-c", "2d",
            "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_tta", "--disable_progress_bar"]
    proc = subprocess.run(args, env=nnunet_dirs["env"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "InputDataError: 1 input case(s) cannot be predicted" in proc.stderr, proc.stderr[-3000:]
    assert "case 'knee_002'" in proc.stderr and "_0001.nii.gz is missing" in proc.stderr
    assert list(out.iterdir()) == []  # nnU-Net's CLI creates the folder; nothing is written into it
    (inp / "knee_002_0000.nii.gz").unlink()
    proc = subprocess.run(args, env=nnunet_dirs["env"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["ankle_001.nii.gz", "knee_001.nii.gz"]


@pytest.mark.parametrize("name,code,expected", [
    ("missing", None, "expected 2 input channels"),
    ("unknown", 5, "invalid domain code(s) [5]"),
    ("non-constant", "uniform", None),  # no error at all: the spatial maximum happens to be a valid code
])
def test_without_the_check_nnunet_fails_late_or_silently(model, tmp_path, name, code, expected):
    """What nnU-Net does on its own (the check bypassed): the good case before the bad one is
    already written, the error does not name the case, and a non-constant last channel whose maximum
    rounds to a valid code is predicted silently with that domain."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    inp, out = tmp_path / "in", tmp_path / "out"
    out.mkdir()
    write_case(inp, "ankle_001", 1)
    write_case(inp, "knee_002", np.random.default_rng(0).uniform(0, 2.4, SHAPE) if code == "uniform" else code)
    unchecked = nnUNetPredictor.predict_from_files_sequential.__wrapped__
    if expected is None:
        unchecked(_predictor(model), str(inp), str(out), save_probabilities=False, overwrite=True)
        assert (out / "knee_002.nii.gz").is_file()
    else:
        with pytest.raises(ValueError) as e:
            unchecked(_predictor(model), str(inp), str(out), save_probabilities=False, overwrite=True)
        assert expected in str(e.value) and "knee_002" not in str(e.value)
    assert (out / "ankle_001.nii.gz").is_file() and (out / "plans.json").is_file()
