"""nnunetv2_mtmd/cli/study.py: dry run, bad options and missing data give clear errors."""

from __future__ import annotations

import pytest

from tests.apps.study.helpers import REPO, make_sources, study_cli


def test_cli_dry_run_prints_commands_and_writes_nothing(tmp_path):
    src = make_sources(tmp_path, n_cases=1)
    work = tmp_path / "work"
    proc = study_cli(["--workdir", str(work), "--sources", str(src), "--folds", "1", "--schemes", "Individual", "DSL",
                      "--iterations", "4", "--epochs", "2", "--dry-run"])
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "nnUNetv2_mtmd_merge -d" in out and "--domains Ankle Knee Shoulder -o 950" in out
    assert "nnUNetv2_preprocess -d 901 902 903 950 -plans_name nnUNetPlans_study -c 2d" in out
    assert "nnUNetv2_train Dataset902_Knee 2d 1 -tr nnUNetTrainer_study -p nnUNetPlans_study -device cpu" in out
    assert "nnUNetv2_train Dataset950_MSKBonesMR 2d 1 -tr nnUNetTrainerMTMD_DSL_study" in out
    assert "nnUNetv2_mtmd_embeddings -d Dataset950_MSKBonesMR" in out
    # post-processing per fold, with the parts counted in that fold's training labels
    assert "# count the parts of every structure in the training labels of fold 1" in out
    assert "--components " + str(work / "evaluation" / "components_fold1.json") in out
    assert not work.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workdir", str(REPO / "study_here")], "inside the repository"),
        (["--schemes", "DSL", "Fancy"], "Unknown scheme(s) ['Fancy']"),
        (["--folds", "5"], "Folds must be 0..4"),
        (["--iterations", "10", "--epochs", "3"], "multiple of --epochs"),
    ],
)
def test_cli_refuses_bad_options(tmp_path, args, message):
    src = make_sources(tmp_path, n_cases=1)
    base = ["--workdir", str(tmp_path / "w"), "--sources", str(src), "--dry-run"]
    proc = study_cli([*base, *args])
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_cli_missing_real_data_is_a_clear_error(tmp_path):
    proc = study_cli(["--workdir", str(tmp_path / "w"), "--sources", str(tmp_path / "realdata"), "--dry-run"])
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "--sources" in proc.stderr


def test_cli_dry_run_trains_in_the_run_order(tmp_path):
    """--later: the later schemes' models come after every fold of the others; Individual first."""
    src = make_sources(tmp_path, n_cases=1)
    proc = study_cli(["--workdir", str(tmp_path / "w"), "--sources", str(src), "--folds", "0", "1", "--schemes",
                      "Shared", "DSL", "Individual", "--later", "Shared", "--dry-run"])
    assert proc.returncode == 0, proc.stderr
    trains = [ln.split()[1:6:2] for ln in proc.stdout.splitlines()
              if ln.startswith("nnUNetv2_train ")]
    assert trains == [[d, "0", tr] for d, tr in (("Dataset901_Ankle", "nnUNetTrainer_study"),
                                                  ("Dataset902_Knee", "nnUNetTrainer_study"),
                                                  ("Dataset903_Shoulder", "nnUNetTrainer_study"),
                                                  ("Dataset950_MSKBonesMR", "nnUNetTrainerMTMD_DSL_study"))] + [
        [d, "1", tr] for d, tr in (("Dataset901_Ankle", "nnUNetTrainer_study"),
                                   ("Dataset902_Knee", "nnUNetTrainer_study"),
                                   ("Dataset903_Shoulder", "nnUNetTrainer_study"),
                                   ("Dataset950_MSKBonesMR", "nnUNetTrainerMTMD_DSL_study"))] + [
        ["Dataset950_MSKBonesMR", f, "nnUNetTrainerMTMD_Shared_study"] for f in ("0", "1")]
