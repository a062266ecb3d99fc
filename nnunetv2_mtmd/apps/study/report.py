"""``results.md``: tables built only from the files the study's commands wrote, and the kept discussion.

:func:`build_report` takes everything it needs as a :class:`ReportData` (built by the report stage,
:mod:`~nnunetv2_mtmd.apps.study.stages.report`); this module knows nothing of the pipeline."""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nnunetv2_mtmd.apps.study.budget import budget_rows
from nnunetv2_mtmd.apps.study.constants import (
    EVAL_VARIANTS,
    INDIVIDUAL,
    LEARNED_DICE,
    N_SPLITS,
    PLANS_BUDGET_KEY,
    PLANS_NAME,
    REPLICATES,
    REPORT_METRICS,
    SCHEME_LABELS,
    SPLIT_SEED,
)
from nnunetv2_mtmd.apps.study.discussion import DISCUSSION_HEADING, DISCUSSION_PLACEHOLDER
from nnunetv2_mtmd.apps.study.fingerprint import code_mix_note
from nnunetv2_mtmd.apps.study.progress import epoch_times, fold_folder, training_hours
from nnunetv2_mtmd.apps.study.report_models import (
    autoencoder_section,
    code_section,
    gradient_ratio_lines,
    weights_table,
)
from nnunetv2_mtmd.apps.study.report_tables import (
    _read_similarity,
    domain_mean_dice,
    embedding_table,
    fold_table,
    ks_table,
    metric_table,
    other_domain_text,
    paired_references,
    paired_table,
    replicate_table,
)
from nnunetv2_mtmd.apps.study.state import _now, hardware_info
from nnunetv2_mtmd.domains import DomainSpec
from nnunetv2_mtmd.io import load_json
from nnunetv2_mtmd.training.budget import StudyBudget


@dataclass(frozen=True)
class ReportData:
    """What the report is built from, besides the files under ``workdir / "evaluation"``."""

    workdir: Path
    report_path: Path
    spec: DomainSpec
    merged: str
    budget: StudyBudget
    num_domains: int
    #: nnU-Net's results folder, and scheme -> ``(dataset, trainer)`` of its models of one fold
    results: Path
    models: Mapping[str, Sequence[tuple[str, str]]]
    #: every fold requested so far (the evaluated ones are in evaluated.json)
    requested_folds: Sequence[int]
    #: the merged dataset's splits (splits_final.json)
    splits: Sequence[Mapping[str, Sequence[str]]]
    #: dataset -> ``{"planned": ..., "study": ...}`` 2d configurations (state.json, step plans_variant)
    planned: Mapping[str, Mapping[str, Any]]
    #: every command the study ran, in order (state.json), and the command that reproduces the study
    commands: Sequence[str]
    command: Sequence[str]
    #: the nnU-Net environment of every command, and nnUNet_n_proc_DA of the trainings
    environment: Mapping[str, str]
    n_proc_da: int
    #: model key (``train:fold<f>:<scheme>:<dataset>``) -> its model-code fingerprint takes (state.json)
    fingerprints: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)
    #: the schemes trained "if time allows" (after every fold of the others)
    later: Sequence[str] = ()
    #: scheme -> the requested folds it has finished (every model done)
    done_folds: Mapping[str, Sequence[int]] = field(default_factory=dict)
    #: model key -> marker of every model restored from a study archive (``--archive``): trained elsewhere
    restored: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def pics_dir(self) -> Path:
        """The report's picture folder: named like the report without ``.md``."""
        return self.report_path.parent / self.report_path.stem


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


def _mix(data: ReportData, schemes: Sequence[str], folds: Sequence[int], what: str = "this table",
         short: bool = False) -> list[str]:
    """The lines saying that the compared models mix model-code fingerprints ([] when they do not)."""
    note = code_mix_note(data.fingerprints, data.models, schemes, folds, what, short)
    return [note, ""] if note else []


