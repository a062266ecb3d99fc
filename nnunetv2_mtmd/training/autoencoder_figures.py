"""Pictures of the MJAP label autoencoder: label slices beside their reconstructions, one PNG per domain."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import torch

from nnunetv2_mtmd.architectures.label_autoencoder import LabelAutoencoder
from nnunetv2_mtmd.training.autoencoder_data import load_label_maps
from nnunetv2_mtmd.training.autoencoder_eval import padded_stack, reconstruct
from nnunetv2_mtmd.training.autoencoder_job import AutoencoderJob

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["write_reconstruction_pngs"]


def write_reconstruction_pngs(ae: LabelAutoencoder, job: AutoencoderJob, folder: str | Path,
                              device: torch.device | str = "cpu", n_slices: int = 8) -> list[Path]:
    """``folder/reconstruction_<domain>.png`` per domain: ``n_slices`` label slices with a structure of
    the job's validation cases (evenly spread over them; 3D: the middle slice of each volume), the
    label map above its reconstruction. Returns the written paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    maps = load_label_maps(job.preprocessed_folder, job.val_cases, job.domain_spec, job.dim)
    paths = []
    for dom in job.domain_spec.domains:
        fg = maps.foreground(dom.index)
        if not fg:
            continue
        pick = [fg[int(i)] for i in np.linspace(0, len(fg) - 1, min(n_slices, len(fg)))]
        labels = padded_stack(pick, ae.total_stride)
        pred = reconstruct(ae, labels, dom.index, device)
        gt = labels[:, 0]
        if job.dim == 3:
            mid = gt.shape[1] // 2
            gt, pred = gt[:, mid], pred[:, mid]
        paths.append(_figure(gt.numpy(), pred.numpy(), dom.name, ae.num_classes, folder))
    return paths


def _figure(gt: np.ndarray, pred: np.ndarray, name: str, num_classes: int, folder: Path) -> Path:
    n = gt.shape[0]
    fig, axes = plt.subplots(2, n, figsize=(1.8 * n, 3.9), squeeze=False)
    for i in range(n):
        for row, (img, title) in enumerate(((gt[i], "labels"), (pred[i], "reconstruction"))):
            ax = axes[row, i]
            ax.imshow(np.ma.masked_equal(img, 0), cmap="tab20", vmin=0, vmax=max(num_classes - 1, 1),
                      interpolation="nearest")
            ax.set_facecolor("black")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(title)
    fig.suptitle(f"{name}: validation label slices (top) and their reconstructions (bottom)")
    fig.tight_layout()
    path = folder / f"reconstruction_{name}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
