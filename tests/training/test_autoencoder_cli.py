"""``nnUNetv2_mtmd_autoencoder`` (nnunetv2_mtmd/cli/autoencoder.py) on a tiny preprocessed synthetic dataset:
trains, prints the per-structure Dice, writes --json and the PNGs, reuses the cache on a second run;
the plans' study budget decides the augmentation and the default iterations; clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from nnunetv2_mtmd.cli.autoencoder import main as ae_main
from nnunetv2_mtmd.training.autoencoder_job import job_from_plans
from tests.evaluation.test_evaluate import merged_dataset_json
from tests.training.label_autoencoder_helpers import SIZE, spec
from tests.training.test_autoencoder_cache import TRAIN, VAL, write_preprocessed

DATASET = "Dataset950_Synth"


def _plans(budget: dict | None = None) -> dict:
    plans = {"dataset_name": DATASET, "plans_name": "nnUNetPlans",
             "configurations": {"2d": {"data_identifier": "nnUNetPlans_2d", "patch_size": [SIZE, SIZE],
                                       "spacing": [1.0, 1.0], "batch_size": 4,
                                       "architecture": {"network_class_name": "x.Y", "arch_kwargs": {},
                                                        "_kw_requires_import": []}}}}
    if budget is not None:
        plans["mtmd_study_budget"] = budget
    return plans


@pytest.fixture
def dataset(nnunet_dirs):
    torch.set_num_threads(1)
    pre = nnunet_dirs["preprocessed"] / DATASET
    write_preprocessed(pre / "nnUNetPlans_2d", TRAIN + VAL)
    (pre / "dataset.json").write_text(json.dumps(merged_dataset_json(spec(), len(TRAIN + VAL))))
    (pre / "nnUNetPlans.json").write_text(json.dumps(_plans()))
    (pre / "splits_final.json").write_text(json.dumps([{"train": TRAIN, "val": VAL}, {"train": VAL, "val": TRAIN}]))
    return nnunet_dirs


def test_trains_prints_writes_json_and_pngs_then_reuses(dataset, tmp_path, capsys):
    args = ["-d", "950", "-c", "2d", "-f", "0", "--iterations", "4", "--batch-size", "4", "--features", "4",
            "-device", "cpu"]
    out_json, pngs = tmp_path / "ae.json", tmp_path / "png"
    assert ae_main([*args, "--json", str(out_json), "-o", str(pngs)]) == 0
    printed = capsys.readouterr().out
    for structure in ("disk", "box", "top", "middle", "bottom"):
        assert structure in printed
    assert "(trained)" in printed and "4 iterations" in printed
    rec = json.loads(out_json.read_text())
    assert set(rec) == {"reconstruction_dice", "iterations", "seconds"} and rec["iterations"] == 4
    assert set(rec["reconstruction_dice"]) == {"blob", "bars"} and set(rec["reconstruction_dice"]["blob"]) == {
        "disk", "box"}
    assert sorted(p.name for p in pngs.iterdir()) == ["reconstruction_bars.png", "reconstruction_blob.png"]
    cached = list((dataset["results"] / DATASET / "mtmd_label_autoencoders" / "nnUNetPlans__2d" / "fold_0").iterdir())
    assert len(cached) == 1 and cached[0].name.startswith("multi_domain-")
    assert ae_main([*args, "--json", str(out_json)]) == 0
    assert "(reused)" in capsys.readouterr().out
    assert json.loads(out_json.read_text())["reconstruction_dice"] == rec["reconstruction_dice"]
    assert ae_main([*args, "--variant", "shared"]) == 0
    assert "(trained)" in capsys.readouterr().out  # the shared variant is its own autoencoder


def test_the_plans_budget_decides_augmentation_and_iterations(dataset):
    pre = dataset["preprocessed"] / DATASET
    plain = job_from_plans("950", "2d", 0)
    assert plain.augmentation.mirror_axes == (0, 1) and plain.augmentation.rotation[1] == pytest.approx(3.14159, 1e-4)
    (pre / "nnUNetPlans.json").write_text(json.dumps(_plans({"ae_iterations": 77, "fixed_orientation": True})))
    study = job_from_plans("950", "2d", 0)
    assert study.settings.iterations == 77 and study.augmentation.mirror_axes == ()
    assert study.augmentation.rotation == pytest.approx((-0.5235988, 0.5235988))
    assert job_from_plans("950", "2d", 0, augmentation="nnunet").augmentation == plain.augmentation
    assert job_from_plans("950", "2d", "all").train_cases == sorted(TRAIN + VAL)


@pytest.mark.parametrize("args, message", [
    (["-d", "950", "-c", "2d", "-f", "0", "-p", "nnUNetPlans_study"], "No plans 'nnUNetPlans_study'"),
    (["-d", "950", "-c", "3d_fullres", "-f", "0"], "Configuration '3d_fullres' is not in"),
    (["-d", "950", "-c", "2d", "-f", "7"], "Fold 7 does not exist"),
    (["-d", "951", "-c", "2d", "-f", "0"], "No dataset with id 951"),
    (["-d", "950", "-c", "2d", "-f", "0", "--iterations", "0"], "--iterations must be >= 1"),
])
def test_clear_errors(dataset, capsys, args, message):
    assert ae_main([*args, "-device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err


def test_missing_split_names_the_fix(dataset, capsys):
    (dataset["preprocessed"] / DATASET / "splits_final.json").unlink()
    assert ae_main(["-d", "950", "-c", "2d", "-f", "0", "-device", "cpu"]) == 2
    assert "nnUNetv2_mtmd_splits" in capsys.readouterr().err


def test_help_states_the_defaults():
    out = subprocess.run([sys.executable, "-m", "nnunetv2_mtmd.cli.autoencoder", "-h"], capture_output=True,
                         text=True, check=True).stdout
    assert "(default: nnUNetPlans)" in out and "(default: multi_domain)" in out and "mtmd_label_autoencoders" in out
