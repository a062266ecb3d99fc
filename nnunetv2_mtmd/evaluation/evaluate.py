"""Evaluate predicted label maps of a merged multi-domain dataset against reference label maps.

Both folders hold ``<case><file_ending>`` label files in the unified label space of the merged
dataset (e.g. ``nnUNet_raw/DatasetXXX/labelsTr`` and a ``nnUNetv2_predict`` output). For every case,
only the structures of the case's domain (``<domain>_`` prefix of the case id) are evaluated; a
structure absent from both files still gets a row (both-empty convention).

Outputs of :func:`evaluate_folders` (all-or-nothing):

- ``metrics.csv``: one row per case and structure, columns :data:`METRICS_COLUMNS` (``structure`` is
  the domain's original label name, e.g. ``tibia``; NaN = undefined, see
  :mod:`nnunetv2_mtmd.evaluation.metrics` for every definition and the empty-mask conventions);
- ``slices.csv``: 2D Dice per case, structure and slice (slices along array axis ``slice_axis``
  where reference or prediction has the structure), columns :data:`SLICES_COLUMNS`;
- ``summary.md``: the paper's Table 2 layout, rows = domain / structure plus a per-domain mean row
  (over all case-structure rows of the domain) and an all-domains row, columns = metrics as
  ``mean ± std`` (population std) over the defined values, with the count of undefined values;
- ``summary.json``: the same numbers (undefined -> ``null``), plus the conventions and
  ``labels_of_other_domains``: per file (``prediction`` / ``reference``), the labels of another
  domain it contains and their voxel counts (a shared output head can predict them; they are not
  scored, ``nnUNetv2_mtmd_postprocess`` sets them to background), also listed in summary.md;
- ``boxplot_<metric>.png``: one box plot per metric, boxes grouped by domain / structure.

Matching rules: a case in the prediction folder without a reference is an error; a reference case
without a prediction is an error unless ``allow_missing`` (then it is skipped, i.e. not evaluated,
and listed in summary.md/json: the usual situation when evaluating one fold's validation
predictions against the full labelsTr). Reference and prediction must have the same geometry
(size, spacing, origin, direction).

Speed: cases run in parallel (``num_processes`` spawn workers); surface distances use distance
transforms on the bounding box of ``ref | pred`` (no pairwise loops). Measured on this project's
shared 2-core machine (load average about 6 from other jobs): 30 real cases (11 lumbar, 9 sacroiliac,
10 pelvis MR label maps, 25-50 slices of 100-175^2 voxels, 1-5 structures each) took 8-12 s end to
end including the seven box plots (about 0.15 s per lumbar case, 0.7 s per pelvis case, 0.5-1 s
per plot).
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
import SimpleITK as sitk

from nnunetv2_mtmd.domains import DomainSpec
from nnunetv2_mtmd.errors import InputDataError
from nnunetv2_mtmd.evaluation.metrics import (
    METRIC_LABELS,
    METRICS,
    binary_metrics,
    nanmean_std,
    present_labels,
    slice_dice,
)
from nnunetv2_mtmd.evaluation.postprocess import parallel_map
from nnunetv2_mtmd.io import atomic_output_dir, describe_geometry, label_array, read_image, same_geometry

logger = logging.getLogger(__name__)

METRICS_COLUMNS: tuple[str, ...] = ("case", "domain", "structure", *METRICS)
SLICES_COLUMNS: tuple[str, ...] = ("case", "domain", "structure", "slice", "dice")

CONVENTIONS = (
    "Empty masks: both empty -> Dice 1, sensitivity 1, specificity 1, distances 0 mm, RAVD 0 %. "
    "Reference empty, prediction not -> Dice 0, sensitivity, distances and RAVD undefined. "
    "Prediction empty, reference not -> Dice 0, sensitivity 0, RAVD 100 %, distances undefined. "
    "Undefined values are NaN in metrics.csv and left out of the means; their count is reported. "
    "Surfaces: mask XOR erosion (face connectivity); distances from Euclidean distance transforms with "
    "the voxel spacing. MSSD = symmetric Hausdorff distance; HD95 = 95th percentile of the union of both "
    "directed surface-distance sets (medpy convention); ASSD = mean of that union; "
    "RAVD = 100 |V_pred - V_ref| / V_ref. Std = population standard deviation (ddof 0)."
)


def _spacing_zyx(img: sitk.Image) -> tuple[float, ...]:
    return tuple(float(s) for s in img.GetSpacing()[::-1])


def evaluate_case(task: tuple[str, Path, Path, DomainSpec, int]) -> dict[str, Any]:
    """Evaluate one case. ``task = (case_id, ref_path, pred_path, spec, slice_axis)``.

    Returns ``{"rows": [...], "slices": [...], "stray_pred": {...}, "stray_ref": {...}}`` where
    ``stray_*`` map each label present in the file that does not belong to the case's domain to its
    number of voxels."""
    case, ref_path, pred_path, spec, slice_axis = task
    domain = spec.domain_of_case(case)
    ref_img, pred_img = read_image(ref_path), read_image(pred_path)
    if not same_geometry(ref_img, pred_img):
        raise InputDataError(
            f"Case '{case}': the prediction {pred_path} ({describe_geometry(pred_img)}) does not have the "
            f"geometry of the reference {ref_path} ({describe_geometry(ref_img)}). "
            "Predict on the reference's images, or resample the prediction onto the reference "
            "with nearest-neighbour interpolation."
        )
    ref, pred = label_array(ref_img, ref_path), label_array(pred_img, pred_path)
    if not 0 <= slice_axis < ref.ndim:
        raise InputDataError(f"slice axis {slice_axis} does not exist for case '{case}' ({ref.ndim}D image).")
    spacing = _spacing_zyx(ref_img)
    own = set(domain.unified_ids) | {0}
    rows, slices = [], []
    for lab in domain.labels:
        r, p = ref == lab.unified_id, pred == lab.unified_id
        m = binary_metrics(r, p, spacing)
        rows.append({"case": case, "domain": domain.name, "structure": lab.name, **m})
        idx, dice = slice_dice(r, p, axis=slice_axis)
        slices += [
            {"case": case, "domain": domain.name, "structure": lab.name, "slice": int(i), "dice": float(d)}
            for i, d in zip(idx, dice)
        ]
    return {
        "rows": rows,
        "slices": slices,
        "stray_pred": _voxels_of(pred, present_labels(pred) - own),
        "stray_ref": _voxels_of(ref, present_labels(ref) - own),
    }


def _voxel_counts_text(counts: dict[int, int]) -> str:
    """``{3: 5, 4: 1}`` -> ``"label 3: 5 voxels, label 4: 1 voxel"``."""
    return ", ".join(f"label {lab}: {n} voxel{'s' * (n != 1)}" for lab, n in counts.items())


def _voxels_of(arr: np.ndarray, labels: set[int]) -> dict[int, int]:
    return {lab: int(np.count_nonzero(arr == lab)) for lab in sorted(labels)}


def match_cases(
    ref_dir: Path, pred_dir: Path, file_ending: str, allow_missing: bool = False
) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """Pair ``<case><file_ending>`` files of both folders. Returns ``([(case, ref, pred), ...], missing)``
    where ``missing`` are reference cases without prediction (only with ``allow_missing``)."""
    ref_dir, pred_dir = Path(ref_dir), Path(pred_dir)
    for what, d in (("Reference", ref_dir), ("Prediction", pred_dir)):
        if not d.is_dir():
            raise InputDataError(f"{what} folder {d} does not exist.")

    def listing(d: Path) -> dict[str, Path]:
        return {
            f.name[: -len(file_ending)]: f
            for f in sorted(d.iterdir())
            if f.is_file() and f.name.endswith(file_ending) and not f.name.startswith(".")
        }

    refs, preds = listing(ref_dir), listing(pred_dir)
    if not preds:
        raise InputDataError(f"No '*{file_ending}' files in the prediction folder {pred_dir}.")
    extra = sorted(set(preds) - set(refs))
    if extra:
        raise InputDataError(
            f"{len(extra)} predicted cases have no reference in {ref_dir}: {', '.join(extra[:10])}"
            + (" ..." if len(extra) > 10 else "")
            + ". Check -ref/-pred and the dataset's file ending "
            f"('{file_ending}')."
        )
    missing = sorted(set(refs) - set(preds))
    if missing and not allow_missing:
        raise InputDataError(
            f"{len(missing)} reference cases have no prediction in {pred_dir}: {', '.join(missing[:10])}"
            + (" ..." if len(missing) > 10 else "")
            + ". Pass --allow-missing to evaluate only the predicted "
            "cases (e.g. one fold's validation set)."
        )
    return [(c, refs[c], preds[c]) for c in sorted(preds)], missing


# -------------------------------------------------------------------------------------- summary
def summarize(rows: Sequence[Mapping[str, Any]], spec: DomainSpec) -> dict[str, Any]:
    """Per domain and structure, and per domain over all its structures, and over everything:
    :func:`~nnunetv2_mtmd.evaluation.metrics.nanmean_std` of every metric."""
    out: dict[str, Any] = {"domains": {}}
    for d in spec.domains:
        drows = [r for r in rows if r["domain"] == d.name]
        if not drows:
            continue
        entry = {"n_cases": len({r["case"] for r in drows}), "structures": {}}
        for lab in d.labels:
            srows = [r for r in drows if r["structure"] == lab.name]
            entry["structures"][lab.name] = {m: nanmean_std([r[m] for r in srows]) for m in METRICS}
        entry["mean"] = {m: nanmean_std([r[m] for r in drows]) for m in METRICS}
        out["domains"][d.name] = entry
    out["all"] = {
        "n_cases": len({r["case"] for r in rows}),
        "mean": {m: nanmean_std([r[m] for r in rows]) for m in METRICS},
    }
    return out


_DECIMALS = {
    "dice": 3,
    "sensitivity": 3,
    "specificity": 4,
    "mssd_mm": 2,
    "hd95_mm": 2,
    "assd_mm": 2,
    "ravd_pct": 2,
}


def format_stat(stat: Mapping[str, Any], metric: str) -> str:
    """``"0.912 ± 0.021"``, with ``" (k undef.)"`` appended when k values were undefined."""
    k = _DECIMALS.get(metric, 3)
    if stat["n"] == 0:
        text = "n/a"
    else:
        text = f"{stat['mean']:.{k}f} ± {stat['std']:.{k}f}"
    if stat["n_undefined"]:
        text += f" ({stat['n_undefined']} undef.)"
    return text


def summary_markdown(summary: Mapping[str, Any], header: Sequence[str] = ()) -> str:
    """summary.md: the paper's Table 2 layout (rows domain / structure, columns metrics)."""
    cols = ["Domain", "Structure"] + [METRIC_LABELS[m] for m in METRICS]
    lines = [
        "# Evaluation summary",
        "",
        *header,
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for dname, entry in summary["domains"].items():
        for sname, stats in entry["structures"].items():
            lines.append(
                f"| {dname} | {sname} | " + " | ".join(format_stat(stats[m], m) for m in METRICS) + " |"
            )
        lines.append(
            f"| **{dname}** | **mean** | "
            + " | ".join(format_stat(entry["mean"][m], m) for m in METRICS)
            + " |"
        )
    lines.append(
        "| **all domains** | **mean** | "
        + " | ".join(format_stat(summary["all"]["mean"][m], m) for m in METRICS)
        + " |"
    )
    lines += [
        "",
        "Values are mean ± std over cases (domain and all-domain rows: over all case-structure pairs). "
        '"k undef.": the metric is undefined for k of them (see below); means use the defined values only.',
        "",
        "Conventions: " + CONVENTIONS,
        "",
    ]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6f}"
    return str(v)


