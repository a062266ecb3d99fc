"""Kolmogorov-Smirnov comparison of slice Dice between evaluation folders."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from scipy import stats

from nnunetv2_mtmd.cli.compare import main as compare_main
from nnunetv2_mtmd.errors import InputDataError, OutputExistsError
from nnunetv2_mtmd.evaluation.compare import compare_folders, compare_slice_dice, describe_sample


def write_slices(folder, values: dict[str, list[float]], case_prefix: str = "") -> None:
    folder.mkdir(parents=True)
    with open(folder / "slices.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "domain", "structure", "slice", "dice"])
        for dom, vals in values.items():
            for i, v in enumerate(vals):
                w.writerow([f"{dom}_{case_prefix}{i // 3:03d}", dom, "bone", i % 3, f"{v:.6f}"])


def test_ks_hand_value():
    # ECDFs of x = {.1, .2, .3} and y = {.25, .35, .45}: at t = .3, F_x = 1 and F_y = 1/3 -> D = 2/3
    rows = compare_slice_dice(
        {"a": {"k": np.array([0.25, 0.35, 0.45])}, "b": {"k": np.array([0.1, 0.2, 0.3])}}
    )
    b = [r for r in rows if r["method"] == "b" and r["group"] == "k"][0]
    assert b["ks_statistic"] == pytest.approx(2 / 3)
    a = [r for r in rows if r["method"] == "a" and r["group"] == "k"][0]
    assert math.isnan(a["ks_statistic"]) and math.isnan(a["ks_pvalue"])  # the reference itself


def test_describe_sample_percentiles():
    d = describe_sample(np.arange(101) / 100)  # 0, .01, ..., 1
    assert d == {
        "n_slices": 101,
        "mean": pytest.approx(0.5),
        "p16": pytest.approx(0.16),
        "p84": pytest.approx(0.84),
    }
    assert describe_sample(np.zeros(0))["n_slices"] == 0


def test_compare_folders_matches_scipy(tmp_path):
    rng = np.random.default_rng(0)
    a = {"ankle": rng.beta(8, 2, 30).tolist(), "knee": rng.beta(9, 2, 24).tolist()}
    b = {"ankle": rng.beta(6, 2, 30).tolist(), "knee": rng.beta(9, 2, 24).tolist()}
    c = {"ankle": rng.beta(8, 3, 30).tolist()}  # no knee slices at all
    for name, vals in (("A", a), ("B", b), ("C", c)):
        write_slices(tmp_path / name, vals)
    out = tmp_path / "cmp"
    rows = compare_folders(
        [tmp_path / "A", tmp_path / "B", tmp_path / "C"], out, names=["base", "new", "third"]
    )
    idx = {(r["method"], r["group"]): r for r in rows}
    assert list(dict.fromkeys(r["group"] for r in rows)) == ["ankle", "knee", "pooled"]
    r6 = lambda v: np.round(np.asarray(v), 6)  # noqa: E731  (values went through a 6-decimal CSV)
    for dom in ("ankle", "knee"):
        ks = stats.ks_2samp(r6(b[dom]), r6(a[dom]))
        assert idx[("new", dom)]["ks_statistic"] == pytest.approx(ks.statistic)
        assert idx[("new", dom)]["ks_pvalue"] == pytest.approx(ks.pvalue)
        p16, p84 = np.percentile(r6(b[dom]), [16, 84])
        assert idx[("new", dom)]["p16"] == pytest.approx(p16) and idx[("new", dom)]["p84"] == pytest.approx(
            p84
        )
        assert idx[("new", dom)]["mean"] == pytest.approx(r6(b[dom]).mean())
    pooled = stats.ks_2samp(r6(b["ankle"] + b["knee"]), r6(a["ankle"] + a["knee"]))
    assert idx[("new", "pooled")]["ks_statistic"] == pytest.approx(pooled.statistic)
    assert idx[("new", "pooled")]["ks_pvalue"] == pytest.approx(pooled.pvalue)
    assert idx[("third", "knee")]["n_slices"] == 0 and math.isnan(idx[("third", "knee")]["ks_statistic"])
    md = (out / "compare.md").read_text()
    assert md.count("\n| ") == 4  # header + 3 methods
    assert "| base |" in md and "(reference)" in md and "n/a" in md
    js = json.loads((out / "compare.json").read_text())
    assert js["reference_method"] == "base" and len(js["rows"]) == 9
    with open(out / "compare.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == 9 and csv_rows[0]["ks_statistic"] == ""
    assert float(csv_rows[3 + 0]["ks_statistic"]) == pytest.approx(
        idx[("new", "ankle")]["ks_statistic"], rel=1e-5
    )


def test_errors(tmp_path):
    write_slices(tmp_path / "x" / "run", {"ankle": [0.5, 0.6]})
    write_slices(tmp_path / "y" / "run", {"ankle": [0.5, 0.7]})
    folders = [tmp_path / "x" / "run", tmp_path / "y" / "run"]
    with pytest.raises(InputDataError, match="--names"):
        compare_folders(folders, tmp_path / "o")
    with pytest.raises(InputDataError, match="2 folders"):
        compare_folders(folders, tmp_path / "o", names=["a"])
    with pytest.raises(InputDataError, match="at least two"):
        compare_folders(folders[:1], tmp_path / "o")
    with pytest.raises(InputDataError, match="slices.csv"):
        compare_folders([folders[0], tmp_path], tmp_path / "o", names=["a", "b"])
    compare_folders(folders, tmp_path / "o", names=["a", "b"])
    with pytest.raises(OutputExistsError):
        compare_folders(folders, tmp_path / "o", names=["a", "b"])


def test_cli(tmp_path, capsys):
    write_slices(tmp_path / "m1", {"knee": [0.9, 0.8, 0.85, 0.7]})
    write_slices(tmp_path / "m2", {"knee": [0.6, 0.5, 0.5, 0.4]})
    assert compare_main([str(tmp_path / "m1"), str(tmp_path / "m2"), "-o", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "| m2 | 0.500 [" in md and "1.000 (p=" in md  # all of m2 below all of m1: D = 1
    assert compare_main([str(tmp_path / "m1"), "-o", str(tmp_path / "out2")]) == 2
    assert "at least two" in capsys.readouterr().err


def write_metrics(folder, case_dice: dict[str, tuple[str, list[float]]]) -> None:
    with open(folder / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "domain", "structure", "dice"])
        for case, (dom, vals) in case_dice.items():
            for j, v in enumerate(vals):
                w.writerow([case, dom, f"s{j}", v])


def test_compare_adds_the_per_case_paired_test_when_metrics_are_there(tmp_path):
    for name in ("A", "B"):
        write_slices(tmp_path / name, {"knee": [0.5, 0.6, 0.7]})
    # case Dice (mean over structures): A knee_1 0.5, knee_2 0.7, hip_1 0.9; B 0.6, 0.8, 0.8
    write_metrics(tmp_path / "A", {"knee_1": ("knee", [0.4, 0.6]), "knee_2": ("knee", [0.7, 0.7]),
                                   "hip_1": ("hip", [0.9])})
    write_metrics(tmp_path / "B", {"knee_1": ("knee", [0.6, 0.6]), "knee_2": ("knee", [0.9, 0.7]),
                                   "hip_1": ("hip", [0.8])})
    compare_folders([tmp_path / "A", tmp_path / "B"], tmp_path / "o")
    js = json.loads((tmp_path / "o" / "compare.json").read_text())
    paired = {r["group"]: r for r in js["paired"]}
    assert list(paired) == ["hip", "knee", "pooled"]
    assert paired["knee"]["mean_diff"] == pytest.approx(0.1) and paired["knee"]["better"] == 2
    assert paired["knee"]["wilcoxon_p"] == pytest.approx(0.5)  # exact: 2 of the 4 sign patterns as extreme
    assert paired["hip"]["worse"] == 1 and paired["hip"]["wilcoxon_p"] == pytest.approx(1.0)
    assert paired["pooled"]["mean_diff"] == pytest.approx(0.1 / 3)
    assert paired["pooled"]["wilcoxon_p"] == pytest.approx(0.75)
    md = (tmp_path / "o" / "compare.md").read_text()
    assert "## Per-case paired comparison (vs A)" in md
    assert "| B | -0.100 ± 0.000 (0/1 of 1), p=1.000 | +0.100 ± 0.000 (2/0 of 2), p=0.500 |" in md
    with open(tmp_path / "o" / "paired.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 3


def test_compare_without_paired_test_when_metrics_are_missing_or_cases_differ(tmp_path, caplog):
    for name in ("A", "B"):
        write_slices(tmp_path / name, {"knee": [0.5, 0.6, 0.7]})
    write_metrics(tmp_path / "A", {"knee_1": ("knee", [0.5])})
    compare_folders([tmp_path / "A", tmp_path / "B"], tmp_path / "o1")
    assert json.loads((tmp_path / "o1" / "compare.json").read_text())["paired"] is None
    assert not (tmp_path / "o1" / "paired.csv").exists()
    assert "No metrics.csv in" in caplog.text
    write_metrics(tmp_path / "B", {"knee_2": ("knee", [0.5])})
    compare_folders([tmp_path / "A", tmp_path / "B"], tmp_path / "o2")
    assert json.loads((tmp_path / "o2" / "compare.json").read_text())["paired"] is None
    assert "evaluated on different cases" in caplog.text
