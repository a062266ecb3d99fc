"""Extra training-progress plot of the MTMD trainers (progress_mtmd.png), per epoch: the loss terms, the
gradient-norm ratios of the regularizers to the segmentation loss on the shared convolutions
(``losses/gradient_ratio.py``) and, when MSC is used, its temperature per scale."""

from __future__ import annotations

import math
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _is_nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _series(logged: dict[str, list], key: str, n: int) -> list:
    """The first ``n`` logged values of ``key``; empty when missing or all NaN."""
    vals = list(logged.get(key, [])[:n])
    return [] if all(_is_nan(v) for v in vals) else vals


def _plot_losses(ax, logged: dict[str, list], n: int) -> None:
    for key, label, style in (("seg_loss", "segmentation loss (Dice+CE)", "b-"), ("val_losses", "val loss", "r-")):
        vals = _series(logged, key, n)
        if vals:
            ax.plot(range(len(vals)), vals, style, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(loc="upper right")
    dice = _series(logged, "mean_fg_dice", n)
    if dice:
        ax3 = ax.twinx()
        ax3.plot(range(len(dice)), dice, "g:", label="pseudo Dice")
        ax3.set_ylabel("pseudo Dice")
        ax3.legend(loc="lower left")


def _plot_regularizers(ax, logged: dict[str, list], n: int) -> None:
    for key, label, style in (("msc_loss", "MSC (unweighted)", "g-"), ("mjap_loss", "MJAP (unweighted)", "m-")):
        vals = _series(logged, key, n)
        if vals:
            ax.plot(range(len(vals)), vals, style, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("regularizer")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right")


def _plot_grad_ratios(ax, logged: dict[str, list], n: int) -> None:
    """Median ratios per epoch on a log axis, with the band [0.1, 1] the weights aim for."""
    drawn = False
    for key, label, style in (("msc_grad_ratio", "lambda2 MSC / seg", "g.-"),
                              ("mjap_grad_ratio", "lambda3 MJAP / seg", "m.-")):
        vals = _series(logged, key, n)
        pts = [(i, v) for i, v in enumerate(vals) if not _is_nan(v) and v > 0]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
            drawn = True
    ax.axhspan(0.1, 1.0, color="0.9", zorder=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel("gradient-norm ratio (shared convs)")
    if drawn:
        ax.set_yscale("log")
        ax.legend(loc="upper right")
    else:
        ax.text(0.5, 0.5, "not sampled", ha="center", va="center", transform=ax.transAxes)


def _plot_temperatures(ax, logged: dict[str, list], n: int) -> None:
    """One line per MSC scale (fixed temperatures are flat)."""
    rows = [(i, v) for i, v in enumerate(logged.get("msc_temperature", [])[:n]) if isinstance(v, (list, tuple))]
    if not rows:
        ax.text(0.5, 0.5, "no MSC", ha="center", va="center", transform=ax.transAxes)
        return
    n_scales = max(len(v) for _, v in rows)
    for s in range(n_scales):
        pts = [(i, v[s]) for i, v in rows if s < len(v)]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", label=f"scale {s}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSC temperature")
    ax.legend(loc="upper right", fontsize="small", ncol=2)


def plot_loss_terms(logged: dict[str, list], epoch: int, path: str) -> None:
    """Plot, for epochs ``0..epoch``: segmentation loss (train) next to nnU-Net's val loss and pseudo Dice;
    MSC and MJAP (unweighted); the median gradient-norm ratios ``lambda2 MSC / seg`` and
    ``lambda3 MJAP / seg`` (log scale, the band [0.1, 1] shaded); the MSC temperature of every scale.

    Args:
        logged: nnU-Net's ``logger.local_logger.my_fantastic_logging`` (one entry per epoch and key;
            ``msc_temperature`` entries are per-scale lists, NaN without MSC).
        epoch: the last epoch to plot.
        path: the PNG to write.
    """
    n = epoch + 1
    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    _plot_losses(axes[0, 0], logged, n)
    _plot_regularizers(axes[0, 1], logged, n)
    _plot_grad_ratios(axes[1, 0], logged, n)
    _plot_temperatures(axes[1, 1], logged, n)
    fig.suptitle("nnU-Net MTMD training: loss terms, gradient-norm ratios and MSC temperatures per epoch")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