def write_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow([_fmt(r[c]) for c in columns])


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if math.isnan(obj) else obj
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _labels_of_other_domains(
    pairs: Sequence[tuple[str, Path, Path]], results: Sequence[Mapping[str, Any]]
) -> dict[str, dict[str, dict[int, int]]]:
    """Labels of another domain in the prediction and in the reference: ``{"prediction": {case: {label:
    voxels}}, "reference": {...}}`` (cases without any left out), with a warning for each non-empty side.

    A shared output head can predict another domain's structure; such voxels are not scored, so the
    summary keeps them (case -> label -> voxels) for whoever compares heads."""
    other_domains: dict[str, dict[str, dict[int, int]]] = {"prediction": {}, "reference": {}}
    for key, what in (("stray_pred", "prediction"), ("stray_ref", "reference")):
        bad = {c: res[key] for (c, _, _), res in zip(pairs, results) if res[key]}
        other_domains[what] = bad
        if bad:
            first = next(iter(bad))
            logger.warning(
                "%d %s files contain labels of another domain (not evaluated), e.g. %s: %s",
                len(bad),
                what,
                first,
                _voxel_counts_text(bad[first]),
            )
    return other_domains


def evaluate_folders(
    ref_dir: Path,
    pred_dir: Path,
    spec: DomainSpec,
    file_ending: str,
    out_dir: Path,
    num_processes: int = 2,
    allow_missing: bool = False,
    slice_axis: int = 0,
    overwrite: bool = False,
    plots: bool = True,
) -> dict[str, Any]:
    """Evaluate every predicted case and write the outputs listed in the module docstring.

    Returns the summary dict (as written to summary.json, but with NaN instead of null)."""
    pairs, missing = match_cases(ref_dir, pred_dir, file_ending, allow_missing)
    for case, _, _ in pairs:
        spec.domain_of_case(case)  # fail early on unknown prefixes
    tasks = [(c, r, p, spec, slice_axis) for c, r, p in pairs]
    results = parallel_map(evaluate_case, tasks, num_processes, "evaluating")
    rows = [row for res in results for row in res["rows"]]
    slices = [s for res in results for s in res["slices"]]
    other_domains = _labels_of_other_domains(pairs, results)
    summary = summarize(rows, spec)
    summary.update(
        {
            "reference": str(ref_dir),
            "prediction": str(pred_dir),
            "n_cases": len(pairs),
            "missing_predictions": missing,
            "labels_of_other_domains": other_domains,
            "slice_axis": slice_axis,
            "conventions": CONVENTIONS,
        }
    )
    _write_evaluation(Path(out_dir), rows, slices, summary, spec, overwrite, plots)
    return summary