def replicate_text(data: ReportData, scores: Mapping[str, Mapping[str, tuple[str, float]]],
                   fold_cases: Mapping[int, Sequence[str]], domains: Sequence[str]) -> list[str]:
    """``### Retraining noise``: every replicate (:data:`REPLICATES`) against the scheme it retrains, per
    fold and pooled, and what that spread means for the comparisons with that scheme."""
    L: list[str] = []
    for rep, ref in REPLICATES.items():
        if rep not in scores or ref not in scores:
            continue
        a, b = SCHEME_LABELS.get(ref, ref), SCHEME_LABELS.get(rep, rep)
        table, spread = replicate_table(scores[ref], scores[rep], fold_cases, domains)
        L += [f"### Retraining noise: {b} against {a}", "",
              f"{b} is {a} trained again with a fixed seed, everything else the same (scheme, budget, data, "
              f"split), so its difference to {a} is what retraining alone changes. Cells: mean ± std over the "
              f"held-out cases of (case Dice of {b} − case Dice of {a}), per fold and all evaluated folds pooled; "
              "in brackets the largest absolute difference of one case and the number of cases.", "",
              table, "",
              f"Retraining alone moved single cases by ± {spread['case_std']:.3f} (std of the per-case differences, "
              f"all cases pooled; at most {spread['case_max']:.3f}) and the mean Dice of a domain in one fold by up "
              f"to {spread['fold_mean']:.3f}. **A scheme that \"beats {a}\" (the paired comparison with {a} above) "
              "by a difference within this spread has not shown an effect: such a difference is noise.**", "",
              *_mix(data, [ref, rep], list(fold_cases))]
    return L


def case_level_text(data: ReportData, variant: str, schemes: Sequence[str], folds: Sequence[int],
                    pics_dir: Path) -> list[str]:
    """The report's per-case sections of one evaluation variant: Dice per fold, the paired comparisons
    with the first scheme and with DSL, the DSL replicate's spread, and a PNG of every case's Dice per
    scheme; each with a note when its models mix model-code fingerprints."""
    from nnunetv2_mtmd.evaluation.paired import load_case_scores, paired_plot

    ev = data.workdir / "evaluation"
    scores = {s: load_case_scores(ev / s / variant, "dice") for s in schemes}
    domains = [d.name for d in data.spec.domains]
    splits = data.splits
    fold_cases = {f: [c for c in splits[f]["val"] if c in scores[schemes[0]]] for f in folds}
    L = ["### Dice per fold", "",
         "Mean over the held-out cases of one fold (each case: mean Dice over its structures); the spread "
         "between folds is part of the uncertainty of every comparison.", "",
         fold_table(scores, fold_cases, domains), ""]
    for f in folds:
        L += _mix(data, schemes, [f], f"fold {f}")
    for ref, others in paired_references(schemes):
        what = ("" if ref == schemes[0] else
                " (every other multi-domain scheme: what the regularization adds to domain-specific layers, the "
                "ablation of the paper's Table 3, and what sharing the norm and head changes; a DSL replicate's row "
                "is retraining noise)")
        L += [f"### Per-case paired comparison with {SCHEME_LABELS.get(ref, ref)}{what}", "",
              paired_table({ref: scores[ref], **{s: scores[s] for s in others}}, domains), "",
              *_mix(data, [ref, *others], folds)]
    L += replicate_text(data, scores, fold_cases, domains)
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
        rel = os.path.relpath(png, data.report_path.parent)
        L += [f"![Per-case Dice {EVAL_VARIANTS[variant]}]({rel})", ""]
    return L


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


def build_report(data: ReportData, evaluated: Mapping[str, Any]) -> str:
    """The text of results.md, from the files the pipeline wrote (no number typed by hand).

    ``evaluated``: the evaluate stage's ``evaluated.json`` (folds, schemes, embeddings)."""
    ev = data.workdir / "evaluation"
    folds = evaluated["folds"]
    schemes = [s for s in evaluated["schemes"] if (ev / s / "raw" / "summary.json").is_file()]
    summaries = {v: {s: load_json(ev / s / v / "summary.json") for s in schemes} for v in EVAL_VARIANTS}
    L = [*_head_section(data, folds, schemes), *_data_section(data), *_budget_section(data, schemes, folds),
         *_hardware_section(), *code_section(data.fingerprints, data.models, schemes, folds),
         *_baseline_section(data, schemes, summaries["raw"])]
    for variant in EVAL_VARIANTS:
        L += _results_section(data, variant, schemes, folds, summaries[variant])
    L += [*_embeddings_section(data, evaluated, folds, summaries["raw"]), *_commands_section(data),
          *_discussion_section()]
    return "\n".join(L)


