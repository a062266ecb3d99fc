"""The report's sections about the trained models rather than their predictions: the model code each was
trained with (fingerprints, ``state.json``), the loss weights of each scheme (its trainer class), the
gradient-norm ratios of the regularizers and the MJAP autoencoder's reconstruction Dice (training logs
and ``label_autoencoder.json`` of each fold folder); used by :mod:`~nnunetv2_mtmd.apps.study.report`."""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

from nnunetv2_mtmd.apps.study.constants import INDIVIDUAL, SCHEME_LABELS, SCHEME_TRAINERS
from nnunetv2_mtmd.apps.study.fingerprint import (
    FINGERPRINT_PACKAGES,
    MIXED,
    model_fingerprint,
    model_key,
    this_code_fingerprint,
    unit_fingerprints,
)
from nnunetv2_mtmd.apps.study.progress import autoencoder_summary, fold_folder, gradient_norm_ratios, median_ratios
from nnunetv2_mtmd.domains import DomainSpec

#: Trainer class attributes of the weights table, and their headings.
WEIGHT_ATTRIBUTES = {"lambda_msc": "λ MSC", "msc_temperature": "MSC temperature",
                     "msc_learnable_temperature": "learnable temperature", "lambda_mjap": "λ MJAP", "seed": "seed"}


def _f3(v: float | None) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.3f}"


# ------------------------------------------------------------------------------------ model code
def code_section(fingerprints: Mapping[str, Sequence[Mapping[str, Any]]],
                 models: Mapping[str, Sequence[tuple[str, str]]], schemes: Sequence[str],
                 folds: Sequence[int]) -> list[str]:
    """``## Model code``: every fingerprint of the evaluated models, what it is made of and which
    models have it; the models continued with other code than they started with; those without one."""
    L = ["## Model code", "",
         "Each training records, when it starts and again whenever it is continued (`--c`) or only validated "
         "(`--val`), a fingerprint of the model code it runs (`state.json`, key `fingerprints`; "
         "nnunetv2_mtmd/apps/study/fingerprint.py): sha256 over the source of every library module of "
         "nnunetv2_mtmd (all but apps/ and cli/) as the training's interpreter finds them, and the installed "
         f"versions of {', '.join(FINGERPRINT_PACKAGES)}. A model whose takes differ is *mixed*.", ""]
    units = unit_fingerprints(fingerprints, models, schemes, folds)
    takes = {t["fingerprint"]: t for key in sorted(fingerprints) for t in fingerprints[key]}
    known = sorted(k for k in units if k not in (MIXED, "not recorded"))
    if known:
        L += ["| Fingerprint | Code sha256 | " + " | ".join(FINGERPRINT_PACKAGES) + " | Package folder | Models |",
              "|---|---|" + "---|" * len(FINGERPRINT_PACKAGES) + "---|---|"]
        for k in known:
            t = takes.get(k, {})
            vers = " | ".join(str(t.get("versions", {}).get(p) or "?") for p in FINGERPRINT_PACKAGES)
            L.append(f"| `{k}` | `{str(t.get('code_sha256', '?'))[:16]}` | {vers} | `{t.get('package', '?')}` | "
                     f"{', '.join(units[k])} |")
        L.append("")
    for s in schemes:
        for f in folds:
            for ds, _ in models.get(s, ()):
                tk = fingerprints.get(model_key(f, s, ds), [])
                if model_fingerprint(tk) == MIXED:
                    L.append(f"- **Mixed**: {SCHEME_LABELS.get(s, s)} fold {f} ({ds}): " + ", ".join(
                        f"{t['status']} {t['at']} `{t['fingerprint']}`" for t in tk))
    if "not recorded" in units:
        L.append("- No fingerprint recorded (trained before the study recorded them, or outside it): "
                 + ", ".join(units["not recorded"]) + ".")
    if len(known) == 1 and set(units) == {known[0]}:
        L.append(f"- Every evaluated model was trained with the same model code, `{known[0]}`.")
    L += [f"- The code that wrote this report (and whose trainer classes give the loss weights of the budget section): "
          f"`{this_code_fingerprint()}`.", ""]
    return L


# --------------------------------------------------------------------------------- loss weights
def trainer_weights(trainer: str) -> dict[str, Any] | None:
    """The :data:`WEIGHT_ATTRIBUTES` of trainer class ``nnunetv2_mtmd.training.trainers.<trainer>``
    (an attribute it lacks is left out); None when the class is not found."""
    module = importlib.import_module("nnunetv2_mtmd.training.trainers")
    cls = getattr(module, trainer, None)
    if cls is None:
        return None
    return {a: getattr(cls, a) for a in WEIGHT_ATTRIBUTES if hasattr(cls, a)}


def _weight_cell(weights: Mapping[str, Any], attribute: str) -> str:
    if attribute not in weights:
        return "-"
    v = weights[attribute]
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def weights_table(schemes: Sequence[str]) -> list[str]:
    """``### Loss weights``: per scheme, the weights and MSC temperature of its study trainer class."""
    L = ["### Loss weights of each scheme", "",
         "| Scheme | Trainer | " + " | ".join(WEIGHT_ATTRIBUTES.values()) + " |",
         "|---|---|" + "---|" * len(WEIGHT_ATTRIBUTES)]
    for s in schemes:
        tr = SCHEME_TRAINERS[s]
        w = trainer_weights(tr)
        if w is None:
            cells = ["n/a (class not found)"] * len(WEIGHT_ATTRIBUTES)
        else:
            cells = [_weight_cell(w, a) for a in WEIGHT_ATTRIBUTES]
        L.append(f"| {SCHEME_LABELS[s]} | `{tr}` | " + " | ".join(cells) + " |")
    return [*L, "", "Class attributes of each study trainer (`nnunetv2_mtmd.training.trainers.<trainer>`) in the "
            "code that wrote this report: `L = Dice+CE + λ MSC x MSC + λ MJAP x MJAP`; - : the trainer has no such "
            "term (Individual is stock nnU-Net); seed none: not seeded (nnU-Net's default).", ""]


