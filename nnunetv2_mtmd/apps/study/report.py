"""``results.md``: tables built only from the files the study's commands wrote, and the kept discussion."""

from __future__ import annotations

import csv
import math
import os
import re
import shlex
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nnunetv2_mtmd.apps.study.budget import budget_rows
from nnunetv2_mtmd.apps.study.constants import (
    BUDGET_ENV,
    EVAL_VARIANTS,
    INDIVIDUAL,
    LEARNED_DICE,
    N_SPLITS,
    PLANS_NAME,
    REPORT_METRICS,
    SCHEME_LABELS,
    SPLIT_SEED,
)
from nnunetv2_mtmd.apps.study.progress import autoencoder_dice, epoch_times, fold_folder, training_hours
from nnunetv2_mtmd.apps.study.state import _now, hardware_info
from nnunetv2_mtmd.domains import DomainSpec
from nnunetv2_mtmd.io import load_json

if TYPE_CHECKING:
    from nnunetv2_mtmd.apps.study.pipeline import Study


# ----------------------------------------------------------------------------------------- report
def publish_tsne(embeddings_dir: Path, scheme: str, stages: Sequence[str], pics_dir: Path) -> dict[str, Path]:
    """Copy the t-SNE pictures ``tsne_<stage>.png`` of ``embeddings_dir`` into the report's picture
    folder as ``tsne_<scheme>_<stage>.png``; returns stage -> copied file for the stages that have one.

    Every other ``tsne_*.png`` of ``pics_dir`` is removed: the best scheme can change when a fold is
    added, and a picture of the previous best would stay in the repository, linked from nowhere."""
    pics_dir.mkdir(parents=True, exist_ok=True)
    copied: dict[str, Path] = {}
    for stage in stages:
        src = embeddings_dir / f"tsne_{stage}.png"
        if src.is_file():
            copied[stage] = pics_dir / f"tsne_{scheme}_{stage}.png"
            shutil.copyfile(src, copied[stage])
    for old in pics_dir.glob("tsne_*.png"):
        if old not in copied.values():
            old.unlink()
    return copied


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
    with the first (Individual when it ran); and, when DSL ran, its regularized variants (``DSL_*``)
    with DSL, so that what MSC / SSC / MJAP add is tested on the same cases too."""
    out = [(schemes[0], list(schemes[1:]))] if len(schemes) > 1 else []
    regularized = [s for s in schemes if s.startswith("DSL_")]
    if "DSL" in schemes and schemes[0] != "DSL" and regularized:
        out.append(("DSL", regularized))
    return out


def case_level_text(study: Study, variant: str, schemes: Sequence[str], folds: Sequence[int],
                    pics_dir: Path) -> list[str]:
    """The report's per-case sections of one evaluation variant: Dice per fold, the paired comparison
    with the first scheme, and a PNG of every case's Dice per scheme."""
    from nnunetv2_mtmd.evaluation.paired import load_case_scores, paired_plot

    ev = study.dir / "evaluation"
    scores = {s: load_case_scores(ev / s / variant, "dice") for s in schemes}
    domains = [d.name for d in study.spec.domains]
    splits = study.load_splits(study.merged)
    fold_cases = {f: [c for c in splits[f]["val"] if c in scores[schemes[0]]] for f in folds}
    L = ["### Dice per fold", "",
         "Mean over the held-out cases of one fold (each case: mean Dice over its structures); the spread "
         "between folds is part of the uncertainty of every comparison.", "",
         fold_table(scores, fold_cases, domains), ""]
    for ref, others in paired_references(schemes):
        what = ("" if ref == schemes[0] else
                " (what the regularization adds to domain-specific layers: the ablation of the paper's Table 3)")
        L += [f"### Per-case paired comparison with {SCHEME_LABELS.get(ref, ref)}{what}", "",
              paired_table({ref: scores[ref], **{s: scores[s] for s in others}}, domains), ""]
    if len(schemes) > 1:
        L += ["Every scheme predicts the same held-out cases, so they are compared case by case: ΔDice = mean ± "
              "std over the cases of (case Dice of the scheme − case Dice of the reference), case Dice = mean over "
              "the case's structures; better/worse: cases where the scheme is higher/lower; p: two-sided Wilcoxon "
              "signed-rank test of the differences (scipy.stats.wilcoxon, exact for small samples; "
              "nnunetv2_mtmd/evaluation/paired.py). One sample per case, unlike the slice-level KS test above. "
              "No correction for multiple comparisons.", ""]
        pics_dir.mkdir(parents=True, exist_ok=True)
        png = pics_dir / f"case_dice_{variant}.png"
        paired_plot({SCHEME_LABELS.get(s, s): sc for s, sc in scores.items()}, png, domains,
                    title=f"Per-case Dice {EVAL_VARIANTS[variant]} (lines join the same case)")
        rel = os.path.relpath(png, study.report_path.parent)
        L += [f"![Per-case Dice {EVAL_VARIANTS[variant]}]({rel})", ""]
    return L


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


