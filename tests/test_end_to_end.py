"""End to end through the real console scripts on tiny synthetic data (issues 3 and 4):
merge -> nnUNetv2_plan_and_preprocess -pl nnUNetPlannerMTMD -> nnUNetv2_train (every scheme, debug
schedule) -> nnUNetv2_mtmd_prepare_input -> stock nnUNetv2_predict -> every predicted label belongs to
its case's domain; plus the domain-balanced loader on the real preprocessed data."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from collections import Counter

import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import venv_bin
from tests.datagen import make_raw_dataset

pytestmark = pytest.mark.slow

SOURCES = {901: ("Ankle", ["calcaneus", "talus", "tibia"]), 902: ("Knee", ["femur", "patella"]),
           903: ("Shoulder", ["humerus"])}
DOMAINS = ["ankle", "knee", "shoulder"]
DATASET = "Dataset950_E2E"


def _run(args, env, timeout=900):
    proc = subprocess.run([venv_bin(args[0]), *args[1:]], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Merged, planned and preprocessed tiny dataset; returns folders and env."""
    root = tmp_path_factory.mktemp("e2e")
    dirs = {k: root / f"nnUNet_{k}" for k in ("raw", "preprocessed", "results")}
    for p in dirs.values():
        p.mkdir()
    env = dict(os.environ, **{f"nnUNet_{k}": str(p) for k, p in dirs.items()},
               nnUNet_def_n_proc="2", nnUNet_compile="f", OMP_NUM_THREADS="1")
    for k in ("nnUNet_extTrainer", "nnUNet_n_proc_DA"):
        env.pop(k, None)
    for i, (did, (name, labels)) in enumerate(SOURCES.items()):
        make_raw_dataset(dirs["raw"], did, name, labels, n_cases=3, shape=(4, 32, 32), n_test=1, seed=i,
                         spacing=(1.0, 1.0, 2.0))
    _run(["nnUNetv2_mtmd_merge", "-d", "901", "902", "903", "--domains", *DOMAINS, "-o", "950", "-n", "E2E"], env)
    _run(["nnUNetv2_plan_and_preprocess", "-d", "950", "-pl", "nnUNetPlannerMTMD", "-c", "2d", "3d_fullres",
          "-np", "2"], env)
    # New cases of each domain, as a user would get them (no code channel), made prediction-ready.
    inputs = root / "predict_input"
    for did, dom in zip(SOURCES, DOMAINS):
        src = next(dirs["raw"].glob(f"Dataset{did}_*")) / "imagesTs"
        _run(["nnUNetv2_mtmd_prepare_input", "-i", str(src), "-o", str(root / f"in_{dom}"), "-d", "950",
              "--domain", dom, "--prefix"], env)
        for f in (root / f"in_{dom}").iterdir():
            inputs.mkdir(exist_ok=True)
            f.rename(inputs / f.name)
    train_env = dict(env, nnUNet_n_proc_DA="0")
    return {"root": root, "env": env, "train_env": train_env, "inputs": inputs, **dirs}


def test_plans_are_multi_domain(pipeline):
    plans = json.loads((pipeline["preprocessed"] / DATASET / "nnUNetPlans.json").read_text())
    c = plans["configurations"]["2d"]
    assert c["architecture"]["network_class_name"].endswith("MultiDomainPlainConvUNet")
    assert c["architecture"]["arch_kwargs"]["domain_label_ids"] == [[1, 2, 3], [4, 5], [6]]
    assert c["batch_size"] % 3 == 0 and c["batch_size"] >= 6
    assert c["normalization_schemes"][-1] == "NoNormalization"


def test_every_dotted_path_of_the_written_plans_resolves(pipeline):
    """nnU-Net rebuilds the network from plans.json with pydoc.locate: every dotted path the real
    planner wrote resolves (and the plugin's are ones older results folders hold too)."""
    import pydoc

    from tests.planning.test_planners import HISTORICAL_PLANS_PATHS, _dotted_strings

    plans = json.loads((pipeline["preprocessed"] / DATASET / "nnUNetPlans.json").read_text())
    paths = _dotted_strings(plans["configurations"])
    assert len(paths) >= 4
    assert all(pydoc.locate(p) is not None for p in paths), paths
    assert {p for p in paths if p.startswith("nnunetv2_mtmd.")} <= set(HISTORICAL_PLANS_PATHS)


