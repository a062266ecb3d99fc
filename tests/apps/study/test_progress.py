"""nnunetv2_mtmd/study/progress.py: training/resume state from nnU-Net's files, timings, `--stage status`."""

from __future__ import annotations

import math

import pytest

from nnunetv2_mtmd.apps.study import (
    StudyState,
    autoencoder_dice,
    config_differences,
    epoch_times,
    epochs_completed,
    fold_finish_seconds,
    format_progress,
    train_command,
    training_hours,
    training_status,
)
from nnunetv2_mtmd.errors import InputDataError
from tests.apps.study.helpers import make_sources, touch


def test_training_status_and_commands(tmp_path):
    fd = tmp_path / "fold_0"
    assert training_status(fd) == "new"
    touch(fd / "checkpoint_best.pth")
    assert training_status(fd) == "resume"
    touch(fd / "checkpoint_final.pth")
    assert training_status(fd, ["a", "b"]) == "validate"
    touch(fd / "validation" / "a.nii.gz")
    touch(fd / "validation" / "summary.json")
    assert training_status(fd, ["a", "b"]) == "validate"  # case b still missing
    touch(fd / "validation" / "b.nii.gz")
    assert training_status(fd, ["a", "b"]) == "done"
    base = ["nnUNetv2_train", "Dataset950_X", "2d", "1", "-tr", "T", "-p", "nnUNetPlans_study", "-device", "cpu"]
    assert train_command("Dataset950_X", 1, "T", "new") == base
    assert train_command("Dataset950_X", 1, "T", "resume") == [*base, "--c"]
    assert train_command("Dataset950_X", 1, "T", "validate") == [*base, "--val"]
    with pytest.raises(ValueError):
        train_command("Dataset950_X", 1, "T", "done")


def test_epoch_times_from_training_logs(tmp_path):
    (tmp_path / "training_log_2024_1_1_10_00_00.txt").write_text(
        "2024-01-01 10:00:01: Epoch 0\n2024-01-01 10:00:09: Epoch time: 8.5 s\n...\nEpoch time: 7.25 s\n")
    (tmp_path / "training_log_2024_1_1_11_00_00.txt").write_text("x: Epoch time: 6.0 s\n")
    assert epoch_times(tmp_path) == [8.5, 7.25, 6.0]


def test_autoencoder_dice_is_the_last_frozen_line(tmp_path):
    assert autoencoder_dice(tmp_path) is None  # no log
    (tmp_path / "training_log_2024_1_1_10_00_00.txt").write_text(
        "x: MJAP autoencoder it 300/300: CE 0.1 MSC 1.1 validation reconstruction Dice 0.2561\n"
        "x: MJAP autoencoder frozen; validation reconstruction Dice 0.2561\nx: Epoch 0\n")
    assert autoencoder_dice(tmp_path) == pytest.approx(0.2561)
    # a restart from scratch in a later log trains a new autoencoder: its value counts
    (tmp_path / "training_log_2024_1_1_11_00_00.txt").write_text(
        "x: MJAP autoencoder frozen; validation reconstruction Dice 0.3386\n")
    assert autoencoder_dice(tmp_path) == pytest.approx(0.3386)
    (tmp_path / "training_log_2024_1_1_12_00_00.txt").write_text("x: Epoch time: 6.0 s\n")  # resumed: no phase 1
    assert autoencoder_dice(tmp_path) == pytest.approx(0.3386)


def test_state_resume_and_config_check(tmp_path):
    st = StudyState(tmp_path / "state.json")
    st.set_config({"budget": {"iterations": 10, "epochs": 2}, "sources": ["A", "B"]})
    st.mark_done("prepare", seconds=3)
    st.add_seconds("train:fold0:DSL:D", 10.0)
    st.add_seconds("train:fold0:DSL:D", 5.5)
    st.add_command("nnUNetv2_train x")
    st.add_command("nnUNetv2_train x")
    again = StudyState(tmp_path / "state.json")  # what a re-run sees
    assert again.is_done("prepare") and not again.is_done("train:fold0:DSL:D")
    assert again.data["seconds"]["train:fold0:DSL:D"] == 15.5
    assert again.data["commands"] == ["nnUNetv2_train x"]
    again.set_config({"budget": {"iterations": 10, "epochs": 2}, "sources": ["A", "B"]})  # same: accepted
    with pytest.raises(InputDataError, match=r"budget.iterations: recorded 10, now 20"):
        again.set_config({"budget": {"iterations": 20, "epochs": 2}, "sources": ["A", "B"]})
    again.unmark("prepare")
    assert not StudyState(tmp_path / "state.json").is_done("prepare")


