"""The real-data ablation study: every training scheme of Boutillon et al. (2021/2022) against stock
nnU-Net, on the same folds, with the same budget and the same evaluation (``nnUNetv2_mtmd_study``).

One resumable pipeline with its own nnU-Net folders under a work directory (never in the repository):

1. **prepare**: copy the K source datasets (default ``../shared/realdata``: Dataset901 lumbar,
   Dataset902 sacroiliac, Dataset903 pelvis) into ``DIR/nnUNet_raw`` for the Individual baselines and
   merge them into one multi-domain dataset (``nnUNetv2_mtmd_merge``, id 950); extract fingerprints
   and plan with nnU-Net's own planners (stock ``ExperimentPlanner`` for the sources,
   ``nnUNetPlannerMTMD`` for the merged set); then write one plans variant ``nnUNetPlans_study``
   per dataset whose ``2d`` configuration uses the SAME coarse in-plane spacing, patch size, batch
   size and maximum width for every dataset (:func:`coarse_2d_plans`, network topology from
   nnU-Net's ``get_pool_and_conv_props``), and preprocess it (``nnUNetv2_preprocess -plans_name``).
   Splits: a domain-stratified 5-fold split of the merged set (:func:`domain_stratified_kfold`),
   and for every source dataset the SAME held-out cases (:func:`individual_splits`).
2. **train**: for every fold and scheme ``nnUNetv2_train ... -device cpu`` in a subprocess with the
   budget trainers of :mod:`nnunetv2_mtmd.training.trainers.study`; resumable (``--c`` from a
   checkpoint, ``--val`` when only the final validation is missing, skipped when done). The budget
   is equal exposure (DESIGN.md): an Individual model trains ``I`` iterations, a multi-domain model
   ``K * I`` iterations with the same batch size, so every domain's images are seen equally often and
   the multi-domain model costs as much as the K Individual models together (:class:`StudyBudget`).
3. **evaluate**: nnU-Net's final validation of each fold (``fold_X/validation``) holds the held-out
   predictions; they are gathered per scheme over the finished folds into the unified label space
   (Individual predictions remapped with the domain block's label mapping and prefixed with the
   domain, :func:`unify_individual_prediction`), post-processed (``nnUNetv2_mtmd_postprocess``),
   evaluated with and without post-processing (``nnUNetv2_mtmd_evaluate``), compared
   (``nnUNetv2_mtmd_compare``, KS against Individual), and the embeddings of every multi-domain
   scheme's model of the first fold are analysed (``nnUNetv2_mtmd_embeddings``).
4. **report**: ``results.md`` built only from the CSV/JSON files written by those commands, with
   the hardware, budget, commands and a discussion section left to a human.

Every step logs to ``DIR/study_log.txt`` (subprocess output in ``DIR/logs/``) and records itself in
``DIR/state.json``; running again continues where it stopped. ``--stage measure`` times a few
iterations of every trainer to choose the budget. See docs/study.md.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from nnunetv2_mtmd.domains import Domain, DomainSpec, sanitize_domain_name, validate_domain_name
from nnunetv2_mtmd.errors import InputDataError, MTMDError
from nnunetv2_mtmd.io import atomic_output_dir, load_json, save_json

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------ constants
#: Where the real data lives: ``../shared/realdata`` next to the repository (never copied into it).
REALDATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
#: Domain names of the real datasets (as in dataset_conversion/merge_real_musculoskeletal.py).
REAL_DOMAIN_NAMES = {
    "Dataset901_LumbarVertebraeMR": "lumbar",
    "Dataset902_SacroiliacMR": "sij",
    "Dataset903_PelvisBoneMR": "pelvis",
}
MERGED_ID = 950
MERGED_NAME = "MSKBonesMR"
PLANS_NAME = "nnUNetPlans_study"
CONFIGURATION = "2d"
N_SPLITS = 5
SPLIT_SEED = 12345
DEFAULT_FOLDS = (0, 1, 2)
STATE_VERSION = 1
STATE_FILE = "state.json"
LOG_FILE = "study_log.txt"
#: An Individual baseline whose domain-mean Dice stays below this has not learned (report check).
LEARNED_DICE = 0.5
#: Environment variable carrying the budget (JSON) to the study trainers in the training subprocess.
BUDGET_ENV = "MTMD_STUDY_BUDGET"
#: Set to "1" by ``--stage measure``: the study trainers skip nnU-Net's final validation.
MEASURE_ENV = "MTMD_STUDY_MEASURE"
#: Torch CPU threads of a study training (read by the study trainers; nnU-Net's ``-device cpu`` sets all
#: cores, which oversubscribes the CPU when ``--jobs`` trainings run at once).
THREADS_ENV = "MTMD_TORCH_THREADS"
WORKDIR_ENV = "MTMD_STUDY_DIR"

INDIVIDUAL = "Individual"
#: scheme -> trainer class (nnunetv2_mtmd/training/trainers/study.py).
SCHEME_TRAINERS: dict[str, str] = {
    INDIVIDUAL: "nnUNetTrainer_study",
    "Shared": "nnUNetTrainerMTMD_Shared_study",
    "Shared_MJAP": "nnUNetTrainerMTMD_Shared_MJAP_study",
    "DSL": "nnUNetTrainerMTMD_DSL_study",
    "DSL_SSC": "nnUNetTrainerMTMD_DSL_SSC_study",
    "DSL_MSC": "nnUNetTrainerMTMD_DSL_MSC_study",
    "DSL_MJAP": "nnUNetTrainerMTMD_DSL_MJAP_study",
    "DSL_MSC_MJAP": "nnUNetTrainerMTMD_study",
}
SCHEME_LABELS: dict[str, str] = {s: s.replace("_", "+") for s in SCHEME_TRAINERS}
DEFAULT_SCHEMES = ("Individual", "Shared", "DSL", "DSL_MSC", "DSL_MJAP", "DSL_MSC_MJAP")
STAGES = ("all", "prepare", "train", "evaluate", "report", "measure", "status")
#: Metrics of the report tables (keys of evaluate's summary.json) and their headings.
# sensitivity next to the Dice tells under- from over-segmentation (Dice = 2PS / (P + S), P precision)
REPORT_METRICS = {"dice": "Dice", "sensitivity": "Sensitivity", "assd_mm": "ASSD (mm)", "mssd_mm": "MSSD (mm)"}
EVAL_VARIANTS = {"raw": "without post-processing", "postprocessed": "with the paper's post-processing"}


class StudyError(MTMDError, RuntimeError):
    """A study step failed (a subprocess exited with an error, or the work folder is inconsistent)."""


# --------------------------------------------------------------------------------------- budget
@dataclass(frozen=True)
class StudyBudget:
    """The compute budget, identical for every scheme (equal exposure, DESIGN.md "Budgets").

    ``iterations`` (``I``) is the number of training iterations of ONE Individual model; a model
    trained on K domains gets ``K * I`` (same batch size, ``batch_size / K`` samples per domain), so
    it sees each domain's samples exactly as often as that domain's Individual model and costs as
    much as the K Individual models together. Both run ``epochs`` epochs (same poly learning-rate
    schedule), with ``val_iterations`` (times K) pseudo-Dice batches per epoch. ``ae_iterations``:
    MJAP's label-autoencoder phase. The plans part (``spacing_mm``, ``patch_size``, ``batch_size``,
    ``max_features``, ``base_features``: features of the first stage, doubled per stage up to
    ``max_features``) is written into every dataset's ``2d`` configuration by :func:`coarse_2d_plans`.
    ``fixed_orientation``: every scheme (the Individual baseline too) trains without mirroring and
    with rotations within +-30 degrees instead of nnU-Net's 2D mirroring and +-180 degrees
    (:mod:`nnunetv2_mtmd.training.orientation`; why: docs/study.md).
    """

    # The defaults are the budget of the run reported in docs/results.md; why each value: docs/study.md.
    iterations: int = 3000
    epochs: int = 30
    val_iterations: int = 2
    ae_iterations: int = 300
    batch_size: int = 12
    spacing_mm: float = 4.0
    patch_size: int = 64
    max_features: int = 256
    base_features: int = 16
    fixed_orientation: bool = True

    def validate(self, num_domains: int | None = None) -> StudyBudget:
        """Raise :class:`InputDataError` for unusable values; returns ``self``."""
        if not isinstance(self.fixed_orientation, bool):
            raise InputDataError(
                f"Budget value fixed_orientation must be true or false, found {self.fixed_orientation!r}.")
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "fixed_orientation":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InputDataError(f"Budget value {f.name} must be a number, found {v!r}.")
        ints = {"iterations": 1, "epochs": 1, "val_iterations": 1, "ae_iterations": 0, "batch_size": 1,
                "patch_size": 8, "max_features": 1, "base_features": 1}
        for name, low in ints.items():
            v = getattr(self, name)
            if int(v) != v or v < low:
                raise InputDataError(f"Budget value {name} must be an integer >= {low}, found {v!r}.")
        if self.spacing_mm <= 0:
            raise InputDataError(f"--spacing must be > 0 mm, found {self.spacing_mm}.")
        if self.iterations % self.epochs:
            raise InputDataError(
                f"--iterations ({self.iterations}) must be a multiple of --epochs ({self.epochs}) so that every "
                "epoch has the same number of iterations (e.g. --iterations 1000 --epochs 20)."
            )
        if num_domains is not None and self.batch_size % num_domains:
            raise InputDataError(
                f"--batch-size {self.batch_size} is not a multiple of the {num_domains} domains: multi-domain "
                f"batches hold batch_size / K samples of each domain. Use e.g. {num_domains * 4}."
            )
        return self

    def iterations_per_epoch(self, num_domains: int = 1) -> int:
        """Training iterations per epoch of a model trained on ``num_domains`` domains: ``K * I / epochs``."""
        return num_domains * self.iterations // self.epochs

    def val_iterations_per_epoch(self, num_domains: int = 1) -> int:
        return num_domains * self.val_iterations

    def model_iterations(self, num_domains: int = 1) -> int:
        """Total training iterations of one model trained on ``num_domains`` domains (``K * I``)."""
        return num_domains * self.iterations

    def samples_per_domain(self, num_domains: int = 1) -> int:
        """Training samples each domain contributes to one model: ``K * I * B / K = I * B``, whatever K."""
        return self.model_iterations(num_domains) * self.batch_size // num_domains

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str = "budget") -> StudyBudget:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputDataError(f"{where}: unknown budget keys {unknown}; known: {sorted(known)}.")
        return cls(**dict(d))

    @classmethod
    def from_record(cls, d: Mapping[str, Any]) -> dict[str, Any]:
        """A budget recorded in ``state.json`` as keyword values: records written before
        ``fixed_orientation`` existed were trained with nnU-Net's augmentation, whatever today's default."""
        return {"fixed_orientation": False, **dict(d)} if d else {}

    def env(self) -> dict[str, str]:
        """The environment entry that hands this budget to the study trainers."""
        return {BUDGET_ENV: json.dumps(self.to_json(), sort_keys=True)}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StudyBudget:
        """The budget in ``$MTMD_STUDY_BUDGET`` (JSON), or the defaults when it is unset."""
        environ = os.environ if environ is None else environ
        text = environ.get(BUDGET_ENV)
        if not text:
            return cls()
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputDataError(f"${BUDGET_ENV} is not valid JSON ({e}): {text!r}.") from e
        if not isinstance(d, dict):
            raise InputDataError(f"${BUDGET_ENV} must be a JSON object, found {text!r}.")
        return cls.from_json(d, f"${BUDGET_ENV}").validate()


def budget_rows(budget: StudyBudget, schemes: Sequence[str], num_domains: int) -> list[dict[str, Any]]:
    """One row per scheme: trainer, models per fold, iterations per model and per fold, samples per domain.

    Every scheme gets the same iterations per fold (``K * I``) and the same samples per domain
    (``I * B``): equal exposure and equal compute."""
    rows = []
    for s in schemes:
        k_model = 1 if s == INDIVIDUAL else num_domains
        n_models = num_domains if s == INDIVIDUAL else 1
        rows.append({
            "scheme": s,
            "trainer": SCHEME_TRAINERS[s],
            "models_per_fold": n_models,
            "iterations_per_model": budget.model_iterations(k_model),
            "iterations_per_epoch": budget.iterations_per_epoch(k_model),
            "iterations_per_fold": n_models * budget.model_iterations(k_model),
            "samples_per_domain": budget.samples_per_domain(k_model),
        })
    return rows


def estimate_hours(budget: StudyBudget, seconds_per_iteration: Mapping[str, float], num_domains: int,
                   n_folds: int, ae_seconds: Mapping[str, float] | None = None) -> dict[str, float]:
    """Expected CPU hours per scheme over ``n_folds`` folds (training iterations only, plus the MJAP
    autoencoder phase given in ``ae_seconds`` per model), and the total under key ``"total"``.

    ``seconds_per_iteration[scheme]`` is the time of one training iteration of that scheme (all
    schemes use the same batch size, so Individual's value applies to each of its K models)."""
    out: dict[str, float] = {}
    rows = {r["scheme"]: r for r in budget_rows(budget, list(seconds_per_iteration), num_domains)}
    for s, sec in seconds_per_iteration.items():
        secs = rows[s]["iterations_per_fold"] * sec + (ae_seconds or {}).get(s, 0.0) * rows[s]["models_per_fold"]
        out[s] = n_folds * secs / 3600.0
    out["total"] = sum(out.values())
    return out


# ---------------------------------------------------------------------------------------- splits
Split = dict[str, list[str]]


def strip_domain_prefix(case_id: str, domain: Domain) -> str:
    """``"lumbar_myoseg_vb3_01"`` -> ``"myoseg_vb3_01"`` for domain ``lumbar`` (the source's case id)."""
    prefix = f"{domain.name}_"
    if not case_id.startswith(prefix) or len(case_id) == len(prefix):
        raise InputDataError(f"Case '{case_id}' is not a case of domain '{domain.name}' (expected '{prefix}<id>').")
    return case_id[len(prefix):]


def individual_splits(merged_splits: Sequence[Mapping[str, Sequence[str]]], spec: DomainSpec) -> dict[str, list[Split]]:
    """The splits of every source dataset that hold out the SAME cases as the merged split.

    Fold ``i`` of domain ``d`` trains on the fold's training cases of ``d`` and validates on its
    validation cases of ``d``, with the ``<domain>_`` prefix removed. Returns ``{domain name: splits}``.
    Raises :class:`InputDataError` if a fold has no training or no validation case of a domain (a
    domain with fewer cases than folds)."""
    out: dict[str, list[Split]] = {d.name: [] for d in spec.domains}
    for i, fold in enumerate(merged_splits):
        for d in spec.domains:
            part = {}
            for key in ("train", "val"):
                ids = [strip_domain_prefix(c, d) for c in fold[key] if spec.domain_of_case(c).name == d.name]
                if not ids:
                    raise InputDataError(
                        f"Fold {i} of the merged split has no {key} case of domain '{d.name}', so its Individual "
                        f"model cannot be {'trained' if key == 'train' else 'validated'}: every domain needs at "
                        f"least {len(merged_splits)} cases for a {len(merged_splits)}-fold split."
                    )
                part[key] = sorted(ids)
            out[d.name].append(part)
    return out


# --------------------------------------------------------------------------------- label remap
def remap_labels(arr: np.ndarray, mapping: Mapping[int, int], where: str = "label map") -> np.ndarray:
    """Map every label id of ``arr`` through ``mapping`` (e.g. original -> unified ids of one domain).

    Ids absent from ``mapping`` raise :class:`InputDataError`. Returns uint8 (uint16 beyond 255)."""
    arr = np.asarray(arr)
    present = np.unique(arr)
    unknown = sorted(int(v) for v in present if int(v) not in mapping)
    if unknown:
        raise InputDataError(
            f"{where} holds label ids {unknown} that the domain does not declare (known: {sorted(mapping)})."
        )
    top = max(max(mapping.values()), 0)
    lut = np.zeros(max(int(present.max()) if present.size else 0, max(mapping)) + 1, dtype=np.int64)
    for k, v in mapping.items():
        lut[int(k)] = int(v)
    return lut[arr.astype(np.int64)].astype(np.uint8 if top <= 255 else np.uint16)


def unify_individual_prediction(src: Path, dst: Path, domain: Domain) -> None:
    """Write an Individual model's prediction ``src`` (original label ids of ``domain``) as ``dst`` in
    the merged dataset's unified label space, same geometry."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(src))
    out = sitk.GetImageFromArray(remap_labels(sitk.GetArrayFromImage(img), domain.original_to_unified(), str(src)))
    out.CopyInformation(img)
    sitk.WriteImage(out, str(dst), True)


# ---------------------------------------------------------------------------------------- plans
def _fit_length(values: Sequence[int], n: int) -> list[int]:
    values = list(values)
    return (values + [values[-1]] * n)[:n]


def coarse_2d_plans(plans: Mapping[str, Any], budget: StudyBudget, plans_name: str = PLANS_NAME) -> dict[str, Any]:
    """A plans variant whose only configuration is ``2d`` with the budget's in-plane spacing, square
    patch, batch size and maximum number of features, the network topology re-derived for that
    spacing and patch with nnU-Net's own rule (``get_pool_and_conv_props``, minimum feature map edge
    4, as the planner does). Everything else (normalization, resampling, network class and the
    multi-domain kwargs) stays as planned. ``plans`` is not modified.

    nnU-Net preprocesses and trains according to the plans, so writing this variant before
    ``nnUNetv2_preprocess -plans_name`` is the documented way to plan coarser."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    if "2d" not in plans.get("configurations", {}):
        raise InputDataError(f"The plans {plans.get('plans_name')!r} have no '2d' configuration to coarsen.")
    out = json.loads(json.dumps(plans))
    conf = out["configurations"]["2d"]
    spacing = [float(budget.spacing_mm)] * 2
    patch = [int(budget.patch_size)] * 2
    _, strides, kernels, new_patch, _ = get_pool_and_conv_props(spacing, patch, 4, 999999)
    new_patch = [int(p) for p in new_patch]
    if new_patch != patch:
        raise InputDataError(
            f"--patch-size {budget.patch_size} is not divisible by 2**(number of poolings) that nnU-Net chooses "
            f"for it ({new_patch}); use a multiple of 16, e.g. 48, 64 or 80."
        )
    n = len(strides)
    ak = conf["architecture"]["arch_kwargs"]
    base = int(budget.base_features)
    old_spacing = conf["spacing"]
    conf["median_image_size_in_voxels"] = [
        round(float(m) * float(s) / budget.spacing_mm, 1) for m, s in zip(conf["median_image_size_in_voxels"],
                                                                          old_spacing)
    ]
    conf.update({
        "data_identifier": f"{plans_name}_2d",
        "spacing": spacing,
        "patch_size": patch,
        "batch_size": int(budget.batch_size),
    })
    ak.update({
        "n_stages": n,
        "features_per_stage": [min(int(budget.max_features), base * 2 ** i) for i in range(n)],
        "kernel_sizes": [[int(k) for k in ks] for ks in kernels],
        "strides": [[int(s) for s in st] for st in strides],
        "n_conv_per_stage": _fit_length(ak["n_conv_per_stage"], n),
        "n_conv_per_stage_decoder": _fit_length(ak["n_conv_per_stage_decoder"], n - 1),
    })
    out["plans_name"] = plans_name
    out["configurations"] = {"2d": conf}
    return out


