"""Per-case paired comparison (nnunetv2_mtmd.evaluation.paired): hand-computed values."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from nnunetv2_mtmd.errors import InputDataError
from nnunetv2_mtmd.evaluation.paired import (
    POOLED,
    fold_means,
    load_case_scores,
    paired_comparison,
    paired_plot,
    paired_rows,
    paired_stats,
    paired_table,
)


def _write_metrics(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["case", "domain", "structure", "dice", "assd_mm"])
        w.writeheader()
        for case, dom, struct, dice, assd in rows:
            w.writerow({"case": case, "domain": dom, "structure": struct, "dice": dice, "assd_mm": assd})


def test_load_case_scores_means_over_structures_and_skips_undefined(tmp_path):
    _write_metrics(tmp_path, [
        ("knee_1", "knee", "femur", 0.8, 1.0),
        ("knee_1", "knee", "tibia", 0.6, "nan"),
        ("hip_1", "hip", "femur", 0.9, "nan"),
    ])
    dice = load_case_scores(tmp_path, "dice")
    assert dice == {"knee_1": ("knee", pytest.approx(0.7)), "hip_1": ("hip", pytest.approx(0.9))}
    assd = load_case_scores(tmp_path, "assd_mm")
    assert assd["knee_1"] == ("knee", 1.0)  # the undefined tibia distance is left out
    assert math.isnan(assd["hip_1"][1])  # nothing defined


def test_load_case_scores_errors(tmp_path):
    with pytest.raises(InputDataError, match="run nnUNetv2_mtmd_evaluate"):
        load_case_scores(tmp_path / "nowhere")
    _write_metrics(tmp_path / "a", [("knee_1", "knee", "femur", 0.8, 1.0)])
    with pytest.raises(InputDataError, match=r"lacks the columns \['hd95_mm'\]"):
        load_case_scores(tmp_path / "a", "hd95_mm")
    _write_metrics(tmp_path / "b", [("knee_1", "knee", "femur", "x", 1.0)])
    with pytest.raises(InputDataError, match="line 2: dice 'x' is not a number"):
        load_case_scores(tmp_path / "b")
    _write_metrics(tmp_path / "c", [("c1", "knee", "femur", 0.5, 1.0), ("c1", "hip", "femur", 0.5, 1.0)])
    with pytest.raises(InputDataError, match="line 3: case c1 is listed under two domains"):
        load_case_scores(tmp_path / "c")


# exact two-sided Wilcoxon signed-rank p-values, by enumerating the 2^n sign patterns:
# n=6 all positive: P(W+ = 21 or 0) = 2/64; n=3 ranks 1,2,3 with signs +,-,+: W+ = 4, W- = 2,
# P(min(W+, W-) <= 2) = #{W+ in {0,1,2,4,5,6}} / 8 = 6/8
@pytest.mark.parametrize("a, b, mean_diff, better, worse, equal, p", [
    ([0.5] * 6, [0.6, 0.7, 0.8, 0.9, 1.0, 1.1], 0.35, 6, 0, 0, 2 / 64),
    ([0.5, 0.5, 0.5], [0.6, 0.3, 0.8], (0.1 - 0.2 + 0.3) / 3, 2, 1, 0, 6 / 8),
    # an equal case is counted and left out of the test: one non-zero difference, p = 1
    ([0.5, 0.7], [0.5, 0.8], 0.05, 1, 0, 1, 1.0),
    # nothing differs: no test
    ([0.5, 0.7], [0.5, 0.7], 0.0, 0, 0, 2, float("nan")),
])
def test_paired_stats_hand_computed(a, b, mean_diff, better, worse, equal, p):
    r = paired_stats(a, b)
    assert r["n"] == len(a)
    assert r["mean_diff"] == pytest.approx(mean_diff)
    assert r["std_diff"] == pytest.approx(np.std(np.subtract(b, a)))
    assert (r["better"], r["worse"], r["equal"]) == (better, worse, equal)
    if math.isnan(p):
        assert math.isnan(r["wilcoxon_p"])
    else:
        assert r["wilcoxon_p"] == pytest.approx(p)


def test_paired_stats_leaves_out_pairs_with_nan_and_refuses_unequal_lengths():
    r = paired_stats([0.5, float("nan"), 0.5], [0.7, 0.9, 0.6])
    assert r["n"] == 2 and r["mean_diff"] == pytest.approx(0.15)
    assert r["mean_a"] == pytest.approx(0.5) and r["mean_b"] == pytest.approx(0.65)
    with pytest.raises(ValueError, match="different lengths"):
        paired_stats([0.5], [0.5, 0.6])


def test_paired_comparison_per_domain_and_pooled():
    ref = {"knee_1": ("knee", 0.5), "knee_2": ("knee", 0.6), "hip_1": ("hip", 0.9)}
    oth = {"knee_1": ("knee", 0.7), "knee_2": ("knee", 0.5), "hip_1": ("hip", 0.95)}
    res = paired_comparison(ref, oth)
    assert set(res) == {"knee", "hip", POOLED}
    assert res["knee"]["mean_diff"] == pytest.approx((0.2 - 0.1) / 2)
    assert (res["knee"]["better"], res["knee"]["worse"]) == (1, 1)
    assert res["hip"]["n"] == 1 and res["hip"]["mean_diff"] == pytest.approx(0.05)
    assert res[POOLED]["n"] == 3 and res[POOLED]["mean_diff"] == pytest.approx((0.2 - 0.1 + 0.05) / 3)


def test_paired_table_orders_groups_labels_methods_and_marks_missing_groups():
    ref = {"knee_1": ("knee", 0.5), "knee_2": ("knee", 0.7)}
    oth = {"knee_1": ("knee", 0.6), "knee_2": ("knee", 0.8)}
    rows = paired_rows({"A": ref, "B": oth})
    lines = paired_table(rows, ["hip", "knee"], label=str.lower, first_column="Scheme").splitlines()
    assert lines[0] == ("| Scheme | hip: ΔDice (better/worse of n), Wilcoxon p | "
                        "knee: ΔDice (better/worse of n), Wilcoxon p |")
    assert lines[1] == "|---|---|---|"
    # both cases +0.1: 2 of 2 better, exact two-sided p = 2/4; no hip case -> n/a
    assert lines[2] == "| b | n/a | +0.100 ± 0.000 (2/0 of 2), p=0.500 |"
    assert len(lines) == 3
    # default: groups as they come (domains, then pooled), names unchanged
    assert paired_table(rows).splitlines()[0].startswith("| Method | knee: ")
    assert paired_table(rows).splitlines()[0].endswith("| pooled: ΔDice (better/worse of n), Wilcoxon p |")


def test_paired_comparison_refuses_different_cases_or_domains():
    ref = {"knee_1": ("knee", 0.5), "knee_2": ("knee", 0.6)}
    with pytest.raises(InputDataError, match=r"only in A: \['knee_2'\]; only in B: \[\]"):
        paired_comparison(ref, {"knee_1": ("knee", 0.5)}, "A", "B")
    with pytest.raises(InputDataError, match="knee_2 is in domain knee in A but hip in B"):
        paired_comparison(ref, {"knee_1": ("knee", 0.5), "knee_2": ("hip", 0.6)}, "A", "B")


def test_fold_means():
    scores = {"knee_1": ("knee", 0.5), "knee_2": ("knee", 0.7), "knee_3": ("knee", 0.9), "hip_1": ("hip", 0.8)}
    folds = {0: ["knee_1", "knee_2", "hip_1"], 1: ["knee_3"]}
    assert fold_means(scores, folds) == {"hip": {0: pytest.approx(0.8)},
                                         "knee": {0: pytest.approx(0.6), 1: pytest.approx(0.9)}}
    with pytest.raises(InputDataError, match=r"\['knee_3'\] are in no fold"):
        fold_means(scores, {0: ["knee_1", "knee_2", "hip_1"]})


def test_paired_plot_writes_a_png(tmp_path):
    a = {"knee_1": ("knee", 0.5), "hip_1": ("hip", 0.9)}
    b = {"knee_1": ("knee", 0.7), "hip_1": ("hip", 0.8)}
    out = paired_plot({"Individual": a, "DSL": b}, tmp_path / "p.png", ["knee", "hip"], title="t")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