def _head_section(data: ReportData, folds: Sequence[int], schemes: Sequence[str]) -> list[str]:
    pending = [f for f in data.requested_folds if f not in folds]
    waiting = [s for s in data.models if s not in schemes]
    later = []
    if waiting:
        items = []
        for s in waiting:
            why = 'trained "if time allows", ' if s in data.later else ""
            done = ", ".join(map(str, data.done_folds.get(s, []))) or "none"
            items.append(f"{SCHEME_LABELS.get(s, s)} ({why}finished folds {done})")
        later = ["Not in the tables yet: " + "; ".join(items) + ". A scheme joins the tables once it has finished "
                 'every evaluated fold (docs/study.md, "Run order").', ""]
    return [
        "# Real-data ablation study: multi-task multi-domain schemes vs. stock nnU-Net", "",
        f"Generated by `nnUNetv2_mtmd_study` (nnunetv2_mtmd/apps/study/) on {_now()} from the files in "
        f"`{data.workdir}`. Every number below was computed by the study's commands (evaluation CSV/JSON files, "
        "state.json, nnU-Net's training logs); none was typed by hand.", "",
        f"**Folds evaluated: {', '.join(map(str, folds))}** of the {N_SPLITS}-fold domain-stratified split"
        + (f" (folds {', '.join(map(str, pending))} not finished yet: this report is partial)." if pending else "."),
        "", *later, *_restored_lines(data),
    ]


def _restored_lines(data: ReportData) -> list[str]:
    """Which models were trained in an earlier work folder and restored from the study archive."""
    if not data.restored:
        return []
    by_place: dict[tuple[str, str], list[str]] = {}
    for key, m in data.restored.items():
        by_place.setdefault((str(m.get("trained_in")), str(m.get("archive"))), []).append(key.split(":", 1)[1])
    items = [f"{len(keys)} trained in `{where}` (restored from `{arch}`: {', '.join(keys)})"
             for (where, arch), keys in by_place.items()]
    return [f"**{len(data.restored)} model(s) were trained in earlier work folders** and restored from the study "
            "archive with their training logs, evaluations and records, without checkpoints or predictions "
            '(docs/study.md, "Archive"): ' + "; ".join(items) + ". Their model code is listed under \"Model code\".",
            ""]


def _data_section(data: ReportData) -> list[str]:
    L = ["## Data", "", "| Domain | Source dataset | Cases | Structures |", "|---|---|---|---|"]
    for dom in data.spec.domains:
        L.append(f"| {dom.name} | {dom.source_dataset} | {dom.num_cases} | "
                 f"{', '.join(lab.name for lab in dom.labels)} |")
    L += ["", f"Merged dataset `{data.merged}` (nnUNetv2_mtmd_merge). Split: domain-stratified {N_SPLITS}-fold "
          f"(seed {SPLIT_SEED}); each Individual model holds out exactly the same cases of its domain.", ""]
    return L


def _budget_section(data: ReportData, schemes: Sequence[str], folds: Sequence[int]) -> list[str]:
    b, k = data.budget, data.num_domains
    L = ["## Budget (identical for every scheme)", "",
         f"- 2D configuration of every dataset (plans `{PLANS_NAME}`): in-plane spacing {b.spacing_mm} mm, patch "
         f"{b.patch_size} x {b.patch_size}, batch size {b.batch_size} (multi-domain: {b.batch_size // k} per "
         f"domain), {b.base_features} features in the first stage doubling to at most {b.max_features}.",
         "- Spatial augmentation of every scheme: " + (
             "fixed orientation (no mirroring in training or at inference, rotations within +-30 degrees; "
             "otherwise nnU-Net's)." if b.fixed_orientation else
             "nnU-Net's 2D default (mirroring of both axes, rotations within +-180 degrees, test-time mirroring).")]
    for name, p in data.planned.items():
        L.append(f"  - {name}: nnU-Net planned spacing {p['planned']['spacing']}, patch {p['planned']['patch_size']}, "
                 f"batch {p['planned']['batch_size']}, {p['planned']['n_stages']} stages; study: "
                 f"{p['study']['n_stages']} stages, features {p['study']['features_per_stage']} "
                 f"({p['study']['network']}).")
    L += [f"- Schedule: {b.epochs} epochs; Individual {b.iterations} iterations per model, multi-domain "
          f"{k} x {b.iterations} = {b.model_iterations(k)} (equal exposure: every domain contributes "
          f"{b.samples_per_domain(1)} training samples to every model, and each multi-domain model costs as much as "
          f"the {k} Individual models together); {b.val_iterations} (x K) pseudo-Dice batches per epoch; "
          f"MJAP autoencoder phase {b.ae_iterations} iterations; learning rate and everything else as nnU-Net's "
          "defaults.", ""]
    return [*L, *_timing_table(data, schemes, folds), *weights_table(schemes),
            *gradient_ratio_lines(data.results, data.models, schemes, folds),
            *autoencoder_section(data.results, data.models, data.spec, schemes, folds)]