def describe_2d(plans: Mapping[str, Any]) -> dict[str, Any]:
    """Spacing, patch, batch size, stages and features of a plans file's ``2d`` configuration."""
    c = plans["configurations"]["2d"]
    ak = c["architecture"]["arch_kwargs"]
    return {"spacing": c["spacing"], "patch_size": c["patch_size"], "batch_size": c["batch_size"],
            "n_stages": ak["n_stages"], "features_per_stage": list(ak["features_per_stage"]),
            "network": c["architecture"]["network_class_name"].rsplit(".", 1)[-1]}


# ------------------------------------------------------------------------------- training state
def fold_folder(results: Path, dataset: str, trainer: str, fold: int, plans_name: str = PLANS_NAME) -> Path:
    return Path(results) / dataset / f"{trainer}__{plans_name}__{CONFIGURATION}" / f"fold_{fold}"


def training_status(fold_dir: Path, expected_val_cases: Sequence[str] | None = None,
                    file_ending: str = ".nii.gz") -> str:
    """What a training run still needs, from its files:

    - ``"done"``: ``checkpoint_final.pth`` and a complete ``validation/`` (``summary.json`` and a
      prediction for every expected validation case);
    - ``"validate"``: trained, but the final validation is missing or incomplete (``--val``);
    - ``"resume"``: a ``checkpoint_latest.pth`` or ``checkpoint_best.pth`` to continue from (``--c``);
    - ``"new"``: nothing to continue from.
    """
    fold_dir = Path(fold_dir)
    if (fold_dir / "checkpoint_final.pth").is_file():
        val = fold_dir / "validation"
        if (val / "summary.json").is_file() and all(
            (val / f"{c}{file_ending}").is_file() for c in (expected_val_cases or ())
        ):
            return "done"
        return "validate"
    if any((fold_dir / n).is_file() for n in ("checkpoint_latest.pth", "checkpoint_best.pth")):
        return "resume"
    return "new"


