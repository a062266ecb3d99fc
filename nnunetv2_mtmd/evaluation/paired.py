"""Per-case paired comparison of evaluation folders, and per-fold means.

Every scheme of a study predicts the same held-out cases, so the natural test of "does scheme B
beat scheme A on this domain" pairs the two results case by case. The 2D slice Dice KS test of
:mod:`nnunetv2_mtmd.evaluation.compare` (the paper's Table 4) treats every slice as an independent
sample, although the slices of a case are strongly correlated; the paired test here uses one number
per case (the mean of a metric over the case's structures), so its sample size is the number of
cases, which is what the data really has.

Each folder is an output of ``nnUNetv2_mtmd_evaluate`` (``metrics.csv``: one row per case and
structure). For a domain with cases ``c_1..c_n`` and per-case scores ``a_i`` (reference folder) and
``b_i`` (other folder), :func:`paired_comparison` reports ``n``, the mean and population std of
``d_i = b_i - a_i``, how many cases are better / worse / equal (``|d_i| <= tie``), and the two-sided
Wilcoxon signed-rank test of ``d`` (``scipy.stats.wilcoxon``, zero differences dropped,
``method="auto"``: exact for small samples without ties). The p-value is NaN when fewer than one
non-zero difference exists. Pooled rows pair every case of every domain.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from nnunetv2_mtmd.errors import InputDataError

logger = logging.getLogger(__name__)

POOLED = "pooled"
NAN = float("nan")
TIE = 1e-9


def load_case_scores(folder: Path, metric: str = "dice") -> dict[str, tuple[str, float]]:
    """``{case: (domain, score)}`` from ``folder/metrics.csv``: the mean of ``metric`` over the case's
    structures with a defined (finite) value; NaN when none is defined."""
    path = Path(folder) / "metrics.csv"
    if not path.is_file():
        raise InputDataError(f"{path} does not exist: run nnUNetv2_mtmd_evaluate with -o {folder} first.")
    values: dict[str, list[float]] = {}
    domains: dict[str, str] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        need = {"case", "domain", metric}
        if not need <= set(reader.fieldnames or ()):
            raise InputDataError(
                f"{path} lacks the columns {sorted(need - set(reader.fieldnames or ()))}; "
                "is it an nnUNetv2_mtmd_evaluate output?"
            )
        for i, row in enumerate(reader, start=2):
            case = row["case"]
            if domains.setdefault(case, row["domain"]) != row["domain"]:
                raise InputDataError(f"{path}, line {i}: case {case} is listed under two domains.")
            try:
                v = float(row[metric])
            except ValueError as e:
                raise InputDataError(f"{path}, line {i}: {metric} {row[metric]!r} is not a number.") from e
            values.setdefault(case, []).append(v)
    out = {}
    for case, vals in values.items():
        ok = [v for v in vals if math.isfinite(v)]
        out[case] = (domains[case], float(np.mean(ok)) if ok else NAN)
    return out


def _by_domain(scores: Mapping[str, tuple[str, float]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for case, (dom, _) in sorted(scores.items()):
        out.setdefault(dom, []).append(case)
    return out


def paired_stats(a: Sequence[float], b: Sequence[float], tie: float = TIE) -> dict[str, float | int]:
    """Paired statistics of ``b - a`` (see the module docstring). Pairs with a NaN are left out."""
    a_, b_ = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_.shape != b_.shape:
        raise ValueError(f"paired samples of different lengths: {a_.size} and {b_.size}")
    ok = np.isfinite(a_) & np.isfinite(b_)
    d = b_[ok] - a_[ok]
    n = int(d.size)
    better, worse = int((d > tie).sum()), int((d < -tie).sum())
    p = NAN
    nonzero = d[np.abs(d) > tie]
    if nonzero.size >= 1:
        p = float(stats.wilcoxon(nonzero, alternative="two-sided", method="auto").pvalue)
    return {
        "n": n,
        "mean_a": float(a_[ok].mean()) if n else NAN,
        "mean_b": float(b_[ok].mean()) if n else NAN,
        "mean_diff": float(d.mean()) if n else NAN,
        "std_diff": float(d.std()) if n else NAN,
        "better": better,
        "worse": worse,
        "equal": n - better - worse,
        "wilcoxon_p": p,
    }


def paired_cell(r: Mapping[str, float | int]) -> str:
    """One result of :func:`paired_stats` as a table cell: ``+0.019 ± 0.008 (3/0 of 3), p=0.250``."""
    if not r["n"]:
        return "n/a"
    p = float(r["wilcoxon_p"])
    ptxt = "n/a" if math.isnan(p) else (f"{p:.2e}" if p < 1e-3 else f"{p:.3f}")
    return f"{r['mean_diff']:+.3f} ± {r['std_diff']:.3f} ({r['better']}/{r['worse']} of {r['n']}), p={ptxt}"


def paired_comparison(
    reference: Mapping[str, tuple[str, float]],
    other: Mapping[str, tuple[str, float]],
    ref_name: str = "reference",
    other_name: str = "other",
) -> dict[str, dict[str, float | int]]:
    """Per domain and pooled: :func:`paired_stats` of ``other`` against ``reference`` (both from
    :func:`load_case_scores`). Both must hold exactly the same cases, under the same domains."""
    if set(reference) != set(other):
        only_r, only_o = sorted(set(reference) - set(other)), sorted(set(other) - set(reference))
        raise InputDataError(
            f"{ref_name} and {other_name} were not evaluated on the same cases: only in {ref_name}: "
            f"{only_r[:5]}{' ...' if len(only_r) > 5 else ''}; only in {other_name}: {only_o[:5]}"
            f"{' ...' if len(only_o) > 5 else ''}. Evaluate both on the same predictions set."
        )
    for case, (dom, _) in reference.items():
        if other[case][0] != dom:
            raise InputDataError(f"case {case} is in domain {dom} in {ref_name} but {other[case][0]} in {other_name}.")
    out = {}
    groups = _by_domain(reference)
    groups[POOLED] = sorted(reference)
    for dom, cases in groups.items():
        out[dom] = paired_stats([reference[c][1] for c in cases], [other[c][1] for c in cases])
    return out


PAIRED_COLUMNS: tuple[str, ...] = (
    "method", "group", "n", "mean_a", "mean_b", "mean_diff", "std_diff", "better", "worse", "equal", "wilcoxon_p",
)


def paired_rows(scores: Mapping[str, Mapping[str, tuple[str, float]]]) -> list[dict[str, object]]:
    """Rows of :data:`PAIRED_COLUMNS` for every method after the first (the reference; ``mean_a`` is its
    mean) and every group (domains, then ``"pooled"``) of :func:`paired_comparison`."""
    names = list(scores)
    if not names:
        raise InputDataError("Nothing to compare: give at least one evaluation folder.")
    rows: list[dict[str, object]] = []
    for m in names[1:]:
        for group, r in paired_comparison(scores[names[0]], scores[m], names[0], m).items():
            rows.append({"method": m, "group": group, **r})
    return rows


def paired_table(
    rows: Sequence[Mapping[str, Any]],
    groups: Sequence[str] | None = None,
    label: Callable[[str], str] = str,
    first_column: str = "Method",
) -> str:
    """Markdown table of :func:`paired_rows`: one line per method, one :func:`paired_cell` per group.

    ``groups`` fixes the column order (default: as they come in ``rows``); a group a method has no row
    for reads ``n/a``. ``label`` maps a method name to the name shown in the first column."""
    methods = list(dict.fromkeys(str(r["method"]) for r in rows))
    cols = list(groups) if groups is not None else list(dict.fromkeys(str(r["group"]) for r in rows))
    idx = {(str(r["method"]), str(r["group"])): r for r in rows}
    head = [first_column] + [f"{g}: ΔDice (better/worse of n), Wilcoxon p" for g in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        cells = [label(m)] + ["n/a" if (m, g) not in idx else paired_cell(idx[(m, g)]) for g in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fold_means(
    rows_by_case: Mapping[str, tuple[str, float]],
    folds: Mapping[int, Sequence[str]],
) -> dict[str, dict[int, float]]:
    """``{domain: {fold: mean per-case score}}`` for the cases of each fold's validation set (cases of
    ``rows_by_case`` in no fold are an error: they cannot be attributed)."""
    fold_of = {}
    for fold, cases in folds.items():
        for c in cases:
            fold_of[c] = fold
    missing = sorted(set(rows_by_case) - set(fold_of))
    if missing:
        raise InputDataError(f"cases {missing[:5]} are in no fold's validation set; check the splits file.")
    acc: dict[str, dict[int, list[float]]] = {}
    for case, (dom, v) in rows_by_case.items():
        acc.setdefault(dom, {}).setdefault(fold_of[case], []).append(v)
    return {dom: {f: float(np.nanmean(v)) if np.isfinite(v).any() else NAN for f, v in sorted(d.items())}
            for dom, d in sorted(acc.items())}


def paired_plot(
    scores: Mapping[str, Mapping[str, tuple[str, float]]],
    path: Path,
    domains: Sequence[str] | None = None,
    ylabel: str = "Dice (mean over the case's structures)",
    title: str | None = None,
) -> Path:
    """One panel per domain; x = the schemes of ``scores`` (in order), y = per-case score; the points
    of one case are joined by a line, so a change that most cases share is visible as parallel lines.
    Diamonds: the mean per scheme."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(scores)
    if not names:
        raise ValueError("paired_plot needs at least one scheme")
    first = scores[names[0]]
    groups = _by_domain(first)
    doms = list(domains) if domains is not None else list(groups)
    width = max(6.0, 0.7 * len(names) * len(doms) + 1.5)
    fig = Figure(figsize=(width, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    x = np.arange(len(names))
    for j, dom in enumerate(doms):
        ax = fig.add_subplot(1, len(doms), j + 1)
        cases = groups.get(dom, [])
        mat = np.array([[scores[s][c][1] for s in names] for c in cases], dtype=np.float64).reshape(len(cases), -1)
        for row in mat:
            ax.plot(x, row, "-o", color="gray", alpha=0.45, markersize=3, linewidth=0.8)
        if len(cases):
            ax.plot(x, np.nanmean(mat, axis=0), "D", color="black", markersize=6, zorder=3)
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{dom} (n={len(cases)})", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        if j == 0:
            ax.set_ylabel(ylabel)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.8 / width, right=1 - 0.2 / width, bottom=0.26, top=0.86, wspace=0.3)
    path = Path(path)
    fig.savefig(path)
    return path