def test_domain_balanced_batches_on_real_preprocessed_data(pipeline, monkeypatch):
    """Batches from nnU-Net's own pipeline (augmentation included): B/K per domain, code restored."""
    import torch

    for k, v in pipeline["train_env"].items():
        if k.startswith("nnUNet_"):
            monkeypatch.setenv(k, v)
    # nnunetv2.paths reads the environment lazily, so monkeypatched variables take effect.
    from nnunetv2_mtmd.training.trainers import nnUNetTrainerMTMD_DSL

    pre = pipeline["preprocessed"] / DATASET
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False
    dj = json.loads((pre / "dataset.json").read_text())
    tr = nnUNetTrainerMTMD_DSL(plans, "2d", 0, dj, torch.device("cpu"))
    tr.initialize()
    dl_tr, _ = tr.get_dataloaders()
    counts = Counter()
    for _ in range(10):
        b = next(dl_tr)
        per = Counter(b["domain"].tolist())
        assert per == {0: tr.batch_size // 3, 1: tr.batch_size // 3, 2: tr.batch_size // 3}
        for i, key in enumerate(b["keys"]):
            d = DOMAINS.index(key.split("_")[0])
            assert d == int(b["domain"][i])
            assert torch.all(b["data"][i, -1] == d + 1)
        counts.update(per)
    split = json.loads((pre / "splits_final.json").read_text())  # written by the trainer: domain-stratified
    assert len(split) == 5
    for fold in split:
        assert not set(fold["train"]) & set(fold["val"])


SCHEMES = ["nnUNetTrainerMTMD", "nnUNetTrainerMTMD_DSL", "nnUNetTrainerMTMD_DSL_SSC", "nnUNetTrainerMTMD_DSL_MSC",
           "nnUNetTrainerMTMD_DSL_MJAP", "nnUNetTrainerMTMD_Shared", "nnUNetTrainerMTMD_Shared_MJAP"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_scheme_trains_and_stock_predict_respects_domains(pipeline, scheme):
    trainer = f"{scheme}_debug"
    _run(["nnUNetv2_train", "950", "2d", "0", "-tr", trainer, "-device", "cpu"], pipeline["train_env"])
    fold = pipeline["results"] / DATASET / f"{trainer}__nnUNetPlans__2d" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert "seg_loss" in log or scheme == "nnUNetTrainerMTMD_DSL"
    if "MJAP" in scheme or scheme == "nnUNetTrainerMTMD":
        assert (fold / "label_autoencoder.pth").is_file()
        assert "validation reconstruction Dice" in log
    out = pipeline["root"] / f"pred_{scheme}"
    _run(["nnUNetv2_predict", "-i", str(pipeline["inputs"]), "-o", str(out), "-d", "950", "-c", "2d", "-tr", trainer,
          "-f", "0", "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"], pipeline["env"])
    allowed = {"ankle": {0, 1, 2, 3}, "knee": {0, 4, 5}, "shoulder": {0, 6}}
    if "Shared" in scheme:  # one head over all unified labels: any label may appear (the paper's scheme)
        allowed = dict.fromkeys(allowed, set(range(7)))
    preds = sorted(out.glob("*.nii.gz"))
    assert len(preds) == 3
    for p in preds:
        labels = set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(p)))).tolist())
        assert labels <= allowed[p.name.split("_")[0]], (p.name, labels)


def test_3d_fullres_full_method_trains_and_stock_predict_respects_domains(pipeline):
    """3d_fullres with the full method (3D DSBN, MSC on 3D stages, MJAP with a 3D label autoencoder):
    stock nnUNetv2_train and nnUNetv2_predict -c 3d_fullres; the plan's batch holds 2 per domain."""
    plans = json.loads((pipeline["preprocessed"] / DATASET / "nnUNetPlans.json").read_text())
    conf = plans["configurations"]["3d_fullres"]
    assert conf["batch_size"] % 3 == 0 and conf["batch_size"] >= 6 and len(conf["patch_size"]) == 3
    assert conf["architecture"]["arch_kwargs"]["norm_op"].endswith("DomainSpecificBatchNorm3d")
    trainer = "nnUNetTrainerMTMD_debug"
    _run(["nnUNetv2_train", "950", "3d_fullres", "0", "-tr", trainer, "-device", "cpu"], pipeline["train_env"])
    fold = pipeline["results"] / DATASET / f"{trainer}__nnUNetPlans__3d_fullres" / "fold_0"
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert (fold / "label_autoencoder.pth").is_file() and "mjap" in log and "msc" in log
    assert (fold / "validation" / "summary.json").is_file()
    out = pipeline["root"] / "pred_3d"
    _run(["nnUNetv2_predict", "-i", str(pipeline["inputs"]), "-o", str(out), "-d", "950", "-c", "3d_fullres", "-tr",
          trainer, "-f", "0", "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"], pipeline["env"])
    allowed = {"ankle": {0, 1, 2, 3}, "knee": {0, 4, 5}, "shoulder": {0, 6}}
    preds = sorted(out.glob("*.nii.gz"))
    assert len(preds) == 3
    for p in preds:
        labels = set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(p)))).tolist())
        assert labels <= allowed[p.name.split("_")[0]], (p.name, labels)


