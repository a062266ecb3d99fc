"""Live console progress for the apps' long subprocess steps, read from the output nnU-Net writes.

The apps run ``nnUNetv2_train`` / ``nnUNetv2_predict`` in subprocesses whose full output goes to a log
file (:func:`nnunetv2_mtmd.apps.workspace.run_logged`); these parsers turn that stream into a few
console lines so that a user sees the run move:

- :class:`TrainingProgress`: one line per epoch, ``epoch 12/40 | loss -0.41 (seg -0.45, msc 1.62,
  mjap 210) | pseudo-Dice ankle 0.81, knee 0.62, shoulder 0.88 | 18 s/epoch, about 8.4 min left``,
  and one line per 100 iterations of the MJAP autoencoder phase. It reads nnU-Net's own log lines
  (``Epoch N``, ``train_loss``, ``Pseudo dice [...]``, ``Epoch time: X s``) and the plugin trainers'
  ``seg_loss ... msc ... mjap ...`` line.
- :class:`PredictionProgress`: ``predicted 3/12 cases`` from nnU-Net's ``done with <case>`` lines.
- :class:`Heartbeat`: for any other step, the elapsed time and the last output line, at most every
  ``every`` seconds.

Lines are plain (no carriage returns), so they read the same in a terminal, in CI logs and in a file.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence

#: nnU-Net's ``print_to_log_file`` prefix: ``2026-12-02 11:44:01.407925: ``.
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d+: ")
_FLOAT = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf"
_EPOCH = re.compile(r"^Epoch (\d+)$")
_TRAIN_LOSS = re.compile(rf"^train_loss ({_FLOAT})$")
_TERMS = re.compile(rf"^seg_loss ({_FLOAT})\s+msc ({_FLOAT}) \(x[^)]*\)\s+mjap ({_FLOAT}) \(x[^)]*\)")
_PSEUDO_DICE = re.compile(r"^Pseudo dice \[(.*)\]$")
_EPOCH_TIME = re.compile(rf"^Epoch time: ({_FLOAT}) s$")
_AE = re.compile(r"^MJAP autoencoder it (\d+)/(\d+):.*validation reconstruction Dice (" + _FLOAT + ")")
_DONE_CASE = re.compile(r"^done with (\S+)")


def strip_timestamp(line: str) -> str:
    """``line`` without nnU-Net's timestamp prefix and surrounding whitespace."""
    return _TIMESTAMP.sub("", line.strip()).strip()


def parse_floats(text: str) -> list[float]:
    """Every number in ``text`` (``[np.float32(0.5), np.float32(nan)]`` -> ``[0.5, nan]``)."""
    return [float(v) for v in re.findall(_FLOAT, text.replace("np.float32(", "").replace("np.float64(", ""))]


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


class TrainingProgress:
    """Turns ``nnUNetv2_train`` output into one console line per epoch.

    ``total_epochs``: the trainer's number of epochs (None: unknown, no time left is shown);
    ``domain_labels``: ``{domain: [unified label ids]}`` to average nnU-Net's pseudo-Dice (one value
    per foreground label, in label order) per domain; without it, the mean over labels is shown.
    NaN pseudo-Dice values (a label not seen in the epoch's validation batches) are left out of the
    means."""

    def __init__(self, total_epochs: int | None = None, domain_labels: Mapping[str, Sequence[int]] | None = None):
        self.total_epochs = total_epochs
        self.domain_labels = {k: list(v) for k, v in (domain_labels or {}).items()}
        self.epoch: int | None = None
        self.train_loss: float | None = None
        self.terms: tuple[float, float, float] | None = None
        self.pseudo_dice: list[float] | None = None
        self.epoch_times: list[float] = []

    def feed(self, raw: str) -> str | None:
        """Read one output line; returns a console line when an epoch (or 100 autoencoder iterations)
        ended, else None."""
        line = strip_timestamp(raw)
        if m := _EPOCH.match(line):
            self.epoch, self.train_loss, self.terms, self.pseudo_dice = int(m.group(1)), None, None, None
        elif m := _TRAIN_LOSS.match(line):
            self.train_loss = float(m.group(1))
        elif m := _TERMS.match(line):
            self.terms = (float(m.group(1)), float(m.group(2)), float(m.group(3)))
        elif m := _PSEUDO_DICE.match(line):
            self.pseudo_dice = parse_floats(m.group(1))
        elif m := _EPOCH_TIME.match(line):
            self.epoch_times.append(float(m.group(1)))
            return self.epoch_line()
        elif m := _AE.match(line):
            return f"MJAP autoencoder {m.group(1)}/{m.group(2)} iterations, validation reconstruction Dice " \
                   f"{float(m.group(3)):.3f}"
        return None

    def _dice_text(self) -> str:
        values = self.pseudo_dice
        if not values:
            return ""
        if not self.domain_labels:
            finite = [v for v in values if v == v]
            return f"pseudo-Dice {sum(finite) / len(finite):.2f}" if finite else ""
        parts = []
        for dom, ids in self.domain_labels.items():
            vals = [values[i - 1] for i in ids if 0 < i <= len(values) and values[i - 1] == values[i - 1]]
            parts.append(f"{dom} {sum(vals) / len(vals):.2f}" if vals else f"{dom} -")
        return "pseudo-Dice " + ", ".join(parts)

    def epoch_line(self) -> str:
        """The console line of the epoch just ended."""
        done = (self.epoch if self.epoch is not None else len(self.epoch_times) - 1) + 1
        head = f"epoch {done}/{self.total_epochs}" if self.total_epochs else f"epoch {done}"
        parts = [head]
        if self.train_loss is not None:
            loss = f"loss {self.train_loss:.3f}"
            if self.terms is not None:
                seg, msc, mjap = self.terms
                extra = [f"seg {seg:.3f}"] + [f"{k} {v:.3g}" for k, v in (("msc", msc), ("mjap", mjap)) if v == v]
                loss += " (" + ", ".join(extra) + ")"
            parts.append(loss)
        if dice := self._dice_text():
            parts.append(dice)
        recent = self.epoch_times[-5:]
        per_epoch = sum(recent) / len(recent)
        timing = f"{per_epoch:.0f} s/epoch"
        if self.total_epochs:
            timing += f", about {_minutes(max(0, self.total_epochs - done) * per_epoch)} left"
        parts.append(timing)
        return " | ".join(parts)


class PredictionProgress:
    """``predicted k/n cases`` after every case nnU-Net's predictor finishes (its ``done with`` lines)."""

    def __init__(self, total_cases: int | None = None):
        self.total = total_cases
        self.done = 0

    def feed(self, raw: str) -> str | None:
        if _DONE_CASE.match(strip_timestamp(raw)):
            self.done += 1
            return f"predicted {self.done}/{self.total} cases" if self.total else f"predicted {self.done} cases"
        return None


class Heartbeat:
    """At most every ``every`` seconds: the elapsed time and the last non-empty output line."""

    def __init__(self, every: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.every = every
        self.clock = clock
        self.start = clock()
        self.last_shown = self.start

    def feed(self, raw: str) -> str | None:
        line = strip_timestamp(raw)
        now = self.clock()
        if not line or now - self.last_shown < self.every:
            return None
        self.last_shown = now
        return f"{_minutes(now - self.start)} elapsed, last output: {line[:100]}"