def _timing_table(data: ReportData, schemes: Sequence[str], folds: Sequence[int]) -> list[str]:
    b = data.budget
    L = ["| Scheme | Trainer | Models per fold | Iterations per model | Iterations per fold | "
         "Samples per domain | Training time (h, evaluated folds) | s per iteration (median) |",
         "|---|---|---|---|---|---|---|---|"]
    for r in budget_rows(b, schemes, data.num_domains):
        s = r["scheme"]
        spi, per_model = [], []
        for f in folds:
            for ds, tr in data.models[s]:
                t = epoch_times(fold_folder(data.results, ds, tr, f))
                per_model.append(t)
                spi += [x / r["iterations_per_epoch"] for x in t]
        spi_txt = f"{float(np.median(spi)):.2f}" if spi else "n/a"
        hours = training_hours(per_model, b.epochs)
        L.append(f"| {SCHEME_LABELS[s]} | `{r['trainer']}` | {r['models_per_fold']} | {r['iterations_per_model']} | "
                 f"{r['iterations_per_fold']} | {r['samples_per_domain']} | "
                 f"{'n/a' if hours is None else f'{hours:.2f}'} | {spi_txt} |")
    L += ["", "Training time: per model, the median of nnU-Net's logged epoch times x the number of epochs (training "
          "iterations and the per-epoch pseudo-Dice batches; not the final validation), summed over the models of "
          "the evaluated folds. The median, not the sum of the logged times: a study that runs across working "
          "sessions is paused (SIGSTOP) and interrupted, which lengthens some epochs and repeats others. Where the "
          "study ran with `--jobs N` (N > 1), N models trained at once on a share of the cores each, so these "
          "times overlap and each is longer than it would be alone. Seconds per iteration: nnU-Net's logged epoch "
          "time divided by the training iterations per epoch, median over the epochs.", ""]
    return L


def _hardware_section() -> list[str]:
    hw = hardware_info()
    return [
        "## Hardware", "",
        f"- CPU: {hw.get('cpu_model', 'unknown')}, {hw['nproc']} logical cores (nproc); RAM {hw.get('ram_gib', '?')} "
        f"GiB; load average when this report was written: {hw.get('load_average', '?')}",
        f"- {hw['platform']}; Python {hw['python']}, torch {hw.get('torch', '?')}, nnunetv2 {hw.get('nnunetv2', '?')}, "
        f"nnunetv2-mtmd {hw.get('nnunetv2-mtmd', '?')} (code of commit {hw.get('nnunetv2-mtmd commit') or 'unknown'} "
        f"loaded from `{hw.get('nnunetv2-mtmd code', '?')}`, which wrote this report); device: CPU (`-device cpu`)",
        "",
    ]


def _baseline_section(data: ReportData, schemes: Sequence[str], raw: Mapping[str, Mapping[str, Any]]) -> list[str]:
    L = ["## Check: have the Individual baselines learned?", ""]
    if INDIVIDUAL not in schemes:
        return [*L, "The Individual scheme was not run: no baseline check.", ""]
    ind = raw[INDIVIDUAL]["domains"]
    L += [f"Domain-mean Dice of the Individual models (held-out cases, no post-processing); threshold {LEARNED_DICE}:",
          ""]
    for dom in data.spec.domains:
        e = ind.get(dom.name)
        val = e["mean"]["dice"]["mean"] if e else None
        verdict = "n/a" if val is None else ("learned" if val >= LEARNED_DICE else
                                             "**NOT LEARNED: the comparison for this domain is not meaningful**")
        L.append(f"- {dom.name}: " + ("n/a" if val is None else f"{val:.3f}") + f" ({verdict})")
    return [*L, ""]


def _results_section(data: ReportData, variant: str, schemes: Sequence[str], folds: Sequence[int],
                     summaries: Mapping[str, Mapping[str, Any]]) -> list[str]:
    ev = data.workdir / "evaluation"
    L = [f"## Results {EVAL_VARIANTS[variant]}", "",
         "Mean ± std over the held-out cases of the evaluated folds (`nnUNetv2_mtmd_evaluate`; per-domain "
         "rows: over all case-structure pairs; \"k undef.\": a distance is undefined when one mask is empty). "
         f"Files: `{ev / '<scheme>' / variant}`.", "",
         *_mix(data, schemes, folds, "every table of this section (schemes side by side, folds pooled)")]
    if variant == "postprocessed":
        L += [components_text(ev, folds), ""]
        cut = reference_cut_text(ev / "reference_parts.json")
        if cut:
            L += [cut, ""]
    for metric, label in REPORT_METRICS.items():
        L += [f"### {label}", "", metric_table(summaries, metric, data.spec), "",
              *_mix(data, schemes, folds, "this table", short=True)]
    L += [other_domain_text(summaries, data.spec), ""]
    cj = ev / f"compare_{variant}" / "compare.json"
    if cj.is_file():
        L += ["### 2D slice Dice and Kolmogorov-Smirnov test against the first scheme", "",
              ks_table(load_json(cj), [dom.name for dom in data.spec.domains]), "",
              "Slice Dice of every slice where the reference or the prediction has a structure; P16/P84 = "
              "16th/84th percentiles; D and p: two-sample KS test (`nnUNetv2_mtmd_compare`, "
              "scipy.stats.ks_2samp) against the reference scheme, per domain and pooled.", "",
              *_mix(data, schemes, folds, "this table", short=True)]
    return L + case_level_text(data, variant, schemes, folds, data.pics_dir)


