"""Live console progress (nnunetv2_mtmd/apps/progress.py) and the streaming runner
(apps/workspace.py ``run_logged(on_line=...)``). The log lines are copied from a real
``nnUNetv2_train ... -tr nnUNetTrainerMTMD_study`` log of the study data."""

from __future__ import annotations

import math
import sys

import pytest

from nnunetv2_mtmd.apps.progress import (
    Heartbeat,
    PredictionProgress,
    TrainingProgress,
    parse_floats,
    strip_timestamp,
)
from nnunetv2_mtmd.apps.workspace import run_logged

EPOCH_0 = """2026-12-02 11:43:05.324783: Epoch 0
2026-12-02 11:43:05.324856: Current learning rate: 0.01
2026-12-02 11:44:01.407925: seg_loss 0.8179  msc 2.0259 (x0.5)  mjap 239.7720 (x0.1)
2026-12-02 11:44:01.408440: Gradient-norm ratios on the shared parameters (median of 6 sampled iterations): MSC/seg 0.5645, MJAP/seg 32.6780
2026-12-02 11:44:01.683043: train_loss 25.8081
2026-12-02 11:44:01.683232: val_loss 0.4187
2026-12-02 11:44:01.683329: Pseudo dice [np.float32(0.0), np.float32(0.0), np.float32(0.0), np.float32(0.0), np.float32(0.0), np.float32(0.4227), np.float32(0.0), np.float32(0.2254), np.float32(0.0), np.float32(nan)]
2026-12-02 11:44:01.683399: Epoch time: 56.36 s
2026-12-02 11:44:01.818199: Yayy! New best EMA pseudo Dice: 0.06480000168085098
"""  # noqa: E501

DOMAINS = {"lumbar": [1, 2, 3, 4, 5], "sij": [6], "pelvis": [7, 8, 9, 10]}


def _feed(parser, text):
    return [m for m in (parser.feed(line) for line in text.splitlines(True)) if m is not None]


@pytest.mark.parametrize("raw, expected", [
    ("2026-12-02 11:44:01.683399: Epoch time: 56.36 s\n", "Epoch time: 56.36 s"),
    ("  plain line  \n", "plain line"),
    ("2026-12-02 11:44:01: not nnU-Net's stamp\n", "2026-12-02 11:44:01: not nnU-Net's stamp"),
])
def test_strip_timestamp(raw, expected):
    assert strip_timestamp(raw) == expected


def test_parse_floats_reads_numpy_reprs_and_nan():
    vals = parse_floats("np.float32(0.5), np.float32(nan), 1e-3, -2")
    assert vals[0] == 0.5 and math.isnan(vals[1]) and vals[2:] == [0.001, -2.0]


def test_one_line_per_epoch_with_loss_terms_domain_dice_and_time_left():
    p = TrainingProgress(total_epochs=30, domain_labels=DOMAINS)
    lines = _feed(p, EPOCH_0)
    # lumbar (0+0+0+0+0)/5 = 0.00; sij 0.4227; pelvis (0 + 0.2254 + 0) / 3 (label 10 is nan: left out) = 0.0751
    # time left: 29 epochs x 56.36 s = 1634 s = 27.2 min
    assert lines == ["epoch 1/30 | loss 25.808 (seg 0.818, msc 2.03, mjap 240) | pseudo-Dice lumbar 0.00, sij 0.42, "
                     "pelvis 0.08 | 56 s/epoch, about 27.2 min left"]


def test_time_left_uses_the_last_five_epochs_and_no_domains_means_label_mean():
    p = TrainingProgress(total_epochs=10)
    text = ""
    for e, t in enumerate([100, 10, 10, 10, 10, 10]):
        text += f"Epoch {e}\ntrain_loss -0.5\nPseudo dice [0.2, 0.4]\nEpoch time: {t} s\n"
    lines = _feed(p, text)
    assert len(lines) == 6
    # no seg_loss line (a stock trainer): the loss alone; mean over labels 0.3; 4 epochs left x 10 s
    assert lines[-1] == "epoch 6/10 | loss -0.500 | pseudo-Dice 0.30 | 10 s/epoch, about 40 s left"
    assert lines[0].endswith("100 s/epoch, about 15.0 min left")  # 9 x 100 s


def test_unknown_total_and_missing_regularizers():
    p = TrainingProgress()
    lines = _feed(p, "Epoch 3\ntrain_loss 0.1\nseg_loss 0.1000  msc nan (x0.0)  mjap nan (x0.0)\nEpoch time: 5 s\n")
    assert lines == ["epoch 4 | loss 0.100 (seg 0.100) | 5 s/epoch"]


def test_autoencoder_phase_lines():
    p = TrainingProgress(total_epochs=40)
    line = ("2026-12-02 09:40:00.1: MJAP autoencoder it 200/2500: CE 0.1414 soft Dice 0.3832 MSC 2.0569 validation "
            "reconstruction Dice 0.4814\n")
    assert p.feed(line) == "MJAP autoencoder 200/2500 iterations, validation reconstruction Dice 0.481"


def test_prediction_progress_counts_finished_cases():
    p = PredictionProgress(3)
    text = ("\nPredicting knee_010:\nperform_everything_on_device: False\ndone with knee_010\n\n"
            "Predicting x:\ndone with x\n")
    assert _feed(p, text) == ["predicted 1/3 cases", "predicted 2/3 cases"]


def test_heartbeat_at_most_every_period():
    now = [0.0]
    h = Heartbeat(every=30, clock=lambda: now[0])
    out = []
    for t, line in [(10, "a"), (31, "b"), (40, "c"), (61, ""), (62, "2026-12-02 11:44:01.1: d")]:
        now[0] = t
        out.append(h.feed(line))
    assert out == [None, "31 s elapsed, last output: b", None, None, "62 s elapsed, last output: d"]


def test_run_logged_streams_lines_while_the_command_runs(tmp_path):
    """The child prints a line, then waits for a flag file that only the callback writes on seeing that
    line: it can finish with 'saw the flag' only if the line arrived while it was still running."""
    flag = tmp_path / "flag"
    child = ("import os, sys, time\nprint('first line')\nfor _ in range(200):\n    if os.path.exists(sys.argv[1]):\n"
             "        print('saw the flag'); break\n    time.sleep(0.05)\nelse:\n    print('no flag')\n")
    script = tmp_path / "child.py"
    script.write_text(child)
    seen = []

    def on_line(line):
        seen.append(line.strip())
        if line.strip() == "first line":
            flag.write_text("x")

    log = tmp_path / "log.txt"
    run_logged([sys.executable, str(script), str(flag)], log, env={}, on_line=on_line)
    assert seen == ["first line", "saw the flag"]
    assert log.read_text().endswith("first line\nsaw the flag\n")  # the log still gets everything
