"""Extra training-progress plot of the MTMD trainers: the loss terms per epoch (progress_mtmd.png)."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_loss_terms(logged: dict[str, list], epoch: int, path: str) -> None:
    """Plot segmentation loss, MSC and MJAP (train, per epoch) next to nnU-Net's val loss and pseudo Dice."""
    n = epoch + 1
    x = list(range(n))
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    ax = axes[0]
    for key, label, style in (("seg_loss", "segmentation loss (Dice+CE)", "b-"), ("val_losses", "val loss", "r-")):
        vals = logged.get(key, [])[:n]
        if vals:
            ax.plot(x[:len(vals)], vals, style, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(loc="upper right")
    ax2 = axes[1]
    for key, label, style in (("msc_loss", "MSC (unweighted)", "g-"), ("mjap_loss", "MJAP (unweighted)", "m-")):
        vals = [v for v in logged.get(key, [])[:n]]
        if vals and not all(isinstance(v, float) and math.isnan(v) for v in vals):
            ax2.plot(x[:len(vals)], vals, style, label=label)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("regularizer")
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend(loc="upper right")
    dice = logged.get("mean_fg_dice", [])[:n]
    if dice:
        ax3 = ax.twinx()
        ax3.plot(x[:len(dice)], dice, "g:", label="pseudo Dice")
        ax3.set_ylabel("pseudo Dice")
        ax3.legend(loc="lower left")
    fig.suptitle("nnU-Net MTMD training: loss terms per epoch")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
