"""The demo's own logic (nnunetv2_mtmd/apps/demo.py): the plans edit, input checks, the step runner,
the Dice table and the label colours. The whole demo is the README's main job (``bash .ci/demo``),
not a test: it trains for about 10 minutes; its measured time and Dice are in docs/demo.md."""

from __future__ import annotations

import json

import pytest

from nnunetv2_mtmd.apps.demo import Runner, _label_cmap, dice_table, format_dice_table, run_demo, set_cpu_plans
from nnunetv2_mtmd.apps.workspace import CommandError
from nnunetv2_mtmd.errors import InputDataError, OutputExistsError


def _plans(tmp_path, features):
    p = tmp_path / "nnUNetPlans.json"
    p.write_text(json.dumps({"configurations": {"2d": {"batch_size": 21, "architecture": {
        "arch_kwargs": {"features_per_stage": features}}}}}))
    return p


@pytest.mark.parametrize(
    "planned, base, expected",
    [
        ([32, 64, 128, 256, 512], 16, [16, 32, 64, 128, 256]),
        ([32, 64, 128, 256, 512, 512], 16, [16, 32, 64, 128, 256, 512]),  # capped at the planned maximum
        ([32, 64, 128, 256, 512, 512], 32, [32, 64, 128, 256, 512, 512]),  # nnU-Net's own width again
        ([32, 64, 128], None, [32, 64, 128]),  # None: width untouched
    ],
)
def test_set_cpu_plans_batch_size_and_width(tmp_path, planned, base, expected):
    p = _plans(tmp_path, planned)
    bs, before, after = set_cpu_plans(p, 6, base)
    assert (bs, before, after) == (21, planned, expected)
    plans = json.loads(p.read_text())
    conf = plans["configurations"]["2d"]
    assert conf["batch_size"] == 6 and conf["architecture"]["arch_kwargs"]["features_per_stage"] == expected
    assert "mtmd_training_seed" not in plans  # no seed given: none recorded


def test_set_cpu_plans_records_the_training_seed(tmp_path):
    p = _plans(tmp_path, [32, 64])
    set_cpu_plans(p, 6, None, seed=7)
    assert json.loads(p.read_text())["mtmd_training_seed"] == 7


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 4}, "--batch_size must be a positive multiple of the 3 domains, found 4"),
    ({"batch_size": 0}, "--batch_size must be a positive multiple"),
    ({"base_features": 0}, "--base_features must be >= 1, found 0"),
])
def test_bad_arguments_fail_before_anything_is_written(tmp_path, kwargs, match):
    out = tmp_path / "demo"
    with pytest.raises(InputDataError, match=match):
        run_demo(out, **kwargs)
    assert not out.exists()


def test_existing_output_is_refused_without_overwrite(tmp_path):
    (tmp_path / "demo").mkdir()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        run_demo(tmp_path / "demo")


def test_dice_table_from_metrics_csv(tmp_path):
    csv = tmp_path / "metrics.csv"
    csv.write_text("case,domain,structure,dice\n"
                   "knee_010,knee,femur,0.9\nknee_011,knee,femur,0.7\nknee_010,knee,patella,\n"
                   "knee_011,knee,patella,nan\nankle_010,ankle,talus,0.5\n")
    t = dice_table(csv)
    assert t == {"knee": {"femur": [0.9, 0.7]}, "ankle": {"talus": [0.5]}}  # undefined values left out
    text = format_dice_table(t)
    assert "| knee | femur | 0.800 ± 0.100 |" in text
    assert "| ankle | **mean** | **0.500** |" in text
    assert "| all | **mean of domains** | **0.650** |" in text  # (0.8 + 0.5) / 2


def test_label_colours_are_distinct_and_opaque():
    cmap = _label_cmap(9)
    assert cmap.N == 10
    colours = [tuple(cmap(i)) for i in range(1, 10)]
    assert len(set(colours)) == 9
    grey = [c for c in colours if abs(c[0] - c[1]) < 0.05 and abs(c[1] - c[2]) < 0.05]
    assert not grey  # grey labels vanish on an MR image (tab10's label 7 did)


def test_runner_logs_commands_and_names_the_log_on_failure(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("nnUNet_n_proc_DA", "7")  # the user's value must not reach planning
    log = tmp_path / "demo_log.txt"
    run = Runner(tmp_path, log, n_proc_da=0)
    assert all((tmp_path / f"nnUNet_{k}").is_dir() for k in ("raw", "preprocessed", "results"))
    show = "import os; print('DA', os.environ.get('nnUNet_n_proc_DA'), os.environ['nnUNet_raw'])"
    run("plan", ["python", "-c", show])
    run("train", ["python", "-c", show], train=True)
    text = log.read_text()
    assert f"DA None {tmp_path / 'nnUNet_raw'}" in text and "DA 0 " in text
    assert "$ python -c" in text
    out = capsys.readouterr().out
    assert "\n[demo] plan: python -c " in out and "[demo]   done in 0 s" in out
    assert set(run.seconds) == {"plan", "train"}
    with pytest.raises(CommandError, match=r"demo step 'broken' failed \(exit code 3\)") as e:
        run("broken", ["python", "-c", "print('the cause'); raise SystemExit(3)"])
    assert str(log) in str(e.value) and "the cause" in str(e.value)