DISCUSSION_HEADING = "## Discussion"
DISCUSSION_PLACEHOLDER = "**To be written by a human after reading the numbers.**"


def _discussion_span(text: str) -> tuple[int, int] | None:
    """Start and end offsets of the ``## Discussion`` section of a report (up to the next ``## ``
    heading or the end), or None."""
    lines = text.splitlines(keepends=True)
    start = None
    pos = 0
    for line in lines:
        if start is None and line.rstrip() == DISCUSSION_HEADING:
            start = pos
        elif start is not None and line.startswith("## "):
            return start, pos
        pos += len(line)
    return None if start is None else (start, len(text))


def keep_discussion(new_text: str, old_text: str) -> str:
    """``new_text`` with its placeholder discussion replaced by the discussion of ``old_text``, when
    a human has written one there (the section no longer holds :data:`DISCUSSION_PLACEHOLDER`).

    The report is regenerated whenever a fold is evaluated; this keeps the written discussion instead
    of overwriting it. The kept text is not checked against the new numbers: reread it when they
    change."""
    old_span, new_span = _discussion_span(old_text), _discussion_span(new_text)
    if old_span is None or new_span is None:
        return new_text
    old_section = old_text[old_span[0]:old_span[1]]
    if DISCUSSION_PLACEHOLDER in old_section:
        return new_text
    if not old_section.endswith("\n"):
        old_section += "\n"
    return new_text[:new_span[0]] + old_section + new_text[new_span[1]:]


_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def unsourced_numbers(report_text: str) -> list[str]:
    """Numbers of the ``## Discussion`` section that appear nowhere else in the report, in order.

    The report's rule is that it holds no number the study did not produce; a discussion should only
    quote the tables (as printed there: ``0.861``, not ``0.86``). Signs are ignored, so ``-0.013``
    matches the table's ``−0.013``; an integer such as a fold or case count matches any occurrence.
    Years and the like therefore pass whenever they appear elsewhere; this is a guard against typos
    and stale numbers, not a proof."""
    span = _discussion_span(report_text)
    if span is None:
        return []
    discussion = report_text[span[0]:span[1]]
    rest = set(_NUMBER.findall(report_text[:span[0]] + report_text[span[1]:]))
    return [n for n in dict.fromkeys(_NUMBER.findall(discussion)) if n not in rest]


STALE_PREFIX = "> **Out of date?**"


def mark_stale_discussion(report_text: str, limit: int = 12) -> tuple[str, list[str]]:
    """The report with a warning line put first in its written ``## Discussion`` when that quotes
    numbers found nowhere else in the report (:func:`unsourced_numbers`), and those numbers.

    A kept discussion is not rewritten when new folds change the tables (:func:`keep_discussion`); the
    warning tells the reader so, in the file and not only in the study's log. A warning line of an
    earlier regeneration is removed first, so warnings do not pile up and one disappears once the
    text is rewritten."""
    span = _discussion_span(report_text)
    if span is None:
        return report_text, []
    head, section, tail = report_text[:span[0]], report_text[span[0]:span[1]], report_text[span[1]:]
    lines: list[str] = []
    dropped = False
    for ln in section.splitlines(keepends=True):
        if ln.startswith(STALE_PREFIX) or (dropped and not ln.strip()):
            dropped = ln.startswith(STALE_PREFIX)
            continue
        dropped = False
        lines.append(ln)
    text = head + "".join(lines) + tail
    if DISCUSSION_PLACEHOLDER in section:
        return text, []
    stray = unsourced_numbers(text)
    if not stray:
        return text, []
    shown = ", ".join(stray[:limit]) + (f" and {len(stray) - limit} more" if len(stray) > limit else "")
    warning = (f"{STALE_PREFIX} This discussion quotes {len(stray)} number(s) that appear nowhere else in the "
               f"report ({shown}): it was probably written for earlier tables. Reread it against the tables "
               "above.\n\n")
    first = lines[0] if lines else DISCUSSION_HEADING + "\n"
    rest = lines[1:]
    if rest and not rest[0].strip():
        first, rest = first + rest[0], rest[1:]
    elif not first.endswith("\n\n"):
        first = first.rstrip("\n") + "\n\n"
    return head + first + warning + "".join(rest) + tail, stray