def train_command(dataset: str, fold: int, trainer: str, status: str, plans_name: str = PLANS_NAME) -> list[str]:
    """The ``nnUNetv2_train`` command for a run in state ``status`` (see :func:`training_status`)."""
    cmd = ["nnUNetv2_train", dataset, CONFIGURATION, str(fold), "-tr", trainer, "-p", plans_name, "-device", "cpu"]
    if status == "resume":
        cmd.append("--c")
    elif status == "validate":
        cmd.append("--val")
    elif status != "new":
        raise ValueError(f"no training command for status {status!r}")
    return cmd


_EPOCH_TIME = re.compile(r"Epoch time: ([0-9.]+) s")
_EPOCH_START = re.compile(r"^\S+ \S+ Epoch (\d+)\s*$", re.MULTILINE)


def epochs_completed(fold_dir: Path, num_epochs: int) -> int:
    """Epochs a training in ``fold_dir`` has completed, from nnU-Net's logs: all of them once
    ``checkpoint_final.pth`` exists, else the index of the last epoch it started (0-based, so the
    count of the epochs before it); 0 without logs."""
    fold_dir = Path(fold_dir)
    if (fold_dir / "checkpoint_final.pth").is_file():
        return num_epochs
    started = [int(m.group(1)) for log in sorted(fold_dir.glob("training_log_*.txt"))
               for m in _EPOCH_START.finditer(log.read_text(errors="replace"))]
    return min(max(started, default=0), num_epochs)


def format_progress(rows: Sequence[Mapping[str, Any]], jobs: int = 1) -> str:
    """The ``--stage status`` table and the remaining-time estimate.

    Each row: ``fold, scheme, dataset, state, epochs_done, epochs, iterations_left, s_per_it`` (the
    model's median seconds per iteration, None if it has not logged an epoch). A model without its
    own timing is estimated with the median of the measured models of its scheme (other folds), else
    with the slowest measured scheme it contains (DSL_MSC_MJAP costs at least what DSL_MSC and
    DSL_MJAP cost: it adds to each), else of its kind (Individual or multi-domain), else of all
    measured models; the total is divided by ``jobs``."""
    measured: dict[bool, list[float]] = {True: [], False: []}
    by_scheme: dict[str, list[float]] = {}
    for r in rows:
        if r["s_per_it"] is not None:
            measured[r["scheme"] == INDIVIDUAL].append(r["s_per_it"])
            by_scheme.setdefault(r["scheme"], []).append(r["s_per_it"])
    everything = measured[True] + measured[False]
    lines = ["| fold | scheme | dataset | state | epochs | iterations left | s per iteration |",
             "|---|---|---|---|---|---|---|"]
    left_s, unknown, queue = 0.0, 0, []
    for r in rows:
        spi = r["s_per_it"]
        est = spi if spi is not None else _estimate_seconds_per_iteration(
            r["scheme"], by_scheme, measured[r["scheme"] == INDIVIDUAL] or everything)
        if r["iterations_left"]:
            if est is None:
                unknown += 1
            else:
                left_s += r["iterations_left"] * est
                queue.append((r["fold"], r["iterations_left"] * est))
        spi_txt = f"{spi:.3f}" if spi is not None else (f"~{est:.3f} (estimate)" if est is not None else "n/a")
        lines.append(f"| {r['fold']} | {r['scheme']} | {r['dataset']} | {r['state']} | "
                     f"{r['epochs_done']}/{r['epochs']} | {r['iterations_left']} | {spi_txt} |")
    done = sum(r["state"] == "done" for r in rows)
    lines.append("")
    lines.append(f"{done} of {len(rows)} models done.")
    if done < len(rows):
        if unknown:
            lines.append(f"Remaining time: unknown ({unknown} model(s) to train and no epoch timed yet).")
        else:
            lines.append(f"Remaining training time: about {left_s / 3600 / max(1, jobs):.1f} h with --jobs {jobs} "
                         "(at the seconds per iteration measured so far; evaluation not included).")
            ends = fold_finish_seconds(queue, jobs)
            lines.append("Each fold trained (and then evaluated) in about: " + ", ".join(
                f"fold {f} {t / 3600:.1f} h" for f, t in ends.items()) + " from now (models in study order, "
                f"{max(1, jobs)} at a time).")
    return "\n".join(lines)


def _estimate_seconds_per_iteration(scheme: str, by_scheme: Mapping[str, Sequence[float]],
                                    fallback: Sequence[float]) -> float | None:
    if by_scheme.get(scheme):
        return float(np.median(by_scheme[scheme]))
    parts = set(scheme.split("_"))
    contained = [float(np.median(v)) for s, v in by_scheme.items()
                 if v and INDIVIDUAL not in (s, scheme) and set(s.split("_")) <= parts]
    if contained:
        return max(contained)
    return float(np.median(fallback)) if fallback else None


def fold_finish_seconds(queue: Sequence[tuple[int, float]], jobs: int) -> dict[int, float]:
    """When each fold's last model ends, in seconds from now: ``queue`` holds ``(fold, seconds left)``
    of the unfinished models in study order (running ones first), each taken by the first of ``jobs``
    workers to become free, as the study's thread pool does."""
    free = [0.0] * max(1, jobs)
    out: dict[int, float] = {}
    for fold, secs in queue:
        i = free.index(min(free))
        free[i] += secs
        out[fold] = max(out.get(fold, 0.0), free[i])
    return out


