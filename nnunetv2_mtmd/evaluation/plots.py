"""Box plots of per-case metrics, one PNG per metric, grouped by domain / structure.

Uses matplotlib's Agg canvas directly (no pyplot state, no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nnunetv2_mtmd.evaluation.metrics import METRIC_LABELS


def metric_boxplot(
    rows: Sequence[Mapping[str, object]],
    metric: str,
    groups: Sequence[tuple[str, str]],
    path: Path,
    title: str | None = None,
) -> Path:
    """Write one box plot of ``metric`` with one box per ``(domain, structure)`` of ``groups``.

    ``rows``: per-case dicts with keys ``domain``, ``structure`` and ``metric`` (float, NaN =
    undefined; undefined values are left out and counted in the tick label)."""
    domains = list(dict.fromkeys(d for d, _ in groups))
    palette = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]
    color = {d: palette[i % len(palette)] for i, d in enumerate(domains)}
    data, labels, colors = [], [], []
    for dom, struct in groups:
        vals = np.array(
            [float(r[metric]) for r in rows if r["domain"] == dom and r["structure"] == struct],
            dtype=np.float64,
        )
        ok = vals[np.isfinite(vals)]
        n_undef = int(vals.size - ok.size)
        data.append(ok)
        labels.append(f"{dom}\n{struct}\nn={ok.size}" + (f", {n_undef} undef." if n_undef else ""))
        colors.append(color[dom])
    width = max(6.0, 0.9 * len(groups) + 1.5)
    fig = Figure(figsize=(width, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    positions = np.arange(1, len(groups) + 1)
    nonempty = [i for i, d in enumerate(data) if d.size]
    if nonempty:
        bp = ax.boxplot(
            [data[i] for i in nonempty],
            positions=positions[nonempty],
            widths=0.6,
            patch_artist=True,
            showfliers=False,  # every case is drawn as a point anyway
            showmeans=True,
            meanprops={
                "marker": "D",
                "markerfacecolor": "white",
                "markeredgecolor": "black",
                "markersize": 5,
            },
        )
        for patch, i in zip(bp["boxes"], nonempty):
            patch.set_facecolor(colors[i])
            patch.set_alpha(0.75)
        for i in nonempty:  # the individual cases, jittered
            jitter = np.linspace(-0.15, 0.15, data[i].size) if data[i].size > 1 else np.zeros(1)
            ax.plot(positions[i] + jitter, data[i], "o", color="black", markersize=2.5, alpha=0.6)
    ax.set_xticks(positions)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_xlim(0.4, len(groups) + 0.6)
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title or METRIC_LABELS.get(metric, metric))
    # fixed margins in inches instead of tight_layout (which costs a second full draw)
    fig.subplots_adjust(left=0.85 / width, right=1 - 0.25 / width, bottom=0.75 / 4.8, top=1 - 0.4 / 4.8)
    path = Path(path)
    fig.savefig(path)
    return path


def metric_boxplots(
    rows: Sequence[Mapping[str, object]],
    metrics: Sequence[str],
    groups: Sequence[tuple[str, str]],
    out_dir: Path,
) -> list[Path]:
    """One ``boxplot_<metric>.png`` per metric in ``out_dir``; returns the paths."""
    return [metric_boxplot(rows, m, groups, Path(out_dir) / f"boxplot_{m}.png") for m in metrics]
