"""What nnU-Net's files say about a training: status, epochs, timings, `--stage status` estimates."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nnunetv2_mtmd.apps.study.constants import CONFIGURATION, INDIVIDUAL, PLANS_NAME


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