def test_config_differences():
    assert config_differences({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}, "d": 4}) == [
        "b.c: recorded 2, now 3", "d: recorded None, now 4"]


_LOG = "2026-11-22 09:30:08.949156: Epoch {e}\n2026-11-22 09:30:09.1: Current learning rate: 0.006\n"


@pytest.mark.parametrize("times, epochs, hours", [
    ([[100.0, 100.0, 100.0]], 36, 1.0),
    # a paused epoch (1300 s) does not move the median; a repeated epoch is not counted twice
    ([[100.0, 1300.0, 100.0, 100.0]], 36, 1.0),
    # two models: (90 x 40 + 180 x 40) s = 3 h
    ([[90.0, 90.0], [180.0]], 40, 3.0),
    # a model without a logged epoch counts nothing
    ([[90.0], []], 40, 1.0),
    ([[], []], 40, None),
])
def test_training_hours(times, epochs, hours):
    assert training_hours(times, epochs) == (None if hours is None else pytest.approx(hours))


@pytest.mark.parametrize("logs, final, expected", [
    ([], False, 0),                                   # nothing logged yet
    (["0"], False, 0),                                # epoch 0 running
    (["0", "1", "2"], False, 2),                      # epochs 0 and 1 complete
    (["0", "1"], True, 30),                           # checkpoint_final: all epochs
    ([["0", "1", "2"], ["2", "3"]], False, 3),        # resumed into a second log file
    (["31"], False, 30),                              # never more than the budget
])
def test_epochs_completed(tmp_path, logs, final, expected):
    for i, epochs in enumerate(logs if logs and isinstance(logs[0], list) else [logs] if logs else []):
        (tmp_path / f"training_log_2026_11_22_0{i}_00_00.txt").write_text(
            "header\n" + "".join(_LOG.format(e=e) for e in epochs))
    if final:
        (tmp_path / "checkpoint_final.pth").write_bytes(b"x")
    assert epochs_completed(tmp_path, 30) == expected


def _row(scheme, state, left, spi, fold=0):
    return {"fold": fold, "scheme": scheme, "dataset": "D", "state": state, "epochs_done": 0, "epochs": 30,
            "iterations_left": left, "s_per_it": spi}


def test_format_progress_estimates_untimed_models_by_kind():
    rows = [_row("Individual", "done", 0, 0.2), _row("Individual", "training (epoch 3)", 1000, 0.4),
            _row("Individual", "not started", 3000, None), _row("DSL", "training (epoch 2)", 9000, 0.5),
            _row("DSL_MSC", "not started", 9000, None)]
    text = format_progress(rows, jobs=2)
    # 1000 * 0.4 + 3000 * median(0.2, 0.4) + 9000 * 0.5 + 9000 * 0.5 = 400 + 900 + 4500 + 4500 = 10300 s
    assert "about 1.4 h with --jobs 2" in text  # 10300 / 3600 / 2 = 1.43
    assert "~0.300 (estimate)" in text and "~0.500 (estimate)" in text
    assert "1 of 5 models done." in text
    assert "about 2.9 h with --jobs 1" in format_progress(rows)


def test_format_progress_estimates_from_the_same_scheme_first():
    rows = [_row("DSL", "done", 0, 0.5), _row("DSL_MJAP", "training (epoch 2)", 8000, 0.7),
            _row("DSL_MJAP", "not started", 9000, None, fold=1), _row("Shared", "not started", 9000, None, fold=1)]
    text = format_progress(rows)
    # 8000 * 0.7 + 9000 * 0.7 (DSL_MJAP of fold 0) + 9000 * median(0.5, 0.7) = 5600 + 6300 + 5400 = 17300 s
    assert "| 1 | DSL_MJAP | D | not started | 0/30 | 9000 | ~0.700 (estimate) |" in text
    assert "| 1 | Shared | D | not started | 0/30 | 9000 | ~0.600 (estimate) |" in text  # no scheme it contains
    assert "about 4.8 h with --jobs 1" in text  # 17300 / 3600 = 4.81