def _embeddings_section(data: ReportData, evaluated: Mapping[str, Any], folds: Sequence[int],
                        raw: Mapping[str, Mapping[str, Any]]) -> list[str]:
    L = ["## Embeddings of the multi-domain schemes", ""]
    emb = evaluated.get("embeddings")
    best = evaluated.get("best_multi_domain")
    by_scheme = evaluated.get("embeddings_by_scheme") or ({best: emb} if best and emb else {})
    sims = {s: _read_similarity(Path(e) / "similarity.csv") for s, e in by_scheme.items()
            if (Path(e) / "similarity.csv").is_file()}
    if not (emb and best in sims):
        return [*L, "Not available (no multi-domain scheme evaluated, or the embeddings step did not produce files).",
                ""]
    dm = domain_mean_dice(raw[best])
    L += [f"Embeddings of fold {folds[0]}'s model of every multi-domain scheme (`nnUNetv2_mtmd_embeddings`, "
          f"files in `{Path(emb).parent}`): per encoder / decoder stage, the cosine similarity of the "
          "L2-normalised global-average-pooled stage outputs of two slices of the same domain (intra) and of "
          "different domains (inter), mean ± std over the pairs (the paper's Table 5). A lower inter-domain "
          "similarity means the domains are further apart in the shared layers' output. Best multi-domain "
          f"scheme by mean domain Dice without post-processing: **{SCHEME_LABELS[best]}** ({dm:.3f}).", "",
          embedding_table(sims, "inter"), "", embedding_table(sims, "intra"), ""]
    names = [r["stage_name"] for r in sims[best]]
    enc = [n for n in names if n.startswith("enc")]
    dec = [n for n in names if n.startswith("dec")]
    shown = [n for n in (enc[-1] if enc else None, dec[-1] if dec else None) if n]
    for n, dst in publish_tsne(Path(emb), best, shown, data.pics_dir).items():
        rel = os.path.relpath(dst, data.report_path.parent)
        L += [f"![t-SNE of the {n} embeddings of {SCHEME_LABELS[best]}]({rel})", ""]
    return L


def _commands_section(data: ReportData) -> list[str]:
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in data.environment.items())
    return [
        "## Commands", "", "The study (see docs/study.md; running it again continues where it stopped):", "",
        "```", shlex.join(data.command), "```", "",
        "<details><summary>Every command the study ran, in order (lines starting with # are Python steps of "
        "the study)</summary>", "",
        f"Environment of every command: {env}; training additionally nnUNet_n_proc_DA={data.n_proc_da}. The budget "
        f"is not in the environment: every dataset's plans `{PLANS_NAME}.json` record it (key `{PLANS_BUDGET_KEY}`), "
        "and nnU-Net copies them into each model's results folder as plans.json. The plugin's post-processing, "
        "evaluation and comparison (nnUNetv2_mtmd_postprocess, nnUNetv2_mtmd_evaluate, nnUNetv2_mtmd_compare) ran "
        "in the study's process, as the library functions behind these console scripts, with exactly these "
        "arguments.", "",
        "```", *data.commands, "```", "", "</details>", "",
    ]


def _discussion_section() -> list[str]:
    return [
        DISCUSSION_HEADING, "",
        f"> {DISCUSSION_PLACEHOLDER} The script does not draw conclusions (a discussion written here is kept "
        "when the report is regenerated). Points "
        "to address: did every Individual baseline learn (check above); which differences are larger than the "
        "fold-to-fold and case-to-case spread, and which differences to DSL are larger than the DSL replicate's "
        "(retraining noise); whether the compared models share their model code (\"Model code\"); "
        "what the KS p-values say (and that with few cases and many slices "
        "per case, slices are not independent samples); the effect of post-processing; the limits of this budget "
        "(coarse spacing, short schedule, CPU) compared with the paper's.", "",
    ]
