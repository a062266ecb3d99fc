"""Compare evaluation folders by their 2D slice Dice (Boutillon et al. 2022, Table 4).

Each folder is an output of ``nnUNetv2_mtmd_evaluate`` and holds ``slices.csv`` (one 2D Dice per
case, structure and slice where reference or prediction has the structure). For every method
(folder) and every domain, and pooled over all domains, :func:`compare_slice_dice` reports the
number of slices, the mean and the 16th/84th percentiles (numpy linear interpolation; the central
68 % of the distribution, +-1 sigma for a normal one) of the slice Dice, and the two-sample
Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``, two-sided, ``method="auto"``) of its slice Dice
against the FIRST folder's slice Dice of the same domain. Methods are rows, domains are column
groups, as in the paper's Table 4.

The slices of one case are not independent samples, so the KS p-values overstate the evidence. When
every folder also holds ``metrics.csv`` for the same cases, :func:`compare_folders` adds the per-case
paired comparison of :mod:`nnunetv2_mtmd.evaluation.paired` (case Dice = mean over the case's
structures; mean difference, cases better / worse, Wilcoxon signed-rank test; one sample per case).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from nnunetv2_mtmd.errors import InputDataError
from nnunetv2_mtmd.evaluation.paired import PAIRED_COLUMNS, load_case_scores, paired_rows, paired_table
from nnunetv2_mtmd.io import atomic_output_dir

logger = logging.getLogger(__name__)

POOLED = "pooled"
COMPARE_COLUMNS: tuple[str, ...] = (
    "method",
    "group",
    "n_slices",
    "mean",
    "p16",
    "p84",
    "ks_statistic",
    "ks_pvalue",
)
NAN = float("nan")


def load_slice_dice(folder: Path) -> tuple[dict[str, np.ndarray], set[str]]:
    """Read ``folder/slices.csv``: returns ``({domain: dice values, "pooled": all values}, case ids)``."""
    path = Path(folder) / "slices.csv"
    if not path.is_file():
        raise InputDataError(f"{path} does not exist: run nnUNetv2_mtmd_evaluate with -o {folder} first.")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        need = {"case", "domain", "dice"}
        if not need <= set(reader.fieldnames or ()):
            raise InputDataError(
                f"{path} lacks the columns {sorted(need - set(reader.fieldnames or ()))}; "
                "is it an nnUNetv2_mtmd_evaluate output?"
            )
        by_domain: dict[str, list[float]] = {}
        cases = set()
        for i, row in enumerate(reader, start=2):
            try:
                val = float(row["dice"])
            except ValueError as e:
                raise InputDataError(f"{path}, line {i}: dice {row['dice']!r} is not a number.") from e
            if not math.isfinite(val):
                raise InputDataError(
                    f"{path}, line {i}: dice is {row['dice']!r}; slice Dice is always defined."
                )
            by_domain.setdefault(row["domain"], []).append(val)
            cases.add(row["case"])
    out = {d: np.asarray(v, dtype=np.float64) for d, v in by_domain.items()}
    out[POOLED] = np.concatenate(list(out.values())) if out else np.zeros(0)
    return out, cases


def describe_sample(x: np.ndarray) -> dict[str, float | int]:
    """``n``, ``mean``, ``p16``, ``p84`` of a 1D sample (NaN when empty)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return {"n_slices": 0, "mean": NAN, "p16": NAN, "p84": NAN}
    p16, p84 = np.percentile(x, [16, 84])
    return {"n_slices": int(x.size), "mean": float(x.mean()), "p16": float(p16), "p84": float(p84)}


def compare_slice_dice(samples: Mapping[str, Mapping[str, np.ndarray]]) -> list[dict[str, Any]]:
    """Rows ``{method, group, n_slices, mean, p16, p84, ks_statistic, ks_pvalue}`` for every method
    (in the given order) and group (domains in order of first appearance, then ``"pooled"``).

    ``samples``: method -> group -> slice Dice values. KS values are NaN for the first method (the
    reference) and where either sample is empty."""
    if not samples:
        raise InputDataError("Nothing to compare: give at least one evaluation folder.")
    methods = list(samples)
    groups = list(dict.fromkeys(g for m in methods for g in samples[m] if g != POOLED)) + [POOLED]
    base = samples[methods[0]]
    rows = []
    for m in methods:
        for g in groups:
            x = np.asarray(samples[m].get(g, np.zeros(0)), dtype=np.float64)
            row: dict[str, Any] = {
                "method": m,
                "group": g,
                **describe_sample(x),
                "ks_statistic": NAN,
                "ks_pvalue": NAN,
            }
            y = np.asarray(base.get(g, np.zeros(0)), dtype=np.float64)
            if m != methods[0] and x.size and y.size:
                res = stats.ks_2samp(x, y)
                row["ks_statistic"], row["ks_pvalue"] = float(res.statistic), float(res.pvalue)
            rows.append(row)
    return rows


def _cell(row: Mapping[str, Any]) -> str:
    if row["n_slices"] == 0:
        return "n/a"
    return f"{row['mean']:.3f} [{row['p16']:.3f}, {row['p84']:.3f}]"


def _ks_cell(row: Mapping[str, Any], is_ref: bool) -> str:
    if is_ref:
        return "(reference)"
    if math.isnan(row["ks_statistic"]):
        return "n/a"
    p = row["ks_pvalue"]
    ptxt = f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"
    return f"{row['ks_statistic']:.3f} (p={ptxt})"