def components_text(ev_dir: Path, folds: Sequence[int]) -> str:
    """What the post-processing kept per structure, from ``components_foldX.json`` of each fold."""
    parts: dict[str, list[str]] = {}
    for fold in folds:
        f = ev_dir / f"components_fold{fold}.json"
        if not f.is_file():
            return ("Post-processing: largest component of every structure + 5x5x5 closing "
                    "(`nnUNetv2_mtmd_postprocess`).")
        several = ", ".join(f"{name} {k}" for name, k in load_json(f).items() if k > 1) or "none"
        parts.setdefault(several, []).append(str(fold))
    by_fold = "; ".join(f"fold{'s' if len(fs) > 1 else ''} {', '.join(fs)}: {txt}" for txt, fs in parts.items())
    return ("Post-processing (`nnUNetv2_mtmd_postprocess`): per structure, the largest 3D component, or the k "
            "largest for a structure made of k separate parts (both femurs under one label), then a 5x5x5 closing. "
            "k is counted in the training labels of each fold only (components of at least 10 % of the largest, "
            "lower median over the cases; files `components_foldX.json`). Structures with k > 1 "
            f"({by_fold}); every other structure keeps one component, as in the paper.")


def reference_cut_text(path: Path, limit: int = 10) -> str:
    """One paragraph from ``reference_parts.json``: the held-out reference structures that the
    post-processing would cut, most voxels removed first ("" when the file is missing)."""
    if not Path(path).is_file():
        return ""
    data = load_json(path)
    cut = sorted(data["cut"], key=lambda r: -r["voxels_removed"])
    text = ("Held-out reference structures that this post-processing would cut even in a perfect prediction "
            "(more 3D components, specks included, than it keeps; `reference_parts.json`): ")
    if not cut:
        return text + f"none of {data['structures']}."
    items = "; ".join(
        f"{r['case']} {r['name']} ({r['components']} components, {r['kept']} kept, {r['voxels_removed']} of "
        f"{r['voxels']} voxels outside them)" for r in cut[:limit])
    return text + f"{len(cut)} of {data['structures']}: {items}" + (" ..." if len(cut) > limit else ".")


