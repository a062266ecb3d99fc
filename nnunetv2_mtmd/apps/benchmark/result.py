"""The result of a run: :class:`BenchmarkResult`, its JSON, its checks and the printed table.

No targets here. The targets of the ratios live in one place, the targets table of
docs/benchmarks.md; the printed table shows the measured medians and ratios, and its footer
(:data:`TABLE_FOOTER`) points there. Reading that table at run time was the alternative, rejected:
an installed wheel has no docs/ folder, so the same command would print verdicts in a source
checkout and none after ``pip install``, and the code would depend on the layout of a markdown
table. A verdict from one run would also say less than it seems to: on a shared CPU a single run
resolves a ratio to about +-0.04 (docs/benchmarks.md, "Run-to-run spread"), which is as much as
some margins. :func:`check_result` therefore only checks the structure of a result (keys present,
ratios positive and finite), never whether a target is met.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nnunetv2_mtmd.apps.benchmark.settings import REQUIRED_KEYS, SCHEME_TRAINERS, STOCK
from nnunetv2_mtmd.io import atomic_file

#: Columns of the printed table.
TABLE_HEADER = ("measurement", "MTMD", "reference", "ratio")
#: Printed under the table by ``nnUNetv2_mtmd_benchmark``.
TABLE_FOOTER = "ratio = MTMD / reference (median of per-round ratios); targets and their spread: docs/benchmarks.md"


@dataclass
class BenchmarkResult:
    """Medians (seconds / bytes), ratios and everything needed to reproduce them."""

    train_step_s: dict[str, float] = field(default_factory=dict)
    train_step_ratio: dict[str, float] = field(default_factory=dict)
    predict_s: dict[str, float] = field(default_factory=dict)
    inference_ratio: float = float("nan")
    predict_in_process_s: dict[str, float] = field(default_factory=dict)
    inference_in_process_ratio: float = float("nan")
    memory_bytes: dict[str, dict[str, int]] = field(default_factory=dict)
    memory_ratio: float = float("nan")
    memory_ratio_per_scheme: dict[str, float] = field(default_factory=dict)
    k_step_s: dict[int, float] = field(default_factory=dict)
    k_scaling_ratio: float = float("nan")
    clock: str = "wall"
    medians_other_clock: dict[str, Any] = field(default_factory=dict)
    raw_times: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    #: ``--compile``: :func:`.compiled.measure_compiled_train_steps` (empty when not measured)
    compiled: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The issue's JSON (:data:`REQUIRED_KEYS`) plus ``details`` with the raw numbers."""
        return {
            "train_step_ratio": dict(self.train_step_ratio),
            "inference_ratio": self.inference_ratio,
            "memory_ratio": self.memory_ratio,
            "k_scaling_ratio": self.k_scaling_ratio,
            "details": {
                "clock": self.clock,
                "train_step_median_s": self.train_step_s,
                "predict_median_s": self.predict_s,
                "predict_in_process_median_s": self.predict_in_process_s,
                "inference_in_process_ratio": self.inference_in_process_ratio,
                "memory_bytes": self.memory_bytes,
                "memory_ratio_per_scheme": self.memory_ratio_per_scheme,
                "k_step_median_s": {str(k): v for k, v in self.k_step_s.items()},
                "medians_other_clock_s": self.medians_other_clock,
                "raw_times_s": self.raw_times,
                **({"compiled": self.compiled} if self.compiled else {}),
                **self.info,
            },
        }


def check_result(result: dict[str, Any]) -> list[str]:
    """Problems of a benchmark result (missing keys, ratios not positive and finite); empty if fine."""
    problems = [f"missing key {k!r}" for k in REQUIRED_KEYS if k not in result]
    if problems:
        return problems
    values = dict(result["train_step_ratio"])
    if set(values) != set(SCHEME_TRAINERS):
        problems.append(f"train_step_ratio keys {sorted(values)} != {sorted(SCHEME_TRAINERS)}")
    values.update({k: result[k] for k in REQUIRED_KEYS[1:]})
    for k, v in values.items():
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            problems.append(f"{k} = {v!r} is not a positive finite number")
    return problems


def _fmt_s(v: float) -> str:
    return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"


def _fmt_b(v: float) -> str:
    return f"{v / 2**20:.1f} MiB"


def table_rows(res: BenchmarkResult) -> list[list[str]]:
    """Rows ``[measurement, MTMD, reference, ratio]`` of the printed table (no targets: module docstring)."""
    rows = []
    for key, cls in SCHEME_TRAINERS.items():
        rows.append([f"train step {key} ({cls})", _fmt_s(res.train_step_s[key]),
                     f"{_fmt_s(res.train_step_s[STOCK])} stock", f"{res.train_step_ratio[key]:.3f}"])
    rows.append(["nnUNetv2_predict (MTMD model)", _fmt_s(res.predict_s["MTMD"]),
                 f"{_fmt_s(res.predict_s[STOCK])} stock", f"{res.inference_ratio:.3f}"])
    if res.predict_in_process_s:
        rows.append(["  same, in process (no start-up/imports; details)", _fmt_s(res.predict_in_process_s["MTMD"]),
                     f"{_fmt_s(res.predict_in_process_s[STOCK])} stock", f"{res.inference_in_process_ratio:.3f}"])
    for key in SCHEME_TRAINERS:
        label = "peak memory MTMD (reported)" if key == "MTMD" else f"peak memory {key}"
        rows.append([label, _fmt_b(res.memory_bytes[key]["peak"]), f"{_fmt_b(res.memory_bytes[STOCK]['peak'])} stock",
                     f"{res.memory_ratio_per_scheme[key]:.3f}"])
    if res.compiled:
        c = res.compiled
        for key in SCHEME_TRAINERS:
            label = f"compiled train step {key} ({c['graphs'][key]} graph(s), compile {c['compile_s'][key]:.0f} s)"
            rows.append([label,
                         _fmt_s(c["train_step_s"][key]),
                         f"{_fmt_s(c['train_step_s'][STOCK])} stock ({c['graphs'][STOCK]} graph(s))",
                         f"{c['train_step_ratio'][key]:.3f}"])
    ks = sorted(res.k_step_s)
    rows.append([f"DSL step K={ks[-1]} vs K={ks[0]} ("
                 + ", ".join(f"K={k}: {_fmt_s(v)}" for k, v in sorted(res.k_step_s.items())) + ")",
                 _fmt_s(res.k_step_s[ks[-1]]), f"{_fmt_s(res.k_step_s[ks[0]])} K={ks[0]}",
                 f"{res.k_scaling_ratio:.3f}"])
    return rows


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table with the header ``measurement | MTMD | reference | ratio``."""
    allrows = [list(TABLE_HEADER)] + [list(r) for r in rows]
    widths = [max(len(r[i]) for r in allrows) for i in range(len(TABLE_HEADER))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in allrows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(result: dict[str, Any], path: Path) -> None:
    """Write ``result`` to ``path`` atomically (:func:`nnunetv2_mtmd.io.atomic_file`): an interrupted
    run never leaves a truncated JSON where an earlier result was. numpy scalars and paths become
    JSON numbers and strings."""
    with atomic_file(path) as tmp, open(tmp, "w") as f:
        json.dump(result, f, indent=2, default=_json_default)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")