@pytest.mark.parametrize("scheme, expected", [
    ("DSL_MSC_MJAP", 0.7),  # contains DSL (0.5), DSL_MSC (0.55) and DSL_MJAP (0.7): the slowest
    ("DSL_MSC", 0.55),      # its own scheme, measured in another fold
    ("DSL_SSC", 0.5),       # contains DSL only
    ("Shared_MJAP", 0.4),   # contains Shared only
    ("Individual", 0.2),    # an Individual model is never estimated from multi-domain schemes
])
def test_format_progress_estimates_a_scheme_from_the_schemes_it_contains(scheme, expected):
    rows = [_row("Individual", "done", 0, 0.2), _row("Shared", "done", 0, 0.4), _row("DSL", "done", 0, 0.5),
            _row("DSL_MSC", "done", 0, 0.55), _row("DSL_MJAP", "done", 0, 0.7),
            _row(scheme, "not started", 9000, None, fold=1)]
    assert f"| 1 | {scheme} | D | not started | 0/30 | 9000 | ~{expected:.3f} (estimate) |" in format_progress(rows)


@pytest.mark.parametrize("jobs, expected", [
    # 1, 2, 0.5 h of fold 0 then 1 h of fold 1; two workers: [1, 0] -> [1, 2] -> [1.5, 2] -> [2.5, 2]
    (2, {0: 2.0, 1: 2.5}),
    (1, {0: 3.5, 1: 4.5}),
    (3, {0: 2.0, 1: 1.5}),  # [1, 2, 0.5]: fold 1 goes to the third worker, free after 0.5 h
])
def test_fold_finish_seconds(jobs, expected):
    queue = [(0, 3600.0), (0, 7200.0), (0, 1800.0), (1, 3600.0)]
    assert {f: t / 3600 for f, t in fold_finish_seconds(queue, jobs).items()} == expected


def test_format_progress_names_when_each_fold_is_trained():
    rows = [_row("Individual", "done", 0, 0.5), _row("Shared", "training (epoch 1)", 7200, 0.5),
            _row("DSL", "training (epoch 1)", 3600, 1.0), _row("DSL", "not started", 3600, 1.0, fold=1)]
    # 1 h and 1 h of fold 0 on two workers, then fold 1's 1 h: fold 0 after 1 h, fold 1 after 2 h
    assert "fold 0 1.0 h, fold 1 2.0 h from now (models in the run order, 2 at a time)" in format_progress(rows, 2)


def test_format_progress_without_any_timing_says_unknown():
    text = format_progress([_row("Individual", "not started", 3000, None), _row("DSL", "done", 0, None)])
    assert "unknown (1 model(s) to train and no epoch timed yet)" in text and "n/a" in text
    assert "Remaining" not in format_progress([_row("DSL", "done", 0, 0.3)])


def test_status_stage_needs_a_study_and_reads_progress(tmp_path, capsys):
    from nnunetv2_mtmd.apps.study import Study, StudyOptions

    src = make_sources(tmp_path, n_cases=1)
    study = Study(StudyOptions(tmp_path / "w", sources_dir=src, schemes=["Individual", "DSL"], folds=[0]))
    with pytest.raises(InputDataError, match="No study in .* yet"):
        study.run("status")
    study.run("report")  # records the configuration only
    capsys.readouterr()
    Study(StudyOptions(tmp_path / "w")).run("status")
    out = capsys.readouterr().out
    assert out.count("| not started | 0/30 |") == 4  # 3 Individual models + DSL
    assert "| 0 | DSL | Dataset950_MSKBonesMR | not started | 0/30 | 9000 |" in out  # K x I = 3 x 3000
    assert "unknown (4 model(s)" in out
    # a recorded fingerprint is shown next to its model
    state = StudyState(tmp_path / "w" / "state.json")
    state.add_fingerprint("train:fold0:DSL:Dataset950_MSKBonesMR", {"fingerprint": "a1b2c3d4e5f6", "status": "new"})
    Study(StudyOptions(tmp_path / "w")).run("status")
    out = capsys.readouterr().out
    assert "| 0 | DSL | Dataset950_MSKBonesMR | not started | 0/30 | 9000 | n/a | a1b2c3d4e5f6 |" in out
    assert "| 0 | Individual | Dataset901_Ankle | not started | 0/30 | 3000 | n/a | - |" in out


