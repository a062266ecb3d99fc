"""Shape plausibility (nnunetv2_mtmd/evaluation/plausibility.py) with the session's small trained label
autoencoder: clean masks score higher than corrupted ones, the edge cases are as documented, the
geometry follows nnU-Net's segmentation preprocessing, and the folder scoring joins the evaluation's
Dice with a hand-checkable Spearman correlation."""

from __future__ import annotations

import csv
import json
from functools import partial
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_mtmd.errors import InputDataError
from nnunetv2_mtmd.evaluation.plausibility import plausibility_scores, score_folder, to_autoencoder_geometry
from tests.training.label_autoencoder_helpers import _corrupt


def _volume(maps) -> np.ndarray:
    return np.stack(maps).astype(np.int64)  # (Z, X, Y): one slice per map


@pytest.mark.parametrize("kind", ["specks", "hole", "swapped"])
def test_corrupted_predictions_are_less_plausible_than_clean_ones(trained_label_autoencoder, kind):
    """The held-out synthetic maps of each domain as one case: every structure the corruption touched
    scores lower corrupted than clean (measured: clean 0.99 for every structure)."""
    t = trained_label_autoencoder
    ae, held_out, sp = t["ae"], t["held_out"], t["spec"]
    rng = np.random.default_rng(3)
    for k, dom in enumerate(sp.domains):
        clean = held_out.foreground(k)
        pairs = [_corrupt(m, kind, k, rng) for m in clean]
        touched = {lab for _, labs in pairs for lab in labs}
        before = plausibility_scores(ae, _volume(clean), k, sp)
        after = plausibility_scores(ae, _volume([c for c, _ in pairs]), k, sp)
        for lab in dom.labels:
            assert before[lab.name]["plausibility"] >= 0.95, (dom.name, lab.name, before[lab.name])
            assert before[lab.name]["maps"] == len(clean)
            if lab.unified_id in touched:
                assert after[lab.name]["plausibility"] < before[lab.name]["plausibility"], (kind, lab.name)


def test_plausibility_edge_cases(trained_label_autoencoder):
    """Empty prediction: NaN and 0 maps; another domain's label is ignored (background); a structure
    predicted nowhere but reconstructed is 0, absent from both is NaN; predicted voxels are counted."""
    t = trained_label_autoencoder
    ae, held_out, sp = t["ae"], t["held_out"], t["spec"]
    empty = plausibility_scores(ae, np.zeros((3, 32, 32), np.int64), 0, sp)
    assert all(v["maps"] == 0 and np.isnan(v["plausibility"]) for v in empty.values())
    clean = _volume(held_out.foreground(0)[:4])
    foreign = clean.copy()
    foreign[:, 0:3, 0:3] = 4  # a "bars" label in a "blob" case
    a, b = plausibility_scores(ae, clean, 0, sp), plausibility_scores(ae, foreign, 0, sp)
    assert a == b
    assert a["disk"]["predicted_voxels"] == int((clean == 1).sum())
    only_box = np.where(clean == 1, 0, clean)  # the disk removed: the prior still sees a box ...
    s = plausibility_scores(ae, only_box, 0, sp)
    assert s["disk"]["predicted_voxels"] == 0
    assert s["disk"]["plausibility"] == 0.0 or np.isnan(s["disk"]["plausibility"])
    with pytest.raises(InputDataError, match="3D label array"):
        plausibility_scores(ae, clean[0], 0, sp)


def _managers(transpose=(0, 1, 2), spacing=(1.0, 1.0)):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape

    pm = SimpleNamespace(transpose_forward=list(transpose), image_reader_writer_class=lambda: SimpleITKIO())
    cm = SimpleNamespace(spacing=list(spacing), resampling_fn_seg=partial(
        resample_data_or_seg_to_shape, is_seg=True, order=1, order_z=0, force_separate_z=None))
    return pm, cm