def epoch_times(fold_dir: Path) -> list[float]:
    """All ``Epoch time: X s`` values of nnU-Net's training logs in ``fold_dir`` (in file order)."""
    out: list[float] = []
    for log in sorted(Path(fold_dir).glob("training_log_*.txt")):
        out += [float(m.group(1)) for m in _EPOCH_TIME.finditer(log.read_text(errors="replace"))]
    return out


_AE_FROZEN = re.compile(r"MJAP autoencoder frozen; validation reconstruction Dice ([0-9.]+|nan)")


def autoencoder_dice(fold_dir: Path) -> float | None:
    """The validation reconstruction Dice of the MJAP label autoencoder when it was frozen (the last
    ``MJAP autoencoder frozen`` line of the training logs in ``fold_dir``); None if not logged."""
    vals = [float(m.group(1)) for log in sorted(Path(fold_dir).glob("training_log_*.txt"))
            for m in _AE_FROZEN.finditer(log.read_text(errors="replace"))]
    return vals[-1] if vals else None


def training_hours(epoch_times_per_model: Sequence[Sequence[float]], epochs: int) -> float | None:
    """Sum over models of (median logged epoch time x ``epochs``), in hours; None when no model has a
    logged epoch. The median is robust to epochs lengthened by pauses and to epochs repeated after an
    interruption, which a plain sum of the logged times counts in full."""
    timed = [t for t in epoch_times_per_model if len(t)]
    if not timed:
        return None
    return float(sum(np.median(t) * epochs for t in timed)) / 3600


# ------------------------------------------------------------------------------------------ state
class StudyState:
    """``DIR/state.json``: the study's configuration and what is done. Saved atomically after every change."""

    def __init__(self, path: Path):
        self.path = Path(path)
        # --jobs > 1: trainings finish in worker threads, which record their commands and seconds here
        self._lock = threading.RLock()
        if self.path.is_file():
            self.data = load_json(self.path)
            if self.data.get("version") != STATE_VERSION:
                raise StudyError(f"{self.path} has version {self.data.get('version')}, expected {STATE_VERSION}.")
        else:
            self.data = {"version": STATE_VERSION, "created": _now(), "config": None, "done": {},
                         "seconds": {}, "commands": []}

    @property
    def config(self) -> dict[str, Any] | None:
        return self.data.get("config")

    def set_config(self, config: Mapping[str, Any]) -> None:
        """Record ``config`` on the first run; later runs must agree (else :class:`InputDataError`)."""
        old = self.config
        if old is None:
            self.data["config"] = json.loads(json.dumps(config))
            self.save()
            return
        diff = config_differences(old, config)
        if diff:
            raise InputDataError(
                f"{self.path} was created with a different study configuration: " + "; ".join(diff)
                + ". Results of different budgets must not be mixed: re-run without these options (the recorded "
                "values are used) or use a new --workdir."
            )

    def is_done(self, step: str) -> bool:
        return step in self.data["done"]

    def mark_done(self, step: str, **info: Any) -> None:
        with self._lock:
            self.data["done"][step] = {"at": _now(), **info}
            self.save()

    def unmark(self, step: str) -> None:
        if self.data["done"].pop(step, None) is not None:
            self.save()

    def add_seconds(self, key: str, seconds: float) -> None:
        with self._lock:
            self.data["seconds"][key] = self.data["seconds"].get(key, 0.0) + float(seconds)
            self.save()

    def add_command(self, command: str) -> None:
        with self._lock:
            if command not in self.data["commands"]:
                self.data["commands"].append(command)
                self.save()

    def save(self) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text(json.dumps(self.data, indent=2))
            os.replace(tmp, self.path)


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences ``key: recorded X, now Y`` between two (nested) configurations."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += config_differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: recorded {a!r}, now {b!r}")
    return out


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")


def default_workdir() -> Path:
    """``$MTMD_STUDY_DIR`` or ``~/mtmd_study``."""
    return Path(os.environ.get(WORKDIR_ENV) or Path.home() / "mtmd_study").expanduser()


# ----------------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class Source:
    """One source dataset (one domain)."""

    folder: Path
    domain: str

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def dataset_id(self) -> int:
        return int(self.name[7:10])