def compare_markdown(rows: Sequence[Mapping[str, Any]], folders: Mapping[str, Path]) -> str:
    """compare.md: rows = methods, per group: ``mean [P16, P84]`` and ``KS D (p)`` vs the first method."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    groups = list(dict.fromkeys(r["group"] for r in rows))
    idx = {(r["method"], r["group"]): r for r in rows}
    cols = ["Method"] + [c for g in groups for c in (f"{g}: Dice mean [P16, P84]", f"{g}: KS D (p)")]
    lines = [
        "# Slice Dice comparison (Kolmogorov-Smirnov vs the first method)",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for i, m in enumerate(methods):
        cells = [m]
        for g in groups:
            cells += [_cell(idx[(m, g)]), _ks_cell(idx[(m, g)], i == 0)]
        lines.append("| " + " | ".join(cells) + " |")
    n_line = "; ".join(
        f"{m}: " + ", ".join(f"{g} {idx[(m, g)]['n_slices']}" for g in groups) for m in methods
    )
    lines += [
        "",
        "2D Dice of every slice where the reference or the prediction has the structure "
        "(all structures of the domain). P16/P84 = 16th/84th percentiles. KS: two-sample "
        "Kolmogorov-Smirnov test (scipy.stats.ks_2samp, two-sided) of each method's slice Dice against "
        f"the first method's ({methods[0]}), per domain and pooled.",
        "",
        "Slices: " + n_line,
        "",
        "Folders:",
    ]
    lines += [f"- {m}: `{p}`" for m, p in folders.items()]
    return "\n".join(lines) + "\n"


def paired_markdown(rows: Sequence[Mapping[str, Any]], reference: str) -> str:
    """The per-case paired section of compare.md (rows of :func:`nnunetv2_mtmd.evaluation.paired.paired_rows`)."""
    lines = [f"## Per-case paired comparison (vs {reference})", "", paired_table(rows)]
    lines += [
        "",
        "Case Dice = mean Dice over the case's structures (metrics.csv); ΔDice = mean ± std over the cases "
        f"of (method - {reference}); better/worse = cases where the method is higher/lower; p = two-sided "
        "Wilcoxon signed-rank test of the differences (scipy.stats.wilcoxon; equal cases left out). One "
        "sample per case, unlike the slice-level KS test above.",
    ]
    return "\n".join(lines) + "\n"


def _paired_or_none(names: Sequence[str], folders: Sequence[Path]) -> list[dict[str, Any]] | None:
    missing = [str(f) for f in folders if not (f / "metrics.csv").is_file()]
    if missing:
        logger.warning("No metrics.csv in %s: no per-case paired comparison.", ", ".join(missing))
        return None
    scores = {n: load_case_scores(f, "dice") for n, f in zip(names, folders)}
    for n in names[1:]:
        if set(scores[n]) != set(scores[names[0]]):
            logger.warning(
                "'%s' and '%s' were evaluated on different cases: no per-case paired comparison.", n, names[0]
            )
            return None
    return paired_rows(scores)


def _is_nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _write_rows_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """Rows as CSV: floats with 6 significant digits, NaN as an empty cell."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        for r in rows:
            w.writerow(["" if _is_nan(r[c]) else (f"{r[c]:.6g}" if isinstance(r[c], float) else r[c]) for c in columns])


def _json_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows for JSON: NaN as null."""
    return [{k: (None if _is_nan(v) else v) for k, v in r.items()} for r in rows]


def compare_folders(
    folders: Sequence[Path], out_dir: Path, names: Sequence[str] | None = None, overwrite: bool = False
) -> list[dict[str, Any]]:
    """Read every folder's slices.csv, compare with the first, write compare.md/.csv/.json to ``out_dir``
    (and, when every folder has metrics.csv for the same cases, paired.csv and the paired section)."""
    folders = [Path(f) for f in folders]
    if len(folders) < 2:
        raise InputDataError(
            "Give at least two evaluation folders: the first is the reference of the KS tests."
        )
    if names is None:
        names = [f.resolve().name for f in folders]
        if len(set(names)) != len(names):
            raise InputDataError(f"Folder names are not unique ({names}); name the methods with --names.")
    else:
        names = list(names)
        if len(names) != len(folders):
            raise InputDataError(f"--names has {len(names)} names for {len(folders)} folders.")
        if len(set(names)) != len(names):
            raise InputDataError(f"--names must be unique, found {names}.")
    samples, cases = {}, {}
    for n, f in zip(names, folders):
        samples[n], cases[n] = load_slice_dice(f)
    for n in names[1:]:
        if cases[n] != cases[names[0]]:
            logger.warning(
                "'%s' was evaluated on other cases than '%s' (%d vs %d cases; %d in common): the "
                "comparison mixes case sets.",
                n,
                names[0],
                len(cases[n]),
                len(cases[names[0]]),
                len(cases[n] & cases[names[0]]),
            )
    rows = compare_slice_dice(samples)
    paired = _paired_or_none(names, folders)
    with atomic_output_dir(Path(out_dir), overwrite=overwrite) as tmp:
        _write_rows_csv(tmp / "compare.csv", COMPARE_COLUMNS, rows)
        js = {
            "reference_method": names[0],
            "folders": {n: str(f) for n, f in zip(names, folders)},
            "rows": _json_rows(rows),
            "paired": None if paired is None else _json_rows(paired),
        }
        md = compare_markdown(rows, dict(zip(names, folders)))
        if paired is not None:
            _write_rows_csv(tmp / "paired.csv", PAIRED_COLUMNS, paired)
            md += "\n" + paired_markdown(paired, names[0])
        (tmp / "compare.json").write_text(json.dumps(js, indent=2))
        (tmp / "compare.md").write_text(md, encoding="utf-8")
    return rows