def test_geometry_is_transposed_and_resampled_like_nnunet_preprocessing():
    """(Z, Y, X) = (2, 8, 12) at spacing (3, 0.5, 0.5) mm, transpose [0, 2, 1], target in-plane 1 mm:
    (2, 6, 4) with the slice spacing kept; a block keeps its label and halves its in-plane extent."""
    pm, cm = _managers((0, 2, 1), (1.0, 1.0))
    seg = np.zeros((2, 8, 12), np.uint8)
    seg[:, 0:4, 0:8] = 3
    out = to_autoencoder_geometry(seg, (3.0, 0.5, 0.5), pm, cm)
    assert out.shape == (2, 6, 4)
    assert set(np.unique(out).tolist()) == {0, 3}
    assert (out == 3).sum() == 2 * 4 * 2  # x 0..8 -> 0..4, y 0..4 -> 0..2 (transposed: (Z, X, Y))


def test_score_folder_joins_dice_and_spearman(trained_label_autoencoder, tmp_path):
    """Three "blob" cases (clean, one hole, specks) written as files; the metrics.csv gives Dice values
    in the same order as their plausibility, so Spearman's rho over the disk rows is 1 by hand."""
    t = trained_label_autoencoder
    ae, held_out, sp = t["ae"], t["held_out"], t["spec"]
    rng = np.random.default_rng(0)
    clean = held_out.foreground(0)[:5]
    cases = {"blob_001": clean, "blob_002": [_corrupt(m, "hole", 0, rng)[0] for m in clean],
             "blob_003": [_corrupt(m, "specks", 0, rng)[0] for m in clean]}
    pred = tmp_path / "pred"
    pred.mkdir()
    for case, maps in cases.items():
        img = sitk.GetImageFromArray(np.stack(maps).astype(np.uint8))  # (Z, Y, X); spacing 1 mm
        sitk.WriteImage(img, str(pred / f"{case}.nii.gz"))
    pm, cm = _managers()
    direct = {c: plausibility_scores(ae, np.stack(m).astype(np.int64), 0, sp)["disk"]["plausibility"]
              for c, m in cases.items()}
    order = sorted(direct, key=direct.get)
    metrics = tmp_path / "metrics.csv"
    with open(metrics, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "domain", "structure", "dice"])
        for rank, c in enumerate(order):
            w.writerow([c, "blob", "disk", 0.5 + 0.1 * rank])
            w.writerow([c, "blob", "box", 0.9])
    summary = score_folder(pred, tmp_path / "out", ae, pm, cm, sp, ".nii.gz", metrics_csv=metrics, lowest=2)
    rows = list(csv.DictReader(open(tmp_path / "out" / "plausibility.csv", newline="")))
    assert [(r["case"], r["structure"]) for r in rows] == [(c, s) for c in cases for s in ("disk", "box")]
    for r in rows:
        if r["structure"] == "disk":
            assert float(r["plausibility"]) == pytest.approx(direct[r["case"]], abs=1e-6)
    disk = [i for i, r in enumerate(rows) if r["structure"] == "disk"]
    from scipy.stats import spearmanr

    rho = spearmanr([float(rows[i]["plausibility"]) for i in range(len(rows))],
                    [float(rows[i]["dice"]) for i in range(len(rows))])[0]
    assert summary["spearman"]["pooled"]["rho"] == pytest.approx(rho) and summary["spearman"]["pooled"]["n"] == 6
    assert [float(rows[i]["dice"]) for i in sorted(disk, key=lambda i: float(rows[i]["plausibility"]))] == [
        0.5, pytest.approx(0.6), pytest.approx(0.7)]
    on_disk = json.loads((tmp_path / "out" / "plausibility.json").read_text())
    assert len(on_disk["lowest"]) == 2 and on_disk["lowest"][0]["plausibility"] <= on_disk["lowest"][1]["plausibility"]
    # bad inputs: unknown domain, metrics without the rows, existing output
    with pytest.raises(InputDataError, match="not a domain of the dataset"):
        score_folder(pred, tmp_path / "o2", ae, pm, cm, sp, ".nii.gz", domain="knee")
    metrics.write_text("case,domain,structure,dice\nblob_001,blob,disk,0.5\n")
    with pytest.raises(InputDataError, match="has no Dice for 5 predicted structures"):
        score_folder(pred, tmp_path / "o3", ae, pm, cm, sp, ".nii.gz", metrics_csv=metrics)
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()