def _typed(row: Mapping[str, str], float_columns: Sequence[str], int_columns: Sequence[str] = ()) -> dict[str, Any]:
    out: dict[str, Any] = dict(row)
    for c in float_columns:
        out[c] = float(row[c])  # "nan" -> NaN
    for c in int_columns:
        out[c] = int(row[c])
    return out


def pool_evaluations(
    folders: Sequence[Path],
    out_dir: Path,
    spec: DomainSpec,
    overwrite: bool = False,
    plots: bool = True,
) -> dict[str, Any]:
    """One evaluation of the cases of several evaluations of disjoint case sets (output folders of
    :func:`evaluate_folders`, e.g. one per model and fold), written like :func:`evaluate_folders` does.

    The rows of their ``metrics.csv`` and ``slices.csv`` are concatenated and summarised again, so the
    result is :func:`evaluate_folders` of the union of their predictions (up to the 6 decimals of the
    CSV files) without reading one image: evaluations kept from models whose predictions are gone
    still pool. A case evaluated in two folders is an error (the case sets must not overlap).
    Returns the summary dict (NaN for undefined values)."""
    if not folders:
        raise InputDataError("pool_evaluations needs at least one evaluation folder.")
    rows: list[dict[str, Any]] = []
    slices: list[dict[str, Any]] = []
    seen: dict[str, Path] = {}
    missing: set[str] = set()
    other: dict[str, dict[str, Any]] = {"prediction": {}, "reference": {}}
    refs, axes = [], set()
    for folder in map(Path, folders):
        for name in ("metrics.csv", "slices.csv", "summary.json"):
            if not (folder / name).is_file():
                raise InputDataError(f"{folder / name} does not exist: {folder} is no output folder of "
                                     "nnUNetv2_mtmd_evaluate; evaluate it first.")
        frows = [_typed(r, METRICS) for r in read_csv(folder / "metrics.csv")]
        for case in sorted({r["case"] for r in frows}):
            if case in seen:
                raise InputDataError(f"Case '{case}' is evaluated in both {seen[case]} and {folder}: pooled "
                                     "evaluations must cover disjoint cases (e.g. the folds of one split).")
            seen[case] = folder
        rows += frows
        slices += [_typed(r, ("dice",), ("slice",)) for r in read_csv(folder / "slices.csv")]
        summ = json.loads((folder / "summary.json").read_text())
        missing |= set(summ.get("missing_predictions") or [])
        for what in other:
            other[what].update((summ.get("labels_of_other_domains") or {}).get(what) or {})
        refs.append(summ.get("reference"))
        axes.add(summ.get("slice_axis", 0))
    if len(axes) > 1:
        raise InputDataError(f"The evaluations to pool used different slice axes {sorted(axes)}: "
                             f"{', '.join(map(str, folders))}.")
    summary = summarize(rows, spec)
    summary.update(
        {
            "reference": refs[0] if len(set(refs)) == 1 else refs,
            "prediction": "pooled from " + ", ".join(map(str, folders)),
            "pooled_from": [str(f) for f in folders],
            "n_cases": len(seen),
            # a case held out of one fold is evaluated in another: missing only where no folder has it
            "missing_predictions": sorted(missing - set(seen)),
            "labels_of_other_domains": other,
            "slice_axis": axes.pop(),
            "conventions": CONVENTIONS,
        }
    )
    _write_evaluation(Path(out_dir), rows, slices, summary, spec, overwrite, plots)
    return summary