def test_export_labels_round_trip_on_predictions(pipeline):
    out = pipeline["root"] / "pred_nnUNetTrainerMTMD"
    if not out.is_dir():
        pytest.skip("needs the nnUNetTrainerMTMD prediction of the test above")
    exp = pipeline["root"] / "exported"
    _run(["nnUNetv2_mtmd_export_labels", "-i", str(out), "-o", str(exp), "-d", "950"], pipeline["env"])
    for dom, n_labels in zip(DOMAINS, (3, 2, 1)):
        files = list((exp / dom).glob("*.nii.gz"))
        assert len(files) == 1
        vals = set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(files[0])))).tolist())
        assert vals <= set(range(n_labels + 1))


def test_plausibility_of_predictions_with_the_models_autoencoder(pipeline):
    """nnUNetv2_mtmd_plausibility with the full method's own autoencoder (its fold folder's
    label_autoencoder.pth, rebuilt from the plans): one row per case and structure of its domain, scores in
    [0, 1] (or NaN when absent from prediction and reconstruction); a model without MJAP is a clear error."""
    pred = pipeline["root"] / "pred_nnUNetTrainerMTMD"
    if not pred.is_dir():
        pytest.skip("needs the nnUNetTrainerMTMD prediction of the scheme test")
    out = pipeline["root"] / "plausibility"
    _run(["nnUNetv2_mtmd_plausibility", "-i", str(pred), "-o", str(out), "-d", "950", "-c", "2d", "-f", "0",
          "-tr", "nnUNetTrainerMTMD_debug", "-device", "cpu"], pipeline["env"])
    with open(out / "plausibility.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    own = {"ankle": ["calcaneus", "talus", "tibia"], "knee": ["femur", "patella"], "shoulder": ["humerus"]}
    cases = sorted(p.name[: -len(".nii.gz")] for p in pred.glob("*.nii.gz"))
    assert [(r["case"], r["structure"]) for r in rows] == [(c, s) for c in cases for s in own[c.split("_")[0]]]
    for r in rows:
        v = float(r["plausibility"])
        assert np.isnan(v) or 0.0 <= v <= 1.0, r
    assert json.loads((out / "plausibility.json").read_text())["cases"] == 3
    proc = subprocess.run([venv_bin("nnUNetv2_mtmd_plausibility"), "-i", str(pred), "-o", str(out) + "_dsl", "-d",
                           "950", "-f", "0", "-tr", "nnUNetTrainerMTMD_DSL_debug"], env=pipeline["env"],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0 and "No label autoencoder" in proc.stderr and "trained with MJAP" in proc.stderr


def test_continue_training_resumes_from_checkpoint(pipeline):
    """`--c` after a finished debug run keeps epoch and autoencoder: nothing is retrained."""
    trainer = "nnUNetTrainerMTMD_debug"
    fold = pipeline["results"] / DATASET / f"{trainer}__nnUNetPlans__2d" / "fold_0"
    if not (fold / "checkpoint_final.pth").is_file():
        pytest.skip("needs the nnUNetTrainerMTMD_debug run of the test above")
    ae_before = (fold / "label_autoencoder.pth").stat().st_mtime
    _run(["nnUNetv2_train", "950", "2d", "0", "-tr", trainer, "-device", "cpu", "--c"], pipeline["train_env"])
    logs = sorted(fold.glob("training_log_*.txt"))
    assert "MJAP phase 1" not in logs[-1].read_text()  # autoencoder restored, not retrained
    assert (fold / "label_autoencoder.pth").stat().st_mtime == ae_before


#: Iterations of the short training below. Measured on the tiny E2E data with the 8-64 feature network
#: (default lambda_msc = 0.1): the bottleneck gap of nnUNetTrainerMTMD is ~0.00 after 300 iterations,
#: 0.02 after 600 and 0.33 after 1000, while nnUNetTrainerMTMD_DSL stays within +-0.01 (MSC separates
#: the shallow stages first: after 300 iterations the first encoder stage's gap is already 0.59).
MSC_TEST_ITERATIONS = 1000


def _short_training_bottleneck_gap(pipeline, monkeypatch, trainer_name: str,
                                   iterations: int = MSC_TEST_ITERATIONS) -> tuple[float, float]:
    """Train ``iterations`` steps in-process (same seed, same data, nnU-Net's own loss, augmentation and
    optimizer) with the network narrowed to 8 features in the first stage (doubling per stage) so
    that 1000 CPU iterations take about a minute; return the (intra, inter) mean cosine similarity
    of bottleneck embeddings (GAP + L2, as MSC and nnUNetv2_mtmd_embeddings compute them) of 4
    fresh batches, in eval mode."""
    import torch

    from nnunetv2_mtmd.losses.contrastive import embed
    from nnunetv2_mtmd.training import trainers

    for k, v in pipeline["train_env"].items():
        if k.startswith("nnUNet_"):
            monkeypatch.setenv(k, v)
    pre = pipeline["preprocessed"] / DATASET
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False
    ak = plans["configurations"]["2d"]["architecture"]["arch_kwargs"]
    n_stages = ak["n_stages"]
    ak["features_per_stage"] = [8 * 2 ** i for i in range(n_stages)]
    dj = json.loads((pre / "dataset.json").read_text())
    torch.manual_seed(0)
    np.random.seed(0)
    tr = getattr(trainers, trainer_name)(plans, "2d", 0, dj, torch.device("cpu"))
    tr.ae_iterations = 30
    tr.initialize()
    tr.on_train_start()  # dataloaders, plus the autoencoder phase for MJAP schemes
    tr.network.train()
    for _ in range(iterations):
        tr.train_step(next(tr.dataloader_train))
    net = tr._plain_network() if hasattr(tr, "_plain_network") else tr.network
    net.eval()
    net.collect_features = True
    zs, doms = [], []
    np.random.seed(123)
    with torch.no_grad():
        for _ in range(4):
            b = next(tr.dataloader_train)
            net(b["data"])
            zs.append(embed([net.last_features[n_stages - 1]])[0])
            doms.append(b["domain"])
    z, d = torch.cat(zs), torch.cat(doms)
    sim = z @ z.T
    same = d[:, None] == d[None, :]
    off = ~torch.eye(len(d), dtype=torch.bool)
    return float(sim[same & off].mean()), float(sim[~same].mean())


def test_msc_separates_domains_more_than_dsl(pipeline, monkeypatch, capsys):
    """Issue 4: after a short CPU training, bottleneck embeddings are more similar within a domain than
    between domains, by more with nnUNetTrainerMTMD (DSL+MSC+MJAP) than with nnUNetTrainerMTMD_DSL
    trained the same way."""
    intra_m, inter_m = _short_training_bottleneck_gap(pipeline, monkeypatch, "nnUNetTrainerMTMD")
    intra_d, inter_d = _short_training_bottleneck_gap(pipeline, monkeypatch, "nnUNetTrainerMTMD_DSL")
    with capsys.disabled():
        print(f"\nbottleneck cosine similarity after {MSC_TEST_ITERATIONS} iterations: MTMD intra {intra_m:.3f} "
              f"inter {inter_m:.3f}; DSL intra {intra_d:.3f} inter {inter_d:.3f}")
    assert intra_m > inter_m
    # a clear margin, not noise: measured 0.33 against 0.00 (see MSC_TEST_ITERATIONS)
    assert (intra_m - inter_m) - (intra_d - inter_d) > 0.1


def _seeded_weights(pipeline, seed: int, run: str) -> dict:
    """Train nnUNetTrainerMTMD_DSL_debug with plans recording ``seed`` into a fresh results folder."""
    from nnunetv2_mtmd.io import load_checkpoint_file

    pre = pipeline["preprocessed"] / DATASET
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    name = f"nnUNetPlans_seed{seed}"
    plans.update(plans_name=name, mtmd_training_seed=seed)  # same data identifier: same preprocessed data
    (pre / f"{name}.json").write_text(json.dumps(plans))
    results = pipeline["root"] / f"results_{run}"
    env = dict(pipeline["train_env"], nnUNet_results=str(results))
    _run(["nnUNetv2_train", "950", "2d", "0", "-tr", "nnUNetTrainerMTMD_DSL_debug", "-p", name, "-device", "cpu"],
         env)
    fold = results / DATASET / f"nnUNetTrainerMTMD_DSL_debug__{name}__2d" / "fold_0"
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert f"Random generators seeded with {seed} (plans['mtmd_training_seed']" in log
    return load_checkpoint_file(fold / "checkpoint_final.pth")["network_weights"]


def test_a_seed_in_the_plans_makes_training_repeatable(pipeline):
    """Same plans seed, two runs: bitwise the same weights (initialisation, sampling and in-process
    augmentation are seeded); another seed: other weights."""
    import torch

    a, b, c = (_seeded_weights(pipeline, s, r) for s, r in ((7, "a"), (7, "b"), (8, "c")))
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
