"""What nnU-Net's files say about a training: status, epochs, timings, `--stage status` estimates, and
what the plugin's trainers log or write next to them (the MJAP autoencoder's reconstruction Dice, the
gradient-norm ratios of the regularizers)."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nnunetv2_mtmd.apps.study.constants import ARCHIVED_MARKER, CONFIGURATION, INDIVIDUAL, PLANS_NAME
from nnunetv2_mtmd.io import load_json

logger = logging.getLogger(__name__)


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

    A model restored from a study archive (:data:`ARCHIVED_MARKER`, no checkpoint) is ``"done"``: its
    evaluation came with it (:mod:`~nnunetv2_mtmd.apps.study.archive`).
    """
    fold_dir = Path(fold_dir)
    if (fold_dir / ARCHIVED_MARKER).is_file() and not any(
            (fold_dir / n).is_file() for n in ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")):
        return "done"
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
    model's median seconds per iteration, None if it has not logged an epoch), optionally ``code``
    (its model-code fingerprint) and ``later`` (a scheme trained "if time allows", after every fold of
    the others: its models finish apart from the folds'), in the run order. A model without its
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
    lines = ["| fold | scheme | dataset | state | epochs | iterations left | s per iteration | model code |",
             "|---|---|---|---|---|---|---|---|"]
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
                queue.append(("later" if r.get("later") else r["fold"], r["iterations_left"] * est))
        spi_txt = f"{spi:.3f}" if spi is not None else (f"~{est:.3f} (estimate)" if est is not None else "n/a")
        lines.append(f"| {r['fold']} | {r['scheme']} | {r['dataset']} | {r['state']} | "
                     f"{r['epochs_done']}/{r['epochs']} | {r['iterations_left']} | {spi_txt} | {r.get('code', '-')} |")
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
            later = ", ".join(dict.fromkeys(r["scheme"] for r in rows if r.get("later")))
            lines.append("Each fold trained (and then evaluated) in about: " + ", ".join(
                f"fold {f} {t / 3600:.1f} h" if f != "later" else f"the later schemes ({later}) {t / 3600:.1f} h"
                for f, t in ends.items()) + f" from now (models in the run order, {max(1, jobs)} at a time).")
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


def fold_finish_seconds(queue: Sequence[tuple[Hashable, float]], jobs: int) -> dict[Hashable, float]:
    """When each fold's last model ends, in seconds from now: ``queue`` holds ``(fold, seconds left)``
    of the unfinished models in the run order (running ones first; a group other than a fold, such as
    ``"later"``, works the same), each taken by the first of ``jobs`` workers to become free, as the
    study's thread pool does."""
    free = [0.0] * max(1, jobs)
    out: dict[Hashable, float] = {}
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


#: Written by the MJAP autoencoder phase into the model's fold folder.
AUTOENCODER_FILE = "label_autoencoder.json"


def autoencoder_summary(fold_dir: Path) -> dict[str, Any] | None:
    """What the report shows of a model's MJAP label autoencoder.

    From ``fold_dir/label_autoencoder.json`` (``{"reconstruction_dice": {domain: {structure: value}},
    "iterations", "seconds", "fingerprint", "variant", "cache"}``): that dict with ``"source": "file"``.
    Without the file (models trained before the autoencoder phase wrote it): ``{"source": "log",
    "overall": value}`` from :func:`autoencoder_dice`; None when neither exists. An unreadable file is
    logged and treated as missing (the report must not stop the study)."""
    path = Path(fold_dir) / AUTOENCODER_FILE
    if path.is_file():
        try:
            data = load_json(path)
            dice = {str(d): {str(s): math.nan if v is None else float(v) for s, v in per.items()}
                    for d, per in data["reconstruction_dice"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            logger.warning("[report] %s is unreadable (%s: %s); using the training log's autoencoder line instead",
                           path, type(e).__name__, e)
        else:
            return {**data, "reconstruction_dice": dice, "source": "file"}
    overall = autoencoder_dice(fold_dir)
    return None if overall is None else {"source": "log", "overall": overall}


_GRAD_RATIOS = re.compile(r"Gradient-norm ratios on the shared parameters \(median of (\d+) sampled iterations\): "
                          r"MSC/seg ([^\s,]+), MJAP/seg ([^\s,]+)")
_EPOCH_LINE = re.compile(r"^\S+ \S+ Epoch (\d+)\s*$")


def _ratio(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def gradient_norm_ratios(fold_dir: Path) -> list[dict[str, float]]:
    """Per epoch, the ``Gradient-norm ratios on the shared parameters (median of N sampled iterations):
    MSC/seg X, MJAP/seg Y`` line of the training logs in ``fold_dir`` (``nan`` for a term the scheme
    lacks): ``{"epoch", "n", "msc", "mjap"}``. An epoch logged twice (repeated after an interruption)
    counts once, with its last line; a line before any ``Epoch`` line gets the next free index."""
    by_epoch: dict[int, dict[str, float]] = {}
    epoch: int | None = None
    for log in sorted(Path(fold_dir).glob("training_log_*.txt")):
        for line in log.read_text(errors="replace").splitlines():
            m = _EPOCH_LINE.match(line)
            if m:
                epoch = int(m.group(1))
                continue
            m = _GRAD_RATIOS.search(line)
            if m:
                e = epoch if epoch is not None else len(by_epoch)
                by_epoch[e] = {"epoch": e, "n": int(m.group(1)), "msc": _ratio(m.group(2)), "mjap": _ratio(m.group(3))}
    return [by_epoch[e] for e in sorted(by_epoch)]


def median_ratios(per_epoch: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """``{"epochs": n, "msc": median, "mjap": median}`` over the epochs of :func:`gradient_norm_ratios`
    (finite values only; ``nan`` for a term no epoch has)."""
    out: dict[str, float] = {"epochs": len(per_epoch)}
    for term in ("msc", "mjap"):
        vals = [r[term] for r in per_epoch if math.isfinite(r[term])]
        out[term] = float(np.median(vals)) if vals else math.nan
    return out


def training_hours(epoch_times_per_model: Sequence[Sequence[float]], epochs: int) -> float | None:
    """Sum over models of (median logged epoch time x ``epochs``), in hours; None when no model has a
    logged epoch. The median is robust to epochs lengthened by pauses and to epochs repeated after an
    interruption, which a plain sum of the logged times counts in full."""
    timed = [t for t in epoch_times_per_model if len(t)]
    if not timed:
        return None
    return float(sum(np.median(t) * epochs for t in timed)) / 3600


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