def _write_evaluation(out_dir: Path, rows: Sequence[Mapping[str, Any]], slices: Sequence[Mapping[str, Any]],
                      summary: Mapping[str, Any], spec: DomainSpec, overwrite: bool, plots: bool) -> None:
    """metrics.csv, slices.csv, summary.md, summary.json (and the box plots) into ``out_dir``, all or nothing."""
    missing, other_domains = summary["missing_predictions"], summary["labels_of_other_domains"]
    header = [
        f"Reference: `{summary['reference']}`  ",
        f"Prediction: `{summary['prediction']}`  ",
        "Cases: "
        + ", ".join(f"{d} {e['n_cases']}" for d, e in summary["domains"].items())
        + f" (total {summary['n_cases']})",
    ]
    if missing:
        header.append(
            f"  \nNot evaluated (no prediction, --allow-missing): {len(missing)} cases: " + ", ".join(missing)
        )
    for what, bad in other_domains.items():
        if bad:
            header.append(
                f"  \nLabels of another domain in the {what} (not evaluated), in {len(bad)} of "
                f"{summary['n_cases']} cases: "
                + "; ".join(
                    f"{c} ({_voxel_counts_text({int(k): int(v) for k, v in labs.items()})})"
                    for c, labs in list(bad.items())[:10]
                )
                + (" ..." if len(bad) > 10 else "")
            )
    groups = [(d.name, lab.name) for d in spec.domains if d.name in summary["domains"] for lab in d.labels]
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        write_csv(rows, METRICS_COLUMNS, tmp / "metrics.csv")
        write_csv(slices, SLICES_COLUMNS, tmp / "slices.csv")
        (tmp / "summary.md").write_text(summary_markdown(summary, header), encoding="utf-8")
        (tmp / "summary.json").write_text(json.dumps(_json_safe(summary), indent=2))
        if plots:
            from nnunetv2_mtmd.evaluation.plots import metric_boxplots  # matplotlib: parent process only

            metric_boxplots(rows, METRICS, groups, tmp)