_RATIOS = "2026-12-01 10:{m:02d}:00.000000: Gradient-norm ratios on the shared parameters (median of 8 sampled " \
          "iterations): MSC/seg {msc}, MJAP/seg {mjap}\n"


def _epoch(e, msc, mjap, m=0):
    return f"2026-12-01 10:{m:02d}:00.000000: Epoch {e}\n" + _RATIOS.format(m=m, msc=msc, mjap=mjap)


def test_gradient_norm_ratios_one_per_epoch_and_their_medians(tmp_path):
    from nnunetv2_mtmd.apps.study import gradient_norm_ratios, median_ratios

    assert gradient_norm_ratios(tmp_path) == [] and median_ratios([])["epochs"] == 0
    (tmp_path / "training_log_2026_12_01_10_00_00.txt").write_text(
        "header\n" + _epoch(0, "0.1000", "nan") + _epoch(1, "0.3000", "nan") + _epoch(2, "0.9000", "nan"))
    # interrupted during epoch 2, resumed: epoch 2 logged again (its last line counts), then epoch 3
    (tmp_path / "training_log_2026_12_01_11_00_00.txt").write_text(
        _epoch(2, "0.2000", "nan", 5) + _epoch(3, "0.4000", "inf", 6) + "x: Epoch time: 5.0 s\n")
    rows = gradient_norm_ratios(tmp_path)
    assert [(r["epoch"], r["n"], r["msc"]) for r in rows] == [(0, 8, 0.1), (1, 8, 0.3), (2, 8, 0.2), (3, 8, 0.4)]
    med = median_ratios(rows)
    assert med["epochs"] == 4 and med["msc"] == pytest.approx(0.25)  # median of 0.1, 0.2, 0.3, 0.4
    assert math.isnan(med["mjap"])  # the scheme has no MJAP term (inf is not finite either)


def test_autoencoder_summary_from_the_file_else_the_log(tmp_path, caplog):
    from nnunetv2_mtmd.apps.study import AUTOENCODER_FILE, autoencoder_summary
    from nnunetv2_mtmd.io import save_json

    assert autoencoder_summary(tmp_path) is None
    (tmp_path / "training_log_2026_12_01_10_00_00.txt").write_text(
        "x: MJAP autoencoder frozen; validation reconstruction Dice 0.2561\n")
    assert autoencoder_summary(tmp_path) == {"source": "log", "overall": pytest.approx(0.2561)}
    record = {"reconstruction_dice": {"knee": {"femur": 0.9, "tibia": None}, "hip": {"femur": 0.5}},
              "iterations": 300, "seconds": 95.5, "fingerprint": "f00", "variant": "multi_domain", "cache": "c"}
    save_json(record, tmp_path / AUTOENCODER_FILE)
    got = autoencoder_summary(tmp_path)
    assert got["source"] == "file" and got["iterations"] == 300 and got["variant"] == "multi_domain"
    dice = got["reconstruction_dice"]
    assert dice["knee"]["femur"] == 0.9 and math.isnan(dice["knee"]["tibia"])  # null: not defined
    (tmp_path / AUTOENCODER_FILE).write_text('{"iterations": 3}')  # no reconstruction_dice: back to the log
    with caplog.at_level("WARNING"):
        assert autoencoder_summary(tmp_path)["source"] == "log"
    assert "is unreadable (KeyError" in caplog.text


def test_format_progress_shows_the_model_code_and_when_the_later_schemes_finish():
    rows = [{**_row("DSL", "training (epoch 1)", 3600, 1.0), "code": "a1b2c3d4e5f6"},
            {**_row("DSL", "not started", 3600, 1.0, fold=1), "code": "-"},
            {**_row("Shared", "not started", 3600, 1.0), "later": True, "code": "mixed (a, b)"},
            {**_row("Shared", "not started", 3600, 1.0, fold=1), "later": True}]
    text = format_progress(rows, 1)
    assert text.splitlines()[0].endswith("| s per iteration | model code |")
    assert "| 0 | DSL | D | training (epoch 1) | 0/30 | 3600 | 1.000 | a1b2c3d4e5f6 |" in text
    assert "| 0 | Shared | D | not started | 0/30 | 3600 | 1.000 | mixed (a, b) |" in text
    # fold 0's main model after 1 h, fold 1's after 2 h, the later schemes' (both folds) after 4 h
    assert "fold 0 1.0 h, fold 1 2.0 h, the later schemes (Shared) 4.0 h from now (models in the run order" in text