def find_sources(folder: Path, domains: Sequence[str] | None = None) -> list[Source]:
    """The source datasets in ``folder``: every ``DatasetXXX_*`` subfolder with a dataset.json, sorted.

    Domain names: ``domains`` if given, the real datasets' names (lumbar, sij, pelvis) for them,
    else derived from the dataset names."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputDataError(
            f"Source folder {folder} does not exist. The real data is expected in {REALDATA_DIR} (see "
            "dataset_conversion/merge_real_musculoskeletal.py); pass --sources DIR holding DatasetXXX_* raw datasets."
        )
    found = sorted(p for p in folder.iterdir() if p.is_dir() and re.match(r"^Dataset\d{3}_.+", p.name)
                   and (p / "dataset.json").is_file())
    if len(found) < 2:
        raise InputDataError(
            f"{folder} holds {len(found)} nnU-Net raw dataset(s) (DatasetXXX_*/dataset.json); the study needs at "
            "least two source datasets (one per domain)."
        )
    if domains is None:
        domains = [REAL_DOMAIN_NAMES.get(p.name) or sanitize_domain_name(p.name) for p in found]
    elif len(domains) != len(found):
        raise InputDataError(
            f"--domains gives {len(domains)} names for the {len(found)} datasets in {folder} "
            f"({', '.join(p.name for p in found)}); give one per dataset, in this (sorted) order."
        )
    for d in domains:
        validate_domain_name(d, "--domains")
    ids = [int(p.name[7:10]) for p in found]
    if len(set(ids)) != len(ids):
        raise InputDataError(f"Dataset ids in {folder} are not unique: {[p.name for p in found]}.")
    return [Source(p, d) for p, d in zip(found, domains)]


# ------------------------------------------------------------------------------------- hardware
def hardware_info() -> dict[str, Any]:
    """nproc, CPU model (/proc/cpuinfo), RAM (/proc/meminfo), OS, Python/torch/nnunetv2 versions."""
    info: dict[str, Any] = {"nproc": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["ram_gib"] = round(int(line.split()[1]) / 1024**2, 1)
    with contextlib.suppress(OSError):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("torch", "nnunetv2", "nnunetv2-mtmd"):
        with contextlib.suppress(PackageNotFoundError):
            info[pkg] = version(pkg)
    info["nnunetv2-mtmd commit"] = code_commit()
    return info


COMMIT_FILE = Path(__file__).with_name("COMMIT")


def code_commit(commit_file: Path = COMMIT_FILE) -> str | None:
    """The git commit of this package's code, 12 hex digits: from ``COMMIT`` when the code is a
    ``git archive`` snapshot (export-subst in .gitattributes fills it in), else ``git rev-parse`` of
    the checkout it lives in, with ``-dirty`` when files under the package are modified; None when
    neither is available (e.g. an installed wheel)."""
    with contextlib.suppress(OSError):
        text = Path(commit_file).read_text().strip()
        if re.fullmatch(r"[0-9a-f]{40}", text):
            return text[:12]
    pkg = str(Path(commit_file).parent)
    try:
        head = subprocess.run(["git", "-C", pkg, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=30)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", pkg, "status", "--porcelain", "--", "."], capture_output=True,
                               text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


# ------------------------------------------------------------------------------------------ study
def _bin(name: str) -> str:
    cand = Path(sys.executable).parent / name
    return str(cand) if cand.exists() else name


@dataclass
class StudyOptions:
    """Everything the pipeline needs; see ``nnUNetv2_mtmd_study --help``."""

    workdir: Path
    sources_dir: Path | None = None
    domains: Sequence[str] | None = None
    schemes: Sequence[str] | None = None
    folds: Sequence[int] | None = None
    budget: dict[str, Any] | None = None  # explicitly given budget values only
    merged_id: int = MERGED_ID
    merged_name: str = MERGED_NAME
    num_processes: int = 2
    n_proc_da: int = 0
    jobs: int = 1
    report: Path | None = None
    dry_run: bool = False
    measure_iterations: int = 10
    verify: bool = True


class Study:
    """The pipeline. Construct with :class:`StudyOptions`, then :meth:`run` a stage."""

    def __init__(self, opts: StudyOptions):
        self.opts = opts
        self.dir = Path(opts.workdir).expanduser().resolve()
        self.dry = opts.dry_run
        self.state = StudyState(self.dir / STATE_FILE)
        cfg = self.state.config or {}
        given = dict(opts.budget or {})
        self.budget = StudyBudget.from_json({**StudyBudget.from_record(cfg.get("budget", {})), **given}).validate()
        src_dir = opts.sources_dir or (Path(cfg["sources_dir"]) if cfg.get("sources_dir") else REALDATA_DIR)
        self.sources_dir = Path(src_dir).expanduser().resolve()
        if cfg.get("sources") and opts.sources_dir is None and not self.sources_dir.is_dir():
            raise InputDataError(f"The recorded source folder {self.sources_dir} is gone; pass --sources DIR.")
        self.sources = find_sources(self.sources_dir, opts.domains or cfg.get("domains"))
        self.k = len(self.sources)
        self.budget.validate(self.k)
        requested = list(opts.schemes or self.state.data.get("schemes") or DEFAULT_SCHEMES)
        bad = [s for s in requested if s not in SCHEME_TRAINERS]
        if bad:
            raise InputDataError(f"Unknown scheme(s) {bad}; choose from {', '.join(SCHEME_TRAINERS)}.")
        self.schemes = list(dict.fromkeys(requested))
        self.folds = sorted(set(int(f) for f in (opts.folds if opts.folds is not None else
                                                   self.state.data.get("folds") or DEFAULT_FOLDS)))
        bad_f = [f for f in self.folds if not 0 <= f < N_SPLITS]
        if bad_f:
            raise InputDataError(f"Folds must be 0..{N_SPLITS - 1} (a {N_SPLITS}-fold split), found {bad_f}.")
        self.merged = f"Dataset{opts.merged_id:03d}_{opts.merged_name}"
        clash = [s.name for s in self.sources if s.dataset_id == opts.merged_id]
        if clash:
            raise InputDataError(f"Merged dataset id {opts.merged_id} is the id of source {clash[0]}; use --merged-id.")
        self.raw = self.dir / "nnUNet_raw"
        self.pre = self.dir / "nnUNet_preprocessed"
        self.results = self.dir / "nnUNet_results"
        report = opts.report or self.state.data.get("report")
        self.report_path = Path(report).expanduser().resolve() if report else self.dir / "results.md"
        self._config = {
            "sources_dir": str(self.sources_dir),
            "sources": [s.name for s in self.sources],
            "domains": [s.domain for s in self.sources],
            "merged": self.merged,
            "plans_name": PLANS_NAME,
            "budget": self.budget.to_json(),
            "n_splits": N_SPLITS,
            "split_seed": SPLIT_SEED,
        }
        self._spec: DomainSpec | None = None

    # ----------------------------------------------------------------------------- plumbing
    def _setup_logging(self) -> None:
        if self.dry:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)
        root = logging.getLogger("nnunetv2_mtmd")
        if not any(getattr(h, "_mtmd_study", False) for h in root.handlers):
            h = logging.FileHandler(self.dir / LOG_FILE)
            h.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
            h._mtmd_study = True  # type: ignore[attr-defined]
            root.addHandler(h)
            root.setLevel(logging.INFO)

    def env(self, train: bool = False) -> dict[str, str]:
        env = dict(os.environ)
        for k, p in (("raw", self.raw), ("preprocessed", self.pre), ("results", self.results)):
            env[f"nnUNet_{k}"] = str(p)
        env["nnUNet_compile"] = "f"
        env["nnUNet_def_n_proc"] = str(self.opts.num_processes)
        env.update(self.budget.env())
        env.pop(MEASURE_ENV, None)
        env.pop("nnUNet_n_proc_DA", None)  # planning crashes with it (DESIGN.md); set for training only
        env.pop(THREADS_ENV, None)
        if train:
            env["nnUNet_n_proc_DA"] = str(self.opts.n_proc_da)
            if self.opts.jobs > 1:
                threads = str(job_threads(self.opts.jobs))
                env.update({THREADS_ENV: threads, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
        return env

    def run_cmd(self, step: str, cmd: list[str], log_name: str, env: dict[str, str] | None = None) -> float:
        """Run a console script in a subprocess, output appended to ``DIR/logs/<log_name>.txt``."""
        text = shlex.join(cmd)
        if self.dry:
            print(text)
            return 0.0
        log_path = self.dir / "logs" / f"{log_name}.txt"
        logger.info("[%s] $ %s   (output: %s)", step, text, log_path.relative_to(self.dir))
        self.state.add_command(text)
        t0 = time.time()
        with open(log_path, "a") as log:
            log.write(f"\n[{_now()}] $ {text}\n")
            log.flush()
            proc = subprocess.run([_bin(cmd[0]), *cmd[1:]], env=env or self.env(), stdout=log,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        secs = time.time() - t0
        if proc.returncode != 0:
            tail = "".join(log_path.read_text(errors="replace").splitlines(True)[-15:])
            raise StudyError(f"Step '{step}' failed (exit code {proc.returncode}) after {secs:.0f} s: {text}\n"
                             f"Last lines of {log_path}:\n{tail}")
        logger.info("[%s]   done in %.0f s", step, secs)
        return secs

    def run_inprocess(self, step: str, name: str, main: Callable[[list[str]], int], args: list[str]) -> float:
        """Run one of the plugin's console scripts in this process (same code as the console script)."""
        text = shlex.join([name, *args])
        if self.dry:
            print(text)
            return 0.0
        logger.info("[%s] $ %s", step, text)
        self.state.add_command(text)
        t0 = time.time()
        rc = main(args)
        if rc != 0:
            raise StudyError(f"Step '{step}' failed (exit code {rc}): {text}")
        return time.time() - t0

    def note(self, text: str) -> None:
        """A Python step: printed as a comment in a dry run, logged otherwise."""
        if self.dry:
            print(f"# {text}")
        else:
            logger.info(text)
            self.state.add_command(f"# {text}")

    @property
    def spec(self) -> DomainSpec:
        if self._spec is None:
            self._spec = DomainSpec.from_dataset_json(self.raw / self.merged / "dataset.json")
        return self._spec

    def file_ending(self) -> str:
        return load_json(self.raw / self.merged / "dataset.json").get("file_ending", ".nii.gz")

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One study process per work folder."""
        if self.dry:
            yield
            return
        import fcntl

        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "study.lock", "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                f.seek(0)
                raise StudyError(f"Another study process is running in {self.dir} (pid {f.read().strip() or '?'}); "
                                 "wait for it or stop it first.") from e
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def progress(self) -> list[dict[str, Any]]:
        """One row per model of every requested fold and scheme (see :func:`format_progress`); reads
        files only, so it works while the study runs."""
        rows = []
        for fold in self.eval_folds:
            for scheme, dataset, trainer in self.runs(fold, self.eval_schemes):
                k = 1 if scheme == INDIVIDUAL else self.k
                per_epoch = self.budget.iterations_per_epoch(k)
                fd = fold_folder(self.results, dataset, trainer, fold)
                status = self.run_status(dataset, trainer, fold)
                done_ep = epochs_completed(fd, self.budget.epochs)
                times = epoch_times(fd)
                state = {"done": "done", "validate": "final validation missing", "new": "not started"}.get(
                    status, f"training (epoch {done_ep + 1})")
                rows.append({"fold": fold, "scheme": scheme, "dataset": dataset, "state": state,
                             "epochs_done": done_ep, "epochs": self.budget.epochs,
                             "iterations_left": (self.budget.epochs - done_ep) * per_epoch,
                             "s_per_it": float(np.median(times)) / per_epoch if times else None})
        return rows

    # --------------------------------------------------------------------------------- run
    def run(self, stage: str = "all") -> None:
        if stage not in STAGES:
            raise InputDataError(f"Unknown stage {stage!r}; choose from {', '.join(STAGES)}.")
        if stage == "status":  # read-only: no lock, so it works beside a running study
            if self.state.config is None:
                raise InputDataError(f"No study in {self.dir} yet (no state.json with a configuration); start one "
                                     "with --stage all.")
            print(format_progress(self.progress(), self.opts.jobs))
            return
        with self.lock():
            self._setup_logging()
            if not self.dry:
                self.state.set_config(self._config)
                self.state.data["schemes"] = list(dict.fromkeys([*self.state.data.get("schemes", []), *self.schemes]))
                self.state.data["folds"] = sorted(set(self.state.data.get("folds", [])) | set(self.folds))
                self.state.data["report"] = str(self.report_path)
                self.state.save()
                logger.info("=== study stage '%s' in %s: schemes %s, folds %s, budget %s", stage, self.dir,
                            " ".join(self.schemes), self.folds, self.budget.to_json())
            if stage in ("all", "prepare", "measure"):
                self.prepare()
            if stage == "measure":
                self.measure()
                return
            if stage in ("all", "train"):
                self.train(evaluate_as_we_go=stage == "all")
            if stage in ("all", "evaluate"):
                self.evaluate()
            if stage in ("all", "report"):
                self.report()

    # ----------------------------------------------------------------------------- prepare
    def prepare(self) -> None:
        st = self.state
        srcs = self.sources
        if not st.is_done("copy"):
            for s in srcs:
                dst = self.raw / s.name
                self.note(f"copy {s.folder} -> {dst}")
                if not self.dry:
                    with atomic_output_dir(dst, overwrite=True) as tmp:
                        shutil.copytree(s.folder, tmp, dirs_exist_ok=True)
            if not self.dry:
                st.mark_done("copy")
        if not st.is_done("merge"):
            ch = load_json(srcs[0].folder / "dataset.json")["channel_names"]
            names = [ch[str(i)] for i in range(len(ch))]
            cmd = ["nnUNetv2_mtmd_merge", "-d", *(str(self.raw / s.name) for s in srcs), "--domains",
                   *(s.domain for s in srcs), "-o", str(self.opts.merged_id), "-n", self.opts.merged_name,
                   "--channel_names", *names, "--drop_duplicates", "--overwrite"]
            self.run_cmd("merge", cmd, "prepare")
            if not self.dry:
                self._drop_cases_missing_from_merge()
                st.mark_done("merge")
        ids = [str(s.dataset_id) for s in srcs] + [str(self.opts.merged_id)]
        np_ = str(self.opts.num_processes)
        if not st.is_done("fingerprint"):
            self.run_cmd("fingerprint", ["nnUNetv2_extract_fingerprint", "-d", *ids, "-np", np_]
                         + (["--verify_dataset_integrity"] if self.opts.verify else []), "prepare")
            if not self.dry:
                st.mark_done("fingerprint")
        if not st.is_done("plan"):
            self.run_cmd("plan", ["nnUNetv2_plan_experiment", "-d", *ids[:-1]], "prepare")
            self.run_cmd("plan", ["nnUNetv2_plan_experiment", "-d", ids[-1], "-pl", "nnUNetPlannerMTMD"], "prepare")
            if not self.dry:
                st.mark_done("plan")
        if not st.is_done("plans_variant"):
            self.note(f"write {PLANS_NAME}.json next to every nnUNetPlans.json: 2d with in-plane spacing "
                      f"{self.budget.spacing_mm} mm, patch {self.budget.patch_size}^2, batch {self.budget.batch_size}, "
                      f"{self.budget.base_features} features in the first stage, at most {self.budget.max_features}")
            if not self.dry:
                planned = {}
                for name in [s.name for s in srcs] + [self.merged]:
                    src = load_json(self.pre / name / "nnUNetPlans.json")
                    variant = coarse_2d_plans(src, self.budget)
                    save_json(variant, self.pre / name / f"{PLANS_NAME}.json")
                    planned[name] = {"planned": describe_2d(src), "study": describe_2d(variant)}
                    logger.info("  %s: planned %s -> study %s", name, planned[name]["planned"],
                                planned[name]["study"])
                st.mark_done("plans_variant", plans=planned)
        if not st.is_done("preprocess"):
            self.run_cmd("preprocess", ["nnUNetv2_preprocess", "-d", *ids, "-plans_name", PLANS_NAME, "-c",
                                        CONFIGURATION, "-np", np_], "prepare")
            if not self.dry:
                st.mark_done("preprocess")
        if not st.is_done("splits"):
            self.note(f"write a domain-stratified {N_SPLITS}-fold split of {self.merged} (seed {SPLIT_SEED}) and "
                      "the same held-out cases for every source dataset")
            if not self.dry:
                self.write_splits()
                st.mark_done("splits")

    def _drop_cases_missing_from_merge(self) -> None:
        """Remove from the Individual copies the cases the merge dropped (exact duplicates), so that
        both sides train and evaluate on the same cases."""
        fe = self.file_ending()
        merged = {p.name[: -len(fe)] for p in (self.raw / self.merged / "labelsTr").iterdir()
                  if p.name.endswith(fe)}
        for s in self.sources:
            dom = self.spec.by_name(s.domain)
            folder = self.raw / s.name
            labels = sorted(p.name[: -len(fe)] for p in (folder / "labelsTr").iterdir() if p.name.endswith(fe))
            dropped = [c for c in labels if dom.case_id(c) not in merged]
            for c in dropped:
                logger.warning("  %s: case %s was dropped by the merge (duplicate image); removed from the copy too",
                               s.name, c)
                (folder / "labelsTr" / f"{c}{fe}").unlink()
                for f in (folder / "imagesTr").glob(f"{c}_[0-9][0-9][0-9][0-9]{fe}"):
                    f.unlink()
            if dropped:
                dj = load_json(folder / "dataset.json")
                dj["numTraining"] = len(labels) - len(dropped)
                save_json(dj, folder / "dataset.json")

    def merged_case_ids(self) -> list[str]:
        fe = self.file_ending()
        return sorted(p.name[: -len(fe)] for p in (self.raw / self.merged / "labelsTr").iterdir()
                      if p.name.endswith(fe))

    def write_splits(self) -> None:
        from nnunetv2_mtmd.evaluation.splits import describe_splits, domain_stratified_kfold, write_splits

        splits = domain_stratified_kfold(self.merged_case_ids(), self.spec, N_SPLITS, SPLIT_SEED)
        write_splits(splits, self.pre / self.merged / "splits_final.json")
        logger.info("  merged split:\n%s", describe_splits(splits, self.spec))
        for dom_name, sp in individual_splits(splits, self.spec).items():
            write_splits(sp, self.pre / self.spec.by_name(dom_name).source_dataset / "splits_final.json")

    def load_splits(self, dataset: str) -> list[Split]:
        return load_json(self.pre / dataset / "splits_final.json")

    # ------------------------------------------------------------------------------- train
    def runs(self, fold: int, schemes: Sequence[str] | None = None) -> list[tuple[str, str, str]]:
        """``(scheme, dataset, trainer)`` of every model of one fold."""
        out = []
        for s in schemes or self.schemes:
            datasets = [src.name for src in self.sources] if s == INDIVIDUAL else [self.merged]
            out += [(s, d, SCHEME_TRAINERS[s]) for d in datasets]
        return out

    def run_status(self, dataset: str, trainer: str, fold: int) -> str:
        expected = None
        split_file = self.pre / dataset / "splits_final.json"
        if split_file.is_file():
            expected = self.load_splits(dataset)[fold]["val"]
        fe = load_json(self.raw / dataset / "dataset.json").get("file_ending", ".nii.gz") \
            if (self.raw / dataset / "dataset.json").is_file() else ".nii.gz"
        return training_status(fold_folder(self.results, dataset, trainer, fold), expected, fe)

    def fold_complete(self, fold: int, schemes: Sequence[str] | None = None) -> bool:
        return all(self.run_status(d, tr, fold) == "done" for _, d, tr in self.runs(fold, schemes))

    @property
    def eval_schemes(self) -> list[str]:
        """Every scheme ever requested in this work folder (state.json) plus this run's, in table order:
        evaluation and report always cover all of them, on the folds finished by all of them."""
        got = {*self.state.data.get("schemes", []), *self.schemes}
        return [s for s in SCHEME_TRAINERS if s in got]

    @property
    def eval_folds(self) -> list[int]:
        return sorted({*self.state.data.get("folds", []), *self.folds})

    def _train_one(self, fold: int, scheme: str, dataset: str, trainer: str, status: str) -> None:
        key = f"train:fold{fold}:{scheme}:{dataset}"
        if not self.dry:
            logger.info("[train] fold %d %s on %s: %s", fold, scheme, dataset,
                        {"new": "starting", "resume": "continuing from a checkpoint (--c)",
                         "validate": "running the final validation (--val)"}[status])
        secs = self.run_cmd(f"train fold {fold} {scheme} {dataset}", train_command(dataset, fold, trainer, status),
                            f"train_fold{fold}_{scheme}_{dataset}", self.env(train=True))
        if not self.dry:
            self.state.add_seconds(key, secs)
            if self.run_status(dataset, trainer, fold) != "done":
                raise StudyError(f"nnUNetv2_train for fold {fold} {scheme} on {dataset} ended without a "
                                 "complete validation folder; see the log in DIR/logs.")
            self.state.mark_done(key, seconds=self.state.data["seconds"][key])

    def pending_trainings(self) -> list[tuple[int, str, str, str, str]]:
        """``(fold, scheme, dataset, trainer, status)`` of every model still to train, in study order;
        models already done are marked done in the state on the way."""
        out = []
        for fold in self.folds:
            for scheme, dataset, trainer in self.runs(fold):
                status = self.run_status(dataset, trainer, fold)
                if status == "done":
                    key = f"train:fold{fold}:{scheme}:{dataset}"
                    if not self.dry and not self.state.is_done(key):
                        self.state.mark_done(key)
                    logger.info("[train] fold %d %s on %s: done (skipped)", fold, scheme, dataset)
                    continue
                out.append((fold, scheme, dataset, trainer, status))
        return out

    def train(self, evaluate_as_we_go: bool = False) -> None:
        """Train every pending model; with ``jobs > 1`` that many at once (in study order, each with
        ``cores // jobs`` torch threads). A fold is evaluated and reported as soon as it is complete."""
        pending = self.pending_trainings()
        evaluated: set[int] = set()

        def evaluate_complete_folds() -> None:
            if not evaluate_as_we_go or self.dry:
                return
            for fold in self.folds:
                if fold not in evaluated and self.fold_complete(fold):
                    evaluated.add(fold)
                    self.evaluate()
                    self.report()

        if self.opts.jobs <= 1 or self.dry:
            evaluate_complete_folds()  # a fold completed before this run (stopped during its evaluation)
            for item in pending:
                self._train_one(*item)
                evaluate_complete_folds()
            evaluate_complete_folds()
            return
        logger.info("[train] %d trainings at once, %d torch thread(s) each", self.opts.jobs,
                    job_threads(self.opts.jobs))
        with ThreadPoolExecutor(max_workers=self.opts.jobs) as pool:
            futures = [pool.submit(self._train_one, *item) for item in pending]
            try:
                # a fold completed before this run (stopped during its evaluation): now, while the
                # workers train, not when the next training ends
                evaluate_complete_folds()
                for fut in as_completed(futures):
                    fut.result()
                    evaluate_complete_folds()
            except BaseException:
                # models already running continue to their end (each checkpoints every epoch anyway)
                for f in futures:
                    f.cancel()
                raise
        evaluate_complete_folds()

    # ---------------------------------------------------------------------------- evaluate
    def complete_folds(self) -> list[int]:
        return [f for f in self.eval_folds if (self.pre / self.merged / "splits_final.json").is_file()
                and self.fold_complete(f, self.eval_schemes)]

    def gather(self, scheme: str, fold: int, out: Path) -> int:
        """Held-out predictions of ``scheme``'s models of ``fold`` into ``out`` (unified labels, merged case
        ids). Returns the number of cases."""
        fe = self.file_ending()
        n = 0
        with atomic_output_dir(out, overwrite=True) as tmp:
            for _, dataset, trainer in self.runs(fold, [scheme]):
                val = fold_folder(self.results, dataset, trainer, fold) / "validation"
                for p in sorted(p for p in val.iterdir() if p.name.endswith(fe)):
                    if scheme == INDIVIDUAL:
                        dom = next(d for d in self.spec.domains if d.source_dataset == dataset)
                        unify_individual_prediction(p, tmp / f"{dom.case_id(p.name[: -len(fe)])}{fe}", dom)
                    else:
                        shutil.copyfile(p, tmp / p.name)
                    n += 1
        return n

    def best_multi_domain_scheme(self) -> str | None:
        """The multi-domain scheme with the highest mean over domains of the domain-mean Dice (raw)."""
        best, best_val = None, -1.0
        for s in self.eval_schemes:
            if s == INDIVIDUAL:
                continue
            summ = self.dir / "evaluation" / s / "raw" / "summary.json"
            if not summ.is_file():
                continue
            val = domain_mean_dice(load_json(summ))
            if val is not None and val > best_val:
                best, best_val = s, val
        return best

    def evaluate(self) -> None:
        from nnunetv2_mtmd.cli import compare as compare_cli
        from nnunetv2_mtmd.cli import evaluate as evaluate_cli
        from nnunetv2_mtmd.cli import postprocess as postprocess_cli

        folds = self.complete_folds() if not self.dry else self.eval_folds
        schemes = self.eval_schemes
        if not folds:
            logger.info("[evaluate] no fold has finished training for every scheme yet: nothing to evaluate.")
            return
        # "parts": post-processing keeps as many components as a structure has parts (evaluations made
        # before, with one component per structure, are redone)
        key = f"evaluate:parts:folds{','.join(map(str, folds))}:{','.join(schemes)}"
        if self.state.is_done(key):
            logger.info("[evaluate] folds %s already evaluated (skipped)", folds)
            return
        logger.info("[evaluate] folds %s, schemes %s", folds, schemes)
        merged_dir = str(self.raw / self.merged)
        ref = str(self.raw / self.merged / "labelsTr")
        np_ = str(self.opts.num_processes)
        ev = self.dir / "evaluation"
        components = {fold: self.fold_components(fold) for fold in folds}
        self.reference_parts(folds, components)
        by_fold = self.dir / "predictions_by_fold"
        for s in schemes:
            pred, pp = self.dir / "predictions" / s, self.dir / "predictions_postprocessed" / s
            raw_f = {f: by_fold / s / f"fold_{f}" for f in folds}
            pp_f = {f: by_fold / f"{s}_postprocessed" / f"fold_{f}" for f in folds}
            self.note(f"gather the held-out predictions of {s} of each fold {folds} into {by_fold / s}, all in {pred}"
                      + (" (labels remapped to the unified space, case ids prefixed)" if s == INDIVIDUAL else ""))
            if not self.dry:
                for f in folds:
                    self.gather(s, f, raw_f[f])
                logger.info("  %s: %d held-out predictions", s, union_folders(raw_f, pred))
            # post-processed fold by fold: a fold's parts are counted in its own training labels
            for f in folds:
                self.run_inprocess("postprocess", "nnUNetv2_mtmd_postprocess", postprocess_cli.main,
                                   ["-i", str(raw_f[f]), "-o", str(pp_f[f]), "-d", merged_dir, "-np", np_,
                                    "--components", str(components[f]), "--overwrite"])
            if not self.dry:
                union_folders(pp_f, pp)
            for variant, folder in (("raw", pred), ("postprocessed", pp)):
                self.run_inprocess("evaluate", "nnUNetv2_mtmd_evaluate", evaluate_cli.main,
                                   ["-ref", ref, "-pred", str(folder), "-d", merged_dir,
                                    "-o", str(ev / s / variant), "-np", np_, "--allow-missing", "--overwrite"])
        if len(schemes) > 1:  # Individual (if run) is first: the reference of the KS tests
            for variant in EVAL_VARIANTS:
                self.run_inprocess("compare", "nnUNetv2_mtmd_compare", compare_cli.main,
                                   [*(str(ev / s / variant) for s in schemes), "-o", str(ev / f"compare_{variant}"),
                                    "--names", *schemes, "--overwrite"])
        best = self.best_multi_domain_scheme() if not self.dry else next(
            (s for s in schemes if s != INDIVIDUAL), None)
        # every multi-domain scheme, so that the report can set the schemes side by side (the paper's
        # Table 5): how far apart the domains' embeddings are is what MSC changes, not the Dice
        emb_dirs = self.embeddings(folds[0], [s for s in schemes if s != INDIVIDUAL])
        if not self.dry:
            save_json({"folds": folds, "schemes": schemes, "best_multi_domain": best,
                       "embeddings": str(emb_dirs[best]) if best else None,
                       "embeddings_by_scheme": {s: str(e) for s, e in emb_dirs.items()}, "at": _now()},
                      ev / "evaluated.json")
            self.state.mark_done(key)

    def embeddings(self, fold: int, schemes: Sequence[str]) -> dict[str, Path]:
        """``nnUNetv2_mtmd_embeddings`` of each scheme's model of ``fold`` into ``DIR/embeddings/<scheme>_foldX``.

        Every evaluation analyses the first evaluated fold, so without this check each later fold's
        evaluation would recompute the same embeddings (minutes per scheme on a CPU). They are reused
        while the model's ``checkpoint_final.pth`` is the one they were computed from."""
        out = {}
        for s in schemes:
            emb_dir = out[s] = self.dir / "embeddings" / f"{s}_fold{fold}"
            ckpt = fold_folder(self.results, self.merged, SCHEME_TRAINERS[s], fold) / "checkpoint_final.pth"
            key = f"embeddings:{s}:fold{fold}:{ckpt.stat().st_mtime_ns if ckpt.is_file() else 'none'}"
            if self.state.is_done(key) and (emb_dir / "similarity.csv").is_file():
                logger.info("[embeddings] %s, fold %d: computed before from the same checkpoint (reused)", s, fold)
                continue
            self.run_cmd("embeddings", ["nnUNetv2_mtmd_embeddings", "-d", self.merged, "-c", CONFIGURATION,
                                        "-tr", SCHEME_TRAINERS[s], "-p", PLANS_NAME, "-f", str(fold),
                                        "-o", str(emb_dir), "-device", "cpu", "--overwrite", "--no_progress"],
                         "embeddings")
            if not self.dry:
                self.state.mark_done(key)
        return out

    def fold_components(self, fold: int) -> Path:
        """The number of parts of every structure, counted in the training labels of ``fold`` only (the
        held-out cases must not inform their own post-processing), as ``DIR/evaluation/components_foldX.json``."""
        from nnunetv2_mtmd.evaluation.postprocess import expected_components, structure_names

        out = self.dir / "evaluation" / f"components_fold{fold}.json"
        self.note(f"count the parts of every structure in the training labels of fold {fold} into {out}")
        if self.dry:
            return out
        fe = self.file_ending()
        train = self.load_splits(self.merged)[fold]["train"]
        files = [self.raw / self.merged / "labelsTr" / f"{c}{fe}" for c in train]
        comp = expected_components(files, self.spec, fe)
        out.parent.mkdir(parents=True, exist_ok=True)
        save_json({name: comp[lab] for name, lab in structure_names(self.spec).items()}, out)
        return out

    def reference_parts(self, folds: Sequence[int], components: Mapping[int, Path]) -> Path:
        """The held-out reference structures that the post-processing (with each fold's ``components``
        file) would cut, as ``DIR/evaluation/reference_parts.json`` (:func:`parts_beyond_kept`)."""
        from nnunetv2_mtmd.evaluation.postprocess import parts_beyond_kept, read_components

        out = self.dir / "evaluation" / "reference_parts.json"
        self.note(f"list the held-out reference structures with more parts than the post-processing keeps into {out}")
        if self.dry:
            return out
        fe, splits = self.file_ending(), self.load_splits(self.merged)
        n, rows = 0, []
        for f in folds:
            files = [self.raw / self.merged / "labelsTr" / f"{c}{fe}" for c in splits[f]["val"]]
            m, cut = parts_beyond_kept(files, self.spec, fe, read_components(components[f], self.spec))
            n += m
            rows += [{"fold": f, **r} for r in cut]
        save_json({"folds": list(folds), "structures": n, "cut": rows}, out)
        return out

    # ------------------------------------------------------------------------------ report
    def report(self) -> None:
        ev_file = self.dir / "evaluation" / "evaluated.json"
        if self.dry:
            self.note(f"write {self.report_path} from {self.dir / 'evaluation'}")
            return
        if not ev_file.is_file():
            logger.info("[report] nothing evaluated yet: no report written.")
            return
        text = build_report(self, load_json(ev_file))
        if self.report_path.is_file():
            text = keep_discussion(text, self.report_path.read_text(encoding="utf-8"))
        text, stray = mark_stale_discussion(text)
        if stray:
            logger.warning("[report] the discussion of %s quotes numbers that appear nowhere else in the report "
                           "(stale after new folds, or typed by hand?): %s", self.report_path, ", ".join(stray))
        self.report_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.report_path.with_name(f".{self.report_path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.report_path)
        logger.info("[report] wrote %s", self.report_path)

    # ----------------------------------------------------------------------------- measure
    def measure(self) -> dict[str, Any]:
        """Time every trainer on fold 0: 2 epochs of ``measure_iterations`` (times K for multi-domain)
        iterations each; the study trainers log the median wall-clock and process CPU time of
        ``train_step`` per epoch (data loading excluded), the second epoch is used. No checkpoints, no
        final validation; the runs go to ``DIR/measure`` and do not touch the study's results. Writes
        ``DIR/measure/speed.json`` and prints the expected hours of the budget."""
        n = self.opts.measure_iterations
        mb = replace(self.budget, iterations=2 * n, epochs=2, ae_iterations=min(self.budget.ae_iterations, 2 * n))
        results = self.dir / "measure" / "nnUNet_results"
        out: dict[str, Any] = {"iterations_per_epoch_individual": n, "budget": mb.to_json(), "runs": {}}
        for scheme, dataset, trainer in self.runs(0):
            env = {**self.env(train=True), **mb.env(), MEASURE_ENV: "1", "nnUNet_results": str(results)}
            fd = fold_folder(results, dataset, trainer, 0)
            if fd.exists() and not self.dry:
                shutil.rmtree(fd)
            secs = self.run_cmd(f"measure {scheme} {dataset}",
                                [*train_command(dataset, 0, trainer, "new"), "--disable_checkpointing"],
                                f"measure_{scheme}_{dataset}", env)
            if self.dry:
                continue
            steps = measured_step_times(fd)
            if not steps:
                raise StudyError(f"No 'Study measure' lines in the training log of {fd}; see DIR/logs.")
            last = steps[-1]
            out["runs"].setdefault(scheme, {})[dataset] = {**last, "epoch_seconds": epoch_times(fd),
                                                          "run_seconds": secs}
            logger.info("[measure] %s on %s: train_step %.2f s wall, %.2f s CPU (load average %.1f)", scheme,
                        dataset, last["wall"], last["cpu"], last["load"])
        if self.dry:
            return out
        nproc = os.cpu_count() or 1
        wall = {s: float(np.mean([v["wall"] for v in d.values()])) for s, d in out["runs"].items()}
        cpu = {s: float(np.mean([v["cpu"] for v in d.values()])) for s, d in out["runs"].items()}
        out.update({
            "seconds_per_iteration_wall": wall,
            "cpu_seconds_per_iteration": cpu,
            "expected_hours_at_measured_load": estimate_hours(self.budget, wall, self.k, len(self.folds)),
            "expected_hours_alone_best": estimate_hours(self.budget, {s: c / nproc for s, c in cpu.items()},
                                                        self.k, len(self.folds)),
            "expected_hours_alone_worst": estimate_hours(self.budget, cpu, self.k, len(self.folds)),
            "hardware": hardware_info(),
        })
        save_json(out, self.dir / "measure" / "speed.json")
        b = self.budget
        lines = [f"train_step time per iteration (batch {b.batch_size}, patch {b.patch_size}^2 at {b.spacing_mm} mm, "
                 f"median of {n} (x K) iterations) and expected training hours of I = {b.iterations} for "
                 f"{len(self.folds)} fold(s):",
                 f"  {'scheme':14s} {'wall s/it':>9s} {'CPU s/it':>9s} {'h (load)':>9s} {'h alone':>15s}"]
        for s in wall:
            lo = out["expected_hours_alone_best"][s]
            hi = out["expected_hours_alone_worst"][s]
            lines.append(f"  {s:14s} {wall[s]:9.2f} {cpu[s]:9.2f} {out['expected_hours_at_measured_load'][s]:9.1f} "
                         f"{lo:6.1f} - {hi:6.1f}")
        tot = {k: out[f"expected_hours_{k}"]["total"] for k in ("at_measured_load", "alone_best", "alone_worst")}
        lines.append(f"  {'total':14s} {'':9s} {'':9s} {tot['at_measured_load']:9.1f} "
                     f"{tot['alone_best']:6.1f} - {tot['alone_worst']:6.1f}")
        lines.append(f"'h (load)': at the load average measured ({hardware_info().get('load_average')} now); "
                     f"'h alone': CPU time / {nproc} cores (perfect parallelism) to CPU time on one core. "
                     "Training iterations only: add data loading stalls, per-epoch validation, the final "
                     "validations and the MJAP autoencoder phases.")
        logger.info("\n".join(lines))
        return out


_MEASURE_LINE = re.compile(r"Study measure: epoch (\d+): train_step wall median ([0-9.]+) s, process CPU median "
                           r"([0-9.]+) s over (\d+) iterations; load average ([0-9.]+)")


def measured_step_times(fold_dir: Path) -> list[dict[str, float]]:
    """The ``Study measure`` lines of the training logs in ``fold_dir``: per epoch the median wall and
    process CPU seconds of ``train_step``, the number of iterations and the load average."""
    out = []
    for log in sorted(Path(fold_dir).glob("training_log_*.txt")):
        for m in _MEASURE_LINE.finditer(log.read_text(errors="replace")):
            out.append({"epoch": int(m.group(1)), "wall": float(m.group(2)), "cpu": float(m.group(3)),
                        "iterations": int(m.group(4)), "load": float(m.group(5))})
    return out


# ----------------------------------------------------------------------------------------- report
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


def union_folders(folders: Mapping[int, Path], out: Path) -> int:
    """Every file of the per-fold ``folders`` into ``out`` (all or nothing); a JSON file that several folds
    have (``postprocessing_mtmd.json``) is kept once per fold as ``<stem>_fold<i>.json``. A case file in two
    folds is an error (their validation sets must not overlap). Returns the number of non-JSON files."""
    n = 0
    with atomic_output_dir(out, overwrite=True) as tmp:
        for fold, folder in folders.items():
            for f in sorted(folder.iterdir()):
                if not f.is_file():
                    continue
                is_json = f.suffix == ".json"
                target = tmp / (f"{f.stem}_fold{fold}.json" if is_json else f.name)
                if target.exists():
                    raise StudyError(f"{f.name} is predicted by two folds: the folds' validation sets overlap; "
                                     "the splits are inconsistent.")
                shutil.copyfile(f, target)
                n += not is_json
    return n


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
    add(f"Generated by `nnUNetv2_mtmd_study` (nnunetv2_mtmd/study.py) on {_now()} from the files in `{d}`. "
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
        f"nnunetv2-mtmd {hw.get('nnunetv2-mtmd', '?')} (code of commit {hw.get('nnunetv2-mtmd commit') or 'unknown'}, "
        "which wrote this report); device: CPU (`-device cpu`)")
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
        pics_dir.mkdir(parents=True, exist_ok=True)
        for n in shown:
            src = Path(emb) / f"tsne_{n}.png"
            if src.is_file():
                dst = pics_dir / f"tsne_{best}_{n}.png"
                shutil.copyfile(src, dst)
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


def job_threads(jobs: int, cores: int | None = None) -> int:
    """Torch threads per training when ``jobs`` trainings share ``cores`` (default: ``os.cpu_count()``)."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, jobs))


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