def build_report(study: Study, evaluated: Mapping[str, Any]) -> str:
    """The text of results.md, from the files the pipeline wrote (no number typed by hand)."""
    d = study.dir
    spec = study.spec
    folds = evaluated["folds"]
    schemes = [s for s in evaluated["schemes"] if (d / "evaluation" / s / "raw" / "summary.json").is_file()]
    st = study.state.data
    b = study.budget
    hw = hardware_info()
    pending = [f for f in study.eval_folds if f not in folds]
    pics_dir = study.report_path.parent / study.report_path.stem
    L: list[str] = []
    add = L.append
    add("# Real-data ablation study: multi-task multi-domain schemes vs. stock nnU-Net")
    add("")
    add(f"Generated by `nnUNetv2_mtmd_study` (nnunetv2_mtmd/study/) on {_now()} from the files in `{d}`. "
        "Every number below was computed by the study's commands (evaluation CSV/JSON files, state.json, "
        "nnU-Net's training logs); none was typed by hand.")
    add("")
    add(f"**Folds evaluated: {', '.join(map(str, folds))}** of the {N_SPLITS}-fold domain-stratified split"
        + (f" (folds {', '.join(map(str, pending))} not finished yet: this report is partial)." if pending else "."))
    add("")
    add("## Data")
    add("")
    add("| Domain | Source dataset | Cases | Structures |")
    add("|---|---|---|---|")
    for dom in spec.domains:
        add(f"| {dom.name} | {dom.source_dataset} | {dom.num_cases} | {', '.join(lab.name for lab in dom.labels)} |")
    add("")
    add(f"Merged dataset `{study.merged}` (nnUNetv2_mtmd_merge). Split: domain-stratified {N_SPLITS}-fold "
        f"(seed {SPLIT_SEED}); each Individual model holds out exactly the same cases of its domain.")
    add("")
    add("## Budget (identical for every scheme)")
    add("")
    plans = st["done"].get("plans_variant", {}).get("plans", {})
    add(f"- 2D configuration of every dataset (plans `{PLANS_NAME}`): in-plane spacing {b.spacing_mm} mm, patch "
        f"{b.patch_size} x {b.patch_size}, batch size {b.batch_size} (multi-domain: {b.batch_size // study.k} per "
        f"domain), {b.base_features} features in the first stage doubling to at most {b.max_features}.")
    add("- Spatial augmentation of every scheme: " + (
        "fixed orientation (no mirroring in training or at inference, rotations within +-30 degrees; "
        "otherwise nnU-Net's)." if b.fixed_orientation else
        "nnU-Net's 2D default (mirroring of both axes, rotations within +-180 degrees, test-time mirroring)."))
    for name, p in plans.items():
        add(f"  - {name}: nnU-Net planned spacing {p['planned']['spacing']}, patch {p['planned']['patch_size']}, "
            f"batch {p['planned']['batch_size']}, {p['planned']['n_stages']} stages; study: "
            f"{p['study']['n_stages']} stages, features {p['study']['features_per_stage']} ({p['study']['network']}).")
    add(f"- Schedule: {b.epochs} epochs; Individual {b.iterations} iterations per model, multi-domain "
        f"{study.k} x {b.iterations} = {b.model_iterations(study.k)} (equal exposure: every domain contributes "
        f"{b.samples_per_domain(1)} training samples to every model, and each multi-domain model costs as much as "
        f"the {study.k} Individual models together); {b.val_iterations} (x K) pseudo-Dice batches per epoch; "
        f"MJAP autoencoder phase {b.ae_iterations} iterations; learning rate and everything else as nnU-Net's "
        "defaults.")
    add("")
    add("| Scheme | Trainer | Models per fold | Iterations per model | Iterations per fold | "
        "Samples per domain | Training time (h, evaluated folds) | s per iteration (median) |")
    add("|---|---|---|---|---|---|---|---|")
    for r in budget_rows(b, schemes, study.k):
        s = r["scheme"]
        spi, per_model = [], []
        for f in folds:
            for _, ds, tr in study.runs(f, [s]):
                t = epoch_times(fold_folder(study.results, ds, tr, f))
                per_model.append(t)
                spi += [x / r["iterations_per_epoch"] for x in t]
        spi_txt = f"{float(np.median(spi)):.2f}" if spi else "n/a"
        hours = training_hours(per_model, b.epochs)
        add(f"| {SCHEME_LABELS[s]} | `{r['trainer']}` | {r['models_per_fold']} | {r['iterations_per_model']} | "
            f"{r['iterations_per_fold']} | {r['samples_per_domain']} | "
            f"{'n/a' if hours is None else f'{hours:.2f}'} | {spi_txt} |")
    add("")
    add("Training time: per model, the median of nnU-Net's logged epoch times x the number of epochs (training "
        "iterations and the per-epoch pseudo-Dice batches; not the final validation), summed over the models of "
        "the evaluated folds. The median, not the sum of the logged times: a study that runs across working "
        "sessions is paused (SIGSTOP) and interrupted, which lengthens some epochs and repeats others. Where the "
        "study ran with `--jobs N` (N > 1), N models trained at once on a share of the cores each, so these "
        "times overlap and each is longer than it would be alone. Seconds per iteration: nnU-Net's logged epoch "
        "time divided by the training iterations per epoch, median over the epochs.")
    add("")
    ae = [(s, f, autoencoder_dice(fold_folder(study.results, ds, tr, f)))
          for s in schemes if "MJAP" in s for f in folds for _, ds, tr in study.runs(f, [s])]
    if ae:
        add(f"MJAP label autoencoder after its {b.ae_iterations} iterations (then frozen), validation reconstruction "
            "Dice (mean foreground Dice of the reconstructed labels against the input labels, from nnU-Net's "
            "training log): " + "; ".join(
                f"{SCHEME_LABELS[s]} fold {f} " + ("n/a" if v is None else f"{v:.3f}") for s, f, v in ae) + ".")
        add("")
    add("## Hardware")
    add("")
    add(f"- CPU: {hw.get('cpu_model', 'unknown')}, {hw['nproc']} logical cores (nproc); RAM {hw.get('ram_gib', '?')} "
        f"GiB; load average when this report was written: {hw.get('load_average', '?')}")
    add(f"- {hw['platform']}; Python {hw['python']}, torch {hw.get('torch', '?')}, nnunetv2 {hw.get('nnunetv2', '?')}, "
        f"nnunetv2-mtmd {hw.get('nnunetv2-mtmd', '?')} (code of commit {hw.get('nnunetv2-mtmd commit') or 'unknown'} "
        f"loaded from `{hw.get('nnunetv2-mtmd code', '?')}`, which wrote this report); device: CPU (`-device cpu`)")
    add("")
    add("## Check: have the Individual baselines learned?")
    add("")
    summaries = {v: {s: load_json(d / "evaluation" / s / v / "summary.json") for s in schemes} for v in EVAL_VARIANTS}
    if INDIVIDUAL in schemes:
        ind = summaries["raw"][INDIVIDUAL]["domains"]
        add(f"Domain-mean Dice of the Individual models (held-out cases, no post-processing); threshold "
            f"{LEARNED_DICE}:")
        add("")
        for dom in spec.domains:
            e = ind.get(dom.name)
            val = e["mean"]["dice"]["mean"] if e else None
            verdict = "n/a" if val is None else ("learned" if val >= LEARNED_DICE else
                                                 "**NOT LEARNED: the comparison for this domain is not meaningful**")
            add(f"- {dom.name}: " + ("n/a" if val is None else f"{val:.3f}") + f" ({verdict})")
    else:
        add("The Individual scheme was not run: no baseline check.")
    add("")
    for variant, title in EVAL_VARIANTS.items():
        add(f"## Results {title}")
        add("")
        add("Mean ± std over the held-out cases of the evaluated folds (`nnUNetv2_mtmd_evaluate`; per-domain "
            "rows: over all case-structure pairs; \"k undef.\": a distance is undefined when one mask is empty). "
            f"Files: `{d / 'evaluation' / '<scheme>' / variant}`.")
        add("")
        if variant == "postprocessed":
            add(components_text(d / "evaluation", folds))
            add("")
            cut = reference_cut_text(d / "evaluation" / "reference_parts.json")
            if cut:
                add(cut)
                add("")
        for metric, label in REPORT_METRICS.items():
            add(f"### {label}")
            add("")
            add(metric_table(summaries[variant], metric, spec))
            add("")
        add(other_domain_text(summaries[variant], spec))
        add("")
        cj = d / "evaluation" / f"compare_{variant}" / "compare.json"
        if cj.is_file():
            add("### 2D slice Dice and Kolmogorov-Smirnov test against the first scheme")
            add("")
            add(ks_table(load_json(cj), [dom.name for dom in spec.domains]))
            add("")
            add("Slice Dice of every slice where the reference or the prediction has a structure; P16/P84 = "
                "16th/84th percentiles; D and p: two-sample KS test (`nnUNetv2_mtmd_compare`, "
                "scipy.stats.ks_2samp) against the reference scheme, per domain and pooled.")
            add("")
        L.extend(case_level_text(study, variant, schemes, folds, pics_dir))
    add("## Embeddings of the multi-domain schemes")
    add("")
    emb = evaluated.get("embeddings")
    best = evaluated.get("best_multi_domain")
    by_scheme = evaluated.get("embeddings_by_scheme") or ({best: emb} if best and emb else {})
    sims = {s: _read_similarity(Path(e) / "similarity.csv") for s, e in by_scheme.items()
            if (Path(e) / "similarity.csv").is_file()}
    if emb and best in sims:
        dm = domain_mean_dice(summaries["raw"][best])
        add(f"Embeddings of fold {folds[0]}'s model of every multi-domain scheme (`nnUNetv2_mtmd_embeddings`, "
            f"files in `{Path(emb).parent}`): per encoder / decoder stage, the cosine similarity of the "
            "L2-normalised global-average-pooled stage outputs of two slices of the same domain (intra) and of "
            "different domains (inter), mean ± std over the pairs (the paper's Table 5). A lower inter-domain "
            "similarity means the domains are further apart in the shared layers' output. Best multi-domain "
            f"scheme by mean domain Dice without post-processing: **{SCHEME_LABELS[best]}** ({dm:.3f}).")
        add("")
        add(embedding_table(sims, "inter"))
        add("")
        add(embedding_table(sims, "intra"))
        add("")
        rows = sims[best]
        names = [r["stage_name"] for r in rows]
        enc = [n for n in names if n.startswith("enc")]
        dec = [n for n in names if n.startswith("dec")]
        shown = [n for n in (enc[-1] if enc else None, dec[-1] if dec else None) if n]
        for n, dst in publish_tsne(Path(emb), best, shown, pics_dir).items():
            rel = os.path.relpath(dst, study.report_path.parent)
            add(f"![t-SNE of the {n} embeddings of {SCHEME_LABELS[best]}]({rel})")
            add("")
    else:
        add("Not available (no multi-domain scheme evaluated, or the embeddings step did not produce files).")
        add("")
    add("## Commands")
    add("")
    add("The study (see docs/study.md; running it again continues where it stopped):")
    add("")
    add("```")
    add(shlex.join(study_command(study)))
    add("```")
    add("")
    add("<details><summary>Every command the study ran, in order (lines starting with # are Python steps of "
        "the study)</summary>")
    add("")
    add("Environment of every command: " + " ".join(
        f"{k}={shlex.quote(v)}" for k, v in study.env().items()
        if k.startswith("nnUNet_") or k == BUDGET_ENV) + f"; training additionally nnUNet_n_proc_DA="
        f"{study.opts.n_proc_da}. Console scripts of the plugin (nnUNetv2_mtmd_*) other than the embeddings ran "
        "in the study's process, with exactly these arguments.")
    add("")
    add("```")
    L.extend(st.get("commands", []))
    add("```")
    add("")
    add("</details>")
    add("")
    add(DISCUSSION_HEADING)
    add("")
    add(f"> {DISCUSSION_PLACEHOLDER} The script does not draw conclusions (a discussion written here is kept "
        "when the report is regenerated). Points "
        "to address: did every Individual baseline learn (check above); which differences are larger than the "
        "fold-to-fold and case-to-case spread; what the KS p-values say (and that with few cases and many slices "
        "per case, slices are not independent samples); the effect of post-processing; the limits of this budget "
        "(coarse spacing, short schedule, CPU) compared with the paper's.")
    add("")
    return "\n".join(L)


def study_command(study: Study) -> list[str]:
    """The ``nnUNetv2_mtmd_study`` command line that reproduces ``study`` from scratch (all options explicit)."""
    b = study.budget
    cmd = ["python", "-m", "nnunetv2_mtmd.cli.study", "--workdir", str(study.dir), "--sources",
           str(study.sources_dir), "--domains", *(s.domain for s in study.sources), "--folds",
           *map(str, study.eval_folds), "--schemes", *study.eval_schemes]
    cmd += ["--iterations", str(b.iterations), "--epochs", str(b.epochs), "--val-iterations", str(b.val_iterations),
            "--ae-iterations", str(b.ae_iterations), "--batch-size", str(b.batch_size), "--spacing",
            f"{b.spacing_mm:g}", "--patch-size", str(b.patch_size), "--max-features", str(b.max_features),
            "--base-features", str(b.base_features),
            "--fixed-orientation" if b.fixed_orientation else "--no-fixed-orientation"]
    return [*cmd, "--report", str(study.report_path)]


def _pm(mean: str, std: str) -> str:
    try:
        return f"{float(mean):.3f} ± {float(std):.3f}"
    except ValueError:
        return "n/a"