# ------------------------------------------------------------------------- gradient-norm ratios
def gradient_ratio_lines(results: Any, models: Mapping[str, Sequence[tuple[str, str]]], schemes: Sequence[str],
                         folds: Sequence[int]) -> list[str]:
    """``### Gradient-norm ratios``: per multi-domain model, the median over its epochs of the logged
    MSC/seg and MJAP/seg gradient-norm ratios on the shared parameters."""
    rows = []
    for s in schemes:
        if s == INDIVIDUAL:
            continue
        for f in folds:
            for ds, tr in models.get(s, ()):
                per_epoch = gradient_norm_ratios(fold_folder(results, ds, tr, f))
                if per_epoch:
                    m = median_ratios(per_epoch)
                    rows.append(f"| {SCHEME_LABELS[s]} | {f} | {m['epochs']} | {_f3(m['msc'])} | {_f3(m['mjap'])} |")
    L = ["### Gradient-norm ratios of the regularizers", ""]
    if not rows:
        return [*L, "Not logged by any evaluated model (trained before the trainers logged the line "
                "`Gradient-norm ratios on the shared parameters ...`).", ""]
    return [*L, "| Scheme | Fold | Epochs logged | MSC/seg | MJAP/seg |", "|---|---|---|---|---|", *rows, "",
            "The ratio of each regularizer's gradient norm to the segmentation loss's on the shared parameters, "
            "as the trainer logs it once per epoch (median over a few sampled iterations of the epoch; see the "
            "trainer for the exact definition); here the median over the model's epochs (an epoch repeated after "
            "an interruption counts once). n/a: a term the scheme lacks.", ""]


# ----------------------------------------------------------------------------- MJAP autoencoder
def _structures(spec: DomainSpec, summaries: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(domain, structure) rows: the spec's order, then anything else the files name."""
    rows = [(d.name, lab.name) for d in spec.domains for lab in d.labels]
    for summ in summaries:
        for dom, per in summ.get("reconstruction_dice", {}).items():
            rows += [(dom, st) for st in per if (dom, st) not in rows]
    return rows


def autoencoder_fold_table(spec: DomainSpec, columns: Mapping[str, Mapping[str, Any] | None]) -> list[str]:
    """One fold's table: rows domain / structure and the mean over all structures, one column per MJAP
    scheme (``columns``: label -> :func:`autoencoder_summary`)."""
    present = [c for c in columns.values() if c]
    rows = _structures(spec, [c for c in present if c["source"] == "file"])
    L = ["| Domain | Structure | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for dom, st in rows:
        cells = [_f3(c.get("reconstruction_dice", {}).get(dom, {}).get(st)) if c else "n/a" for c in columns.values()]
        L.append(f"| {dom} | {st} | " + " | ".join(cells) + " |")
    means = []
    for c in columns.values():
        if not c:
            means.append("n/a")
        elif c["source"] == "log":
            means.append(f"{_f3(c['overall'])} (training log)")
        else:
            vals = [v for per in c["reconstruction_dice"].values() for v in per.values() if math.isfinite(v)]
            means.append(_f3(sum(vals) / len(vals)) if vals else "n/a")
    L.append("| **all** | **mean** | " + " | ".join(means) + " |")
    return L


def _about(label: str, c: Mapping[str, Any] | None) -> str:
    if not c:
        return f"{label}: nothing recorded"
    if c["source"] == "log":
        return f"{label}: no label_autoencoder.json, only the training log's value"
    secs = c.get("seconds")
    return (f"{label}: {c.get('iterations', '?')} iterations, "
            + (f"{secs:.0f} s" if isinstance(secs, (int, float)) else "? s")
            + f", variant {c.get('variant', '?')}, autoencoder fingerprint `{c.get('fingerprint', '?')}`"
            + (f", cache `{c['cache']}`" if c.get("cache") else "")
            + (" (reused from the cache: trained by another MJAP scheme's job)" if c.get("reused") else ""))


def autoencoder_section(results: Any, models: Mapping[str, Sequence[tuple[str, str]]], spec: DomainSpec,
                        schemes: Sequence[str], folds: Sequence[int]) -> list[str]:
    """``### MJAP label autoencoder``: per fold, the reconstruction Dice per domain and structure of each
    MJAP scheme's autoencoder (label_autoencoder.json, else the training log's one value)."""
    mjap = [s for s in schemes if "MJAP" in s]
    if not mjap:
        return []
    L = ["### MJAP label autoencoder", "",
         "Validation reconstruction Dice of each MJAP model's label autoencoder when it was frozen (the labels "
         "encoded and decoded again, against themselves), per domain and structure, from the model's "
         "`label_autoencoder.json` (written by the autoencoder phase); a model trained before that file existed "
         "has only the mean foreground Dice of its training log. A poorly reconstructing autoencoder gives the "
         "MJAP term a coarse prior.", ""]
    for f in folds:
        cols = {}
        for s in mjap:
            ds, tr = models[s][0]
            cols[SCHEME_LABELS[s]] = autoencoder_summary(fold_folder(results, ds, tr, f))
        L += [f"Fold {f} (" + "; ".join(_about(k, c) for k, c in cols.items()) + "):", "",
              *autoencoder_fold_table(spec, cols), ""]
    return L
