"""Training loss of the MJAP label autoencoder: cross-entropy + soft Dice + lambda1 * MSC on all scales.

Boutillon et al. 2022 (section 2.3) train the autoencoder with a reconstruction loss plus
``lambda1 * MSC`` (lambda1 = 0.05) on all its scales, encoder and decoder (9 for their 5-stage
autoencoder). Here the reconstruction loss is nnU-Net's pairing of cross-entropy and soft Dice:
label maps are dominated by background (a small structure, e.g. a lumbar vertebra at 4 mm, covers
1-2 % of a patch), and cross-entropy alone lets the autoencoder trade thin and small structures for
background; the Dice term weighs every structure equally whatever its size.

- **CE** over the unified logits: the other domains' channels hold -1000, so it equals the
  cross-entropy over the sample's own ``1 + n_k`` channels.
- **Soft Dice** over each domain's own foreground classes, batch Dice per domain (nnU-Net's
  ``batch_dice``: intersections and sums pooled over the domain's samples in the batch), smooth
  1e-5, averaged over the (domain, class) pairs of the domains present in the batch; the loss term
  is ``1 - mean Dice``.
- **MSC**: :func:`nnunetv2_mtmd.losses.contrastive.multi_scale_supcon_loss` with the domain as the
  class on every one of the autoencoder's ``2 S - 1`` stage outputs (encoder and decoder).

Everything is computed in float32, whatever precision the forward pass ran in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from nnunetv2_mtmd.architectures.label_autoencoder import LabelAutoencoder
from nnunetv2_mtmd.losses.contrastive import multi_scale_supcon_loss

__all__ = ["autoencoder_training_loss", "per_domain_soft_dice"]

SMOOTH = 1e-5


def per_domain_soft_dice(probs: Tensor, onehot: Tensor, domain_idx: Tensor, own_mask: Tensor) -> Tensor:
    """Mean soft Dice over the (domain, foreground class) pairs of the domains in the batch.

    Args:
        probs: ``(B, C, X, Y)`` class probabilities (unified space).
        onehot: ``(B, C, X, Y)`` one-hot ground truth.
        domain_idx: ``(B,)`` int64 domain index per sample.
        own_mask: ``(K, C)`` bool, the channels each domain owns (background included; left out here).

    Returns:
        Scalar float32: batch Dice per domain and class (sums pooled over the domain's samples),
        averaged over the pairs; 1 means a perfect reconstruction.
    """
    dims = tuple(range(2, probs.dim()))
    inter = (probs * onehot).sum(dims)  # (B, C)
    total = probs.sum(dims) + onehot.sum(dims)
    k = own_mask.shape[0]
    member = F.one_hot(domain_idx, k).to(probs.dtype).T  # (K, B)
    inter_k, total_k = member @ inter, member @ total  # (K, C)
    valid = own_mask.clone()
    valid[:, 0] = False
    valid &= (member.sum(1) > 0)[:, None]
    dice = (2 * inter_k + SMOOTH) / (total_k + SMOOTH)
    return dice[valid].mean()


def autoencoder_training_loss(
    ae: LabelAutoencoder,
    onehot: Tensor,
    domain_idx: Tensor,
    lambda1: float = 0.05,
    temperature: float = 0.1,
    dice_weight: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``CE + dice_weight * (1 - soft Dice) + lambda1 * MSC(all 2 S - 1 scales)`` of one batch.

    Args:
        ae: the autoencoder (in train mode while training).
        onehot: ``(B, C_unified, X, Y)`` one-hot ground truth (unified space).
        domain_idx: ``(B,)`` int64 domain index per sample.
        lambda1: MSC weight (paper: 0.05); 0 leaves MSC out (not even computed).
        temperature: SupCon temperature (paper: 0.1).
        dice_weight: weight of the soft-Dice term (0: cross-entropy only).

    Returns:
        ``(total, terms)`` with ``terms = {"ce", "dice", "msc"}`` (detached scalars; ``dice`` is the
        soft Dice itself, not ``1 - Dice``).
    """
    d = domain_idx.to(device=onehot.device, dtype=torch.long)
    logits, feats = ae(onehot, d)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        logits = logits.float()
        ce = F.cross_entropy(logits, onehot.argmax(1))
        dice = per_domain_soft_dice(torch.softmax(logits, 1), onehot.float(), d, ae.own_channel_mask)
        total = ce + dice_weight * (1 - dice)
        if lambda1 > 0:
            msc = multi_scale_supcon_loss(feats, d, temperature, "all")[0]
            total = total + lambda1 * msc
        else:
            msc = torch.zeros((), device=logits.device)
    return total, {"ce": ce.detach(), "dice": dice.detach(), "msc": msc.detach()}
