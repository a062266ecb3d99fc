"""Adding a domain to a trained model, end to end through the real console scripts (issue 24, part 1).

A DSL model is trained on two tiny synthetic domains (ankle, knee) with ``nnUNetv2_train``; the third
(shoulder) is added with ``nnUNetv2_mtmd_add_domain``, preprocessed with stock ``nnUNetv2_preprocess``
and trained with ``nnUNetTrainerMTMD_AddDomain_debug``. Stock ``nnUNetv2_predict`` then predicts the
old domains' test cases with both models: the segmentations are bitwise identical, the new model's
probabilities of the old labels are those of the old model and its new-label probabilities are 0;
the new domain's case gets only its own label.
The data and the way the console scripts run are tests/test_end_to_end.py's (tests/datagen.py, its
``_run`` and environment), with two source domains for the model and one to add."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from tests.datagen import make_raw_dataset
from tests.test_end_to_end import SOURCES, _run

pytestmark = pytest.mark.slow

OLD, NEW = "Dataset950_Two", "Dataset960_Two_shoulder"
SOURCE_TRAINER, ADD_TRAINER = "nnUNetTrainerMTMD_DSL_debug", "nnUNetTrainerMTMD_AddDomain_debug"


def _model_folder(results, dataset: str, trainer: str):
    return results / dataset / f"{trainer}__nnUNetPlans__2d"


@pytest.fixture(scope="module")
def added(tmp_path_factory):
    """Train on ankle + knee, add shoulder, train it; returns folders, env and the prediction inputs."""
    root = tmp_path_factory.mktemp("add_domain")
    dirs = {k: root / f"nnUNet_{k}" for k in ("raw", "preprocessed", "results")}
    for p in dirs.values():
        p.mkdir()
    env = dict(os.environ, **{f"nnUNet_{k}": str(p) for k, p in dirs.items()},
               nnUNet_def_n_proc="2", nnUNet_compile="f", OMP_NUM_THREADS="1")
    for k in ("nnUNet_extTrainer", "nnUNet_n_proc_DA"):
        env.pop(k, None)
    train_env = dict(env, nnUNet_n_proc_DA="0")
    for i, (did, (name, labels)) in enumerate(SOURCES.items()):
        make_raw_dataset(dirs["raw"], did, name, labels, n_cases=3, shape=(4, 32, 32), n_test=1, seed=i)
    _run(["nnUNetv2_mtmd_merge", "-d", "901", "902", "--domains", "ankle", "knee", "-o", "950", "-n", "Two"], env)
    _run(["nnUNetv2_plan_and_preprocess", "-d", "950", "-pl", "nnUNetPlannerMTMD", "-c", "2d", "-np", "2"], env)
    _run(["nnUNetv2_train", "950", "2d", "all", "-tr", SOURCE_TRAINER, "-device", "cpu"], train_env)
    out = _run(["nnUNetv2_mtmd_add_domain", "-d", "950", "-tr", SOURCE_TRAINER, "-f", "all", "-i", "903",
                "--domain", "shoulder", "-o", "960", "--no_progress"], env)
    _run(["nnUNetv2_preprocess", "-d", "960", "-plans_name", "nnUNetPlans", "-c", "2d", "-np", "2"], env)
    _run(["nnUNetv2_train", "960", "2d", "all", "-tr", ADD_TRAINER, "-device", "cpu"], train_env)
    old_inputs = root / "old_inputs"
    for did, dom in ((901, "ankle"), (902, "knee")):
        src = next(dirs["raw"].glob(f"Dataset{did}_*")) / "imagesTs"
        _run(["nnUNetv2_mtmd_prepare_input", "-i", str(src), "-o", str(root / f"in_{dom}"), "-d", "950",
              "--domain", dom, "--prefix"], env)
        for f in (root / f"in_{dom}").iterdir():
            old_inputs.mkdir(exist_ok=True)
            f.rename(old_inputs / f.name)
    return {"root": root, "env": env, "old_inputs": old_inputs, "cli_output": out.stdout, **dirs}


def _predict(added, dataset: str, trainer: str, inputs, out) -> None:
    _run(["nnUNetv2_predict", "-i", str(inputs), "-o", str(out), "-d", dataset, "-c", "2d", "-tr", trainer, "-f",
          "all", "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1", "--save_probabilities"], added["env"])


def test_written_dataset_and_plans(added):
    raw = added["raw"] / NEW
    dj = json.loads((raw / "dataset.json").read_text())
    assert dj["labels"] == {"background": 0, "ankle_calcaneus": 1, "ankle_talus": 2, "ankle_tibia": 3,
                            "knee_femur": 4, "knee_patella": 5, "shoulder_humerus": 6}
    assert [d["name"] for d in dj["mtmd"]["domains"]] == ["ankle", "knee", "shoulder"]
    assert [d["num_cases"] for d in dj["mtmd"]["domains"]] == [0, 0, 3] and dj["numTraining"] == 3
    assert sorted(p.name for p in (raw / "imagesTr").iterdir())[:2] == ["shoulder_sho000_0000.nii.gz",
                                                                         "shoulder_sho000_0001.nii.gz"]
    code = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "imagesTr" / "shoulder_sho000_0001.nii.gz")))
    assert np.all(code == 3)
    old_plans = json.loads((_model_folder(added["results"], OLD, SOURCE_TRAINER) / "plans.json").read_text())
    # the results folder of the new model records the source checkpoint (nnU-Net copies the plans there)
    plans = json.loads((_model_folder(added["results"], NEW, ADD_TRAINER) / "plans.json").read_text())
    rec = plans["mtmd_add_domain"]
    assert rec["source_checkpoint"] == str(
        (_model_folder(added["results"], OLD, SOURCE_TRAINER) / "fold_all" / "checkpoint_final.pth").resolve())
    assert rec["source_domains"] == ["ankle", "knee"] and rec["new_domain"] == "shoulder"
    new_cfg, old_cfg = plans["configurations"]["2d"], old_plans["configurations"]["2d"]
    assert new_cfg["architecture"]["arch_kwargs"]["domain_label_ids"] == [[1, 2, 3], [4, 5], [6]]
    assert new_cfg["architecture"]["arch_kwargs"]["norm_op_kwargs"]["num_domains"] == 3
    for key in ("patch_size", "spacing", "batch_size", "normalization_schemes"):
        assert new_cfg[key] == old_cfg[key]
    assert "Next: nnUNetv2_preprocess -d 960" in added["cli_output"]


def test_training_changed_only_the_new_domain(added):
    from nnunetv2_mtmd.io import load_checkpoint_file

    old = load_checkpoint_file(_model_folder(added["results"], OLD, SOURCE_TRAINER) / "fold_all" /
                               "checkpoint_final.pth")["network_weights"]
    new = load_checkpoint_file(_model_folder(added["results"], NEW, ADD_TRAINER) / "fold_all" /
                               "checkpoint_final.pth")["network_weights"]
    log = next((_model_folder(added["results"], NEW, ADD_TRAINER) / "fold_all").glob("training_log_*.txt"))
    assert "AdaBN: running statistics" in log.read_text()
    changed_rows = 0
    for key, w in new.items():
        if key not in old:  # the new domain's heads
            assert ".heads.2." in key
            continue
        o = old[key]
        if o.shape == w.shape:
            assert torch.equal(o, w), key  # shared convolutions and old heads: bitwise unchanged
        else:
            assert torch.equal(w[:2], o), key  # old DSBN rows (affine and running statistics)
            if key.endswith(("running_mean", "weight")):
                changed_rows += not torch.equal(w[2], o.mean(0) if key.endswith("weight") else torch.zeros_like(o[0]))
    assert changed_rows > 0  # the new rows did move (AdaBN, three SGD steps)


def test_old_domains_predicted_bitwise_as_before(added):
    """Stock nnUNetv2_predict: the old model on the old domains' test cases, the new model on the same
    cases plus the new domain's (one run each)."""
    root = added["root"]
    _predict(added, "950", SOURCE_TRAINER, added["old_inputs"], root / "pred_old")
    both = root / "new_inputs"
    _run(["nnUNetv2_mtmd_prepare_input", "-i", str(next(added["raw"].glob("Dataset903_*")) / "imagesTs"), "-o",
          str(both), "-d", "960", "--domain", "shoulder", "--prefix"], added["env"])
    for f in added["old_inputs"].iterdir():
        (both / f.name).symlink_to(f)
    _predict(added, "960", ADD_TRAINER, both, root / "pred_new")
    cases = sorted(p.name for p in (root / "pred_old").glob("*.nii.gz"))
    assert cases == ["ankle_ank000.nii.gz", "knee_kne000.nii.gz"]
    for c in cases:
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "pred_old" / c)))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "pred_new" / c)))
        assert a.dtype == b.dtype and np.array_equal(a, b), c
        pa = np.load(root / "pred_old" / c.replace(".nii.gz", ".npz"))["probabilities"]
        pb = np.load(root / "pred_new" / c.replace(".nii.gz", ".npz"))["probabilities"]
        assert pa.shape[0] == 6 and pb.shape[0] == 7
        assert np.array_equal(pb[:6], pa) and np.all(pb[6] == 0), c
    # the new domain's case: only background and the new domain's label (its head fills only those)
    shoulder = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "pred_new" / "shoulder_sho000.nii.gz")))
    assert set(np.unique(shoulder).tolist()) <= {0, 6}
