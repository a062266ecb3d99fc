"""How well the MJAP label autoencoder reconstructs label maps: per-structure Dice pooled over slices.

Reporting only (nothing stops or steers training on it). Every label map of a domain that holds
any structure (a 2D slice with foreground; 3D: a volume) is padded with background to a multiple
of the autoencoder's total stride, reconstructed in eval mode (argmax of the logits) and compared
with itself; per structure, the intersections and sizes are summed over all those maps before the
Dice is taken (Dice pooled over the label slices), so a slice where the structure is missing in
the input but reconstructed counts as false positives, and small slices weigh by their size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from nnunetv2_mtmd.architectures.label_autoencoder import LabelAutoencoder, labels_to_onehot
from nnunetv2_mtmd.domains import DomainSpec
from nnunetv2_mtmd.training.autoencoder_data import LabelMaps

__all__ = ["evaluate_reconstruction", "mean_dice", "onehot_dice", "padded_stack", "reconstruct"]


def padded_stack(maps: Sequence[np.ndarray], multiple: Sequence[int]) -> torch.Tensor:
    """``(N, 1, X, Y)`` int64: the maps padded with background (at the end of each axis) to one shape,
    the largest extent per axis rounded up to a multiple of ``multiple``."""
    dim = maps[0].ndim
    shape = [max(m.shape[a] for m in maps) for a in range(dim)]
    shape = [int(math.ceil(s / t) * t) for s, t in zip(shape, multiple)]
    out = np.zeros((len(maps), *shape), dtype=np.int64)
    for i, m in enumerate(maps):
        out[(i, *(slice(0, s) for s in m.shape))] = m
    return torch.from_numpy(out)[:, None]


@torch.no_grad()
def reconstruct(ae: LabelAutoencoder, labels: torch.Tensor, domain: int, device: torch.device | str = "cpu",
                batch_size: int = 32) -> torch.Tensor:
    """``argmax(ae(onehot(labels)))`` of ``labels`` ``(N, 1, X, Y)`` int64 of one domain, in eval mode
    (the module's mode is restored); returns ``(N, X, Y)`` int64 unified ids on the CPU."""
    was_training = ae.training
    ae.eval()
    out = []
    try:
        for s in range(0, labels.shape[0], batch_size):
            chunk = labels[s : s + batch_size].to(device)
            d = torch.full((chunk.shape[0],), domain, dtype=torch.long, device=device)
            logits, _ = ae(labels_to_onehot(chunk, ae.num_classes), d)
            out.append(logits.argmax(1).cpu())
    finally:
        ae.train(was_training)
    return torch.cat(out)


def evaluate_reconstruction(ae: LabelAutoencoder, maps: LabelMaps, domain_spec: DomainSpec,
                            device: torch.device | str = "cpu", batch_size: int = 32) -> dict[str, dict[str, float]]:
    """``{domain name: {structure name: Dice}}`` pooled over the domain's label maps with foreground.

    A structure that appears neither in the maps nor in their reconstructions is NaN; a domain
    without maps with foreground is left out."""
    out: dict[str, dict[str, float]] = {}
    for dom in domain_spec.domains:
        fg = maps.foreground(dom.index)
        if not fg:
            continue
        labels = padded_stack(fg, ae.total_stride)
        pred = reconstruct(ae, labels, dom.index, device, batch_size)
        gt = labels[:, 0]
        scores = {}
        for lab in dom.labels:
            p, g = pred == lab.unified_id, gt == lab.unified_id
            denom = int(p.sum() + g.sum())
            scores[lab.name] = 2.0 * int((p & g).sum()) / denom if denom else float("nan")
        out[dom.name] = scores
    return out


def mean_dice(per_structure: dict[str, dict[str, float]]) -> float:
    """Mean of the per-structure Dice values (NaN entries left out; NaN when none is left)."""
    vals = [v for d in per_structure.values() for v in d.values() if v == v]
    return float(np.mean(vals)) if vals else float("nan")


def onehot_dice(a: torch.Tensor, b: torch.Tensor, classes: Sequence[int]) -> float:
    """Mean Dice over ``classes`` of two label maps ``(N, X, Y)`` (pooled over N; absent in both: left out)."""
    vals = []
    for c in classes:
        p, g = a == c, b == c
        denom = int(p.sum() + g.sum())
        if denom:
            vals.append(2.0 * int((p & g).sum()) / denom)
    return float(np.mean(vals)) if vals else float("nan")

