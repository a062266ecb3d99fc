"""The report's tables and paragraphs, each from one kind of file the study's commands wrote
(evaluate's summary.json, compare.json, metrics.csv, similarity.csv); used by
:mod:`~nnunetv2_mtmd.apps.study.report`."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nnunetv2_mtmd.apps.study.constants import INDIVIDUAL, SCHEME_LABELS
from nnunetv2_mtmd.domains import DomainSpec


def domain_mean_dice(summary: Mapping[str, Any]) -> float | None:
    """Mean over domains of each domain's mean Dice (summary.json of nnUNetv2_mtmd_evaluate)."""
    vals = [e["mean"]["dice"]["mean"] for e in summary.get("domains", {}).values()
            if e["mean"]["dice"].get("mean") is not None]
    return float(np.mean(vals)) if vals else None


def _stat_cell(stat: Mapping[str, Any] | None, metric: str) -> str:
    from nnunetv2_mtmd.evaluation.evaluate import format_stat

    if stat is None:
        return "n/a"
    return format_stat(stat, metric)


def metric_table(summaries: Mapping[str, Mapping[str, Any]], metric: str, spec: DomainSpec) -> str:
    """Markdown table: rows domain / structure (and domain mean), columns schemes, cells mean ± std."""
    schemes = list(summaries)
    lines = ["| Domain | Structure | " + " | ".join(SCHEME_LABELS[s] for s in schemes) + " |",
             "|---|---|" + "---|" * len(schemes)]
    for d in spec.domains:
        rows = [(lab.name, lambda e, n=lab.name: e["structures"].get(n, {}).get(metric)) for lab in d.labels]
        rows.append(("**mean**", lambda e: e["mean"].get(metric)))
        for name, get in rows:
            cells = []
            for s in schemes:
                e = summaries[s].get("domains", {}).get(d.name)
                cells.append(_stat_cell(get(e) if e else None, metric))
            lines.append(f"| {d.name} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def other_domain_text(summaries: Mapping[str, Mapping[str, Any]], spec: DomainSpec) -> str:
    """One paragraph: per scheme, the held-out cases whose prediction holds labels of another domain
    (``labels_of_other_domains`` of evaluate's summary.json; such voxels are not scored)."""
    names = {lab.unified_id: f"{d.name}_{lab.name}" for d in spec.domains for lab in d.labels}
    parts, clean, unknown = [], [], []
    for s, summ in summaries.items():
        other = summ.get("labels_of_other_domains")
        if other is None:
            unknown.append(SCHEME_LABELS.get(s, s))
            continue
        bad = other.get("prediction", {})
        if not bad:
            clean.append(SCHEME_LABELS.get(s, s))
            continue
        cases = "; ".join(
            f"{c}: " + ", ".join(f"{names.get(int(lab), lab)} {n} voxel{'s' * (n != 1)}" for lab, n in labs.items())
            for c, labs in list(bad.items())[:5]
        ) + (" ..." if len(bad) > 5 else "")
        parts.append(f"{SCHEME_LABELS.get(s, s)} in {len(bad)} of {summ.get('n_cases', '?')} cases ({cases})")
    text = ("Predictions that contain labels of another domain (not scored above; post-processing sets them "
            "to background): ")
    body = list(parts)
    if clean:
        body.append("none" if not (parts or unknown) else "none: " + ", ".join(clean))
    if unknown:
        body.append("not recorded by the evaluation of " + ", ".join(unknown))
    return text + "; ".join(body) + "."


def ks_table(compare_json: Mapping[str, Any], domains: Sequence[str] | None = None) -> str:
    """Markdown table of nnUNetv2_mtmd_compare's compare.json: per scheme and group, mean slice Dice
    [P16, P84] and the KS p-value against the reference scheme. Groups in the order of ``domains``
    (the other tables' order), then the rest as in the file."""
    rows = compare_json["rows"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    found = list(dict.fromkeys(r["group"] for r in rows))
    groups = [g for g in (domains or []) if g in found] + [g for g in found if g not in (domains or [])]
    idx = {(r["method"], r["group"]): r for r in rows}
    head = ["Scheme"] + [f"{g}: slice Dice [P16, P84] / KS p" for g in groups]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        cells = [SCHEME_LABELS.get(m, m)]
        for g in groups:
            r = idx.get((m, g))
            if r is None or not r["n_slices"]:
                cells.append("n/a")
                continue
            cell = f"{r['mean']:.3f} [{r['p16']:.3f}, {r['p84']:.3f}]"
            if m == compare_json["reference_method"]:
                cell += " / (reference)"
            elif r.get("ks_pvalue") is not None:
                p = r["ks_pvalue"]
                cell += f" / D={r['ks_statistic']:.3f}, p={p:.2e}" if p < 1e-3 else \
                    f" / D={r['ks_statistic']:.3f}, p={p:.3f}"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(scores: Mapping[str, Mapping[str, tuple[str, float]]], domains: Sequence[str]) -> str:
    """Markdown table: per scheme (after the first, the reference) and domain (and pooled), the mean ±
    std of the per-case Dice difference to the reference, better / worse case counts and the Wilcoxon
    signed-rank p-value (:mod:`nnunetv2_mtmd.evaluation.paired`)."""
    from nnunetv2_mtmd.evaluation import paired

    return paired.paired_table(paired.paired_rows(scores), [*domains, paired.POOLED],
                               label=lambda s: SCHEME_LABELS.get(s, s), first_column="Scheme")


def fold_table(scores: Mapping[str, Mapping[str, tuple[str, float]]], folds: Mapping[int, Sequence[str]],
               domains: Sequence[str]) -> str:
    """Markdown table: per scheme, the mean per-case Dice of every domain in every fold."""
    from nnunetv2_mtmd.evaluation.paired import fold_means

    head = ["Scheme"] + [f"{d} fold {f}" for d in domains for f in folds]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s, sc in scores.items():
        fm = fold_means(sc, folds)
        cells = [SCHEME_LABELS.get(s, s)]
        for d in domains:
            for f in folds:
                v = fm.get(d, {}).get(f)
                cells.append("n/a" if v is None or not math.isfinite(v) else f"{v:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_references(schemes: Sequence[str]) -> list[tuple[str, list[str]]]:
    """The paired comparisons of the report, ``(reference, schemes compared with it)``: every scheme
    with the first (Individual when it ran); and, when DSL ran, every other multi-domain scheme with
    DSL (what MSC / SSC / MJAP add, what sharing the norm and head changes, and the DSL replicate,
    whose row is the retraining noise), tested on the same cases too."""
    out = [(schemes[0], list(schemes[1:]))] if len(schemes) > 1 else []
    multi_domain = [s for s in schemes if s not in (INDIVIDUAL, "DSL")]
    if "DSL" in schemes and schemes[0] != "DSL" and multi_domain:
        out.append(("DSL", multi_domain))
    return out


def replicate_table(reference: Mapping[str, tuple[str, float]], replicate: Mapping[str, tuple[str, float]],
                    fold_cases: Mapping[int, Sequence[str]], domains: Sequence[str]) -> tuple[str, dict[str, float]]:
    """The replicate's spread: per fold (and all folds pooled) and domain (and pooled), the mean ± std of
    the per-case Dice difference ``replicate - reference`` and the largest ``|difference|`` of a case.

    Returns the markdown table and ``{"case_std": std of the differences of all cases, "fold_mean":
    largest |mean difference| of a domain in one fold, "case_max": largest |difference| of a case}``
    (NaN when nothing is paired)."""
    from nnunetv2_mtmd.evaluation.paired import paired_stats

    groups = [*domains, "pooled"]
    head = ["Folds"] + [f"{g}: mean ΔDice ± std (largest abs. ΔDice, n)" for g in groups]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    spread = {"case_std": math.nan, "fold_mean": math.nan, "case_max": math.nan}
    fold_means: list[float] = []
    for name, cases in [*((f"fold {f}", c) for f, c in fold_cases.items()),
                        ("all folds", [c for cs in fold_cases.values() for c in cs])]:
        cells = [name]
        for g in groups:
            sel = [c for c in cases if c in reference and c in replicate and (g == "pooled" or reference[c][0] == g)]
            a, b = [reference[c][1] for c in sel], [replicate[c][1] for c in sel]
            r = paired_stats(a, b)
            d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
            d = d[np.isfinite(d)]
            if not r["n"]:
                cells.append("n/a")
                continue
            cells.append(f"{r['mean_diff']:+.3f} ± {r['std_diff']:.3f} ({float(np.abs(d).max()):.3f}, {r['n']})")
            if name != "all folds" and g != "pooled":
                fold_means.append(abs(float(r["mean_diff"])))
            if name == "all folds" and g == "pooled":
                spread.update(case_std=float(r["std_diff"]), case_max=float(np.abs(d).max()))
        lines.append("| " + " | ".join(cells) + " |")
    if fold_means:
        spread["fold_mean"] = max(fold_means)
    return "\n".join(lines), spread


def _read_similarity(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def embedding_table(sims: Mapping[str, Sequence[Mapping[str, str]]], kind: str) -> str:
    """Markdown table of the ``kind`` (``"inter"`` or ``"intra"``) -domain cosine similarity: rows =
    stages (of the first scheme), columns = schemes, cells ``mean ± std`` (similarity.csv rows of
    ``nnUNetv2_mtmd_embeddings``)."""
    if kind not in ("inter", "intra"):
        raise ValueError(f"kind must be 'inter' or 'intra', not {kind!r}")
    schemes = list(sims)
    by_stage = {s: {r["stage_name"]: r for r in rows} for s, rows in sims.items()}
    stages = [(r["stage_name"], r["channels"]) for r in sims[schemes[0]]] if schemes else []
    head = ["Stage", "Channels"] + [f"{SCHEME_LABELS.get(s, s)}: {kind}-domain" for s in schemes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, ch in stages:
        cells = []
        for s in schemes:
            r = by_stage[s].get(name)
            cells.append(_pm(r[f"{kind}_mean"], r[f"{kind}_std"]) if r else "n/a")
        lines.append(f"| {name} | {ch} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pm(mean: str, std: str) -> str:
    try:
        return f"{float(mean):.3f} ± {float(std):.3f}"
    except ValueError:
        return "n/a"
