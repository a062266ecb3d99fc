"""Multi-joint anatomical priors (MJAP): the label autoencoder's training loss and the prior loss.

The autoencoder itself is :class:`~nnunetv2_mtmd.architectures.label_autoencoder.LabelAutoencoder`
(re-exported here, its former home).

References
----------
* O. Oktay et al., "Anatomically Constrained Neural Networks (ACNN): Application to Cardiac Image
  Enhancement and Segmentation", IEEE TMI 2018: a label autoencoder learns a compact code of
  plausible shapes; the segmentation network is penalised by the distance between the codes of its
  prediction and of the ground truth.
* A. Boutillon et al., "Generalizable multi-task, multi-domain deep segmentation of sparse pediatric
  imaging datasets via multi-scale contrastive regularization and multi-joint anatomical priors",
  2022 extension of their MICCAI 2021 paper: one autoencoder for all joints (domains) with shared
  convolutions, domain-specific batch normalization (DSBN), a domain-specific input layer (that
  domain's one-hot classes) and a domain-specific output layer, trained with cross-entropy +
  lambda1 * MSC on its own encoder stages (lambda1 = 0.05); frozen afterwards, its encoder F gives
  the prior loss of their Eq. 7, the Euclidean distance between the codes, averaged over the samples
  of each domain and then over the domains::

      MJAP = 1/K * sum_k 1/n_k * sum_{i in domain k} ||F(y_i) - F(y_hat_i)||_2

  (the norm taken over ALL elements of the code, channels and positions, summed inside the square
  root; K the domains present in the batch, n_k their sample counts).

Label space
-----------
Everything here works in the UNIFIED label space of a merged dataset (docs/design.md, "Unified label space"):
channel 0 is background, then each domain's labels. Domain ``k`` owns the channels
``[0] + domain_label_ids[k]``. Outputs fill the channels of other domains with
:data:`OTHER_DOMAIN_LOGIT` (-1000), like the segmentation network, so that softmax,
cross-entropy and argmax over the unified channels equal those over the domain's own channels
(``exp(-1000)`` is exactly 0 in float32 and float64).

Keeping the frozen autoencoder out of training
----------------------------------------------
:class:`AnatomicalPriorLoss` freezes the autoencoder (``requires_grad=False`` on every parameter,
eval mode so DSBN uses and never updates its running statistics) and overrides ``train()`` so that
the autoencoder stays in eval mode even when a parent module calls ``.train()``. The loss module must
NOT be registered inside the segmentation network (nnU-Net rebuilds the network from the plans and
loads its weights strictly at inference): keep it as a plain attribute of the trainer, which saves
and restores the autoencoder's state dict itself.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nnunetv2_mtmd.architectures.label_autoencoder import (  # noqa: F401  (re-exported: older import path)
    OTHER_DOMAIN_LOGIT,
    LabelAutoencoder,
    freeze,
    labels_to_onehot,
    reconstruction_dice,
)
from nnunetv2_mtmd.losses.contrastive import multi_scale_supcon_loss

logger = logging.getLogger(__name__)

__all__ = [
    "OTHER_DOMAIN_LOGIT",
    "LabelAutoencoder",
    "AnatomicalPriorLoss",
    "MJAP_FORMS",
    "autoencoder_loss",
    "code_distance",
    "domain_mean",
    "labels_to_onehot",
    "reconstruction_dice",
]

def autoencoder_loss(
    ae: LabelAutoencoder,
    onehot: Tensor,
    domain_idx: Tensor,
    lambda1: float = 0.05,
    temperature: float = 0.1,
) -> tuple[Tensor, Tensor, Tensor]:
    """Training loss of the label autoencoder: ``CE(reconstruction, y) + lambda1 * MSC(encoder stages)``.

    The cross-entropy is taken over the unified logits; since the other domains' channels hold -1000
    it equals the cross-entropy over the domain's own ``1 + n_k`` channels. MSC is the SupCon loss
    with the domain as the class on every encoder stage (:mod:`nnunetv2_mtmd.losses.contrastive`).
    Both terms are computed in float32 (the autoencoder's forward pass runs in whatever precision the
    caller chose).

    Args:
        ae: the autoencoder (in train mode while training).
        onehot: ``(B, C_unified, X, Y)`` one-hot ground truth (unified space).
        domain_idx: ``(B,)`` int64 domain index per sample.
        lambda1: MSC weight (paper: 0.05).
        temperature: SupCon temperature (paper: 0.1).

    Returns:
        ``(total, ce, msc)`` scalars.
    """
    logits, feats = ae(onehot, domain_idx)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        target = onehot.argmax(1)
        ce = F.cross_entropy(logits.float(), target)
        msc = multi_scale_supcon_loss(feats, domain_idx, temperature, "all")[0]
        total = ce + lambda1 * msc
    return total, ce, msc


#: The distances :class:`AnatomicalPriorLoss` offers (see its docstring).
MJAP_FORMS = ("l2", "squared_l2", "legacy_element_mean")
MJAPForm = Literal["l2", "squared_l2", "legacy_element_mean"]


def domain_mean(values: Tensor, domain_idx: Tensor) -> Tensor:
    """``1/K * sum_k 1/n_k * sum_{i in domain k} values_i`` over the K domains present (Eq. 7's averaging).

    Written as ``sum_i values_i / n_{d_i} / sum_i 1 / n_{d_i}`` (``sum_i 1/n_{d_i}`` is K): no loop, no
    number of domains needed and no host synchronisation. Equals the plain mean for balanced batches.

    Args:
        values: ``(B,)`` per-sample values.
        domain_idx: ``(B,)`` integer domain index per sample.
    """
    d = domain_idx.reshape(-1).to(values.device)
    n_same = (d[:, None] == d[None, :]).sum(1).to(values.dtype)  # (B,): n_k of each sample's domain
    inv = 1.0 / n_same
    return (values * inv).sum() / inv.sum()


def code_distance(code_pred: Tensor, code_gt: Tensor, domain_idx: Tensor, form: MJAPForm = "l2") -> Tensor:
    """The MJAP distance between two batches of codes ``(B, C, x, y)`` (or any ``(B, ...)``), float32.

    ``"l2"``: Eq. 7, ``domain_mean(||code_pred_i - code_gt_i||_2)``; ``"squared_l2"``: the same with the
    squared norm; ``"legacy_element_mean"``: the plugin's form before issue 22, ``mean_i mean_e (diff^2)``
    (plain mean over samples). See :class:`AnatomicalPriorLoss`.
    """
    diff = (code_pred.float() - code_gt.float()).flatten(1)  # (B, C*x*y)
    if form == "legacy_element_mean":
        return diff.pow(2).mean(1).mean()
    if form == "squared_l2":
        return domain_mean(diff.pow(2).sum(1), domain_idx)
    if form == "l2":
        # vector_norm's backward is 0 (not NaN) at a zero difference (a perfect prediction)
        return domain_mean(torch.linalg.vector_norm(diff, ord=2, dim=1), domain_idx)
    raise ValueError(f"MJAP: form must be one of {MJAP_FORMS}, got {form!r}.")


class AnatomicalPriorLoss(nn.Module):
    """MJAP loss: distance between the codes of the ground truth and of the prediction.

    ``MJAP = 1/K sum_k 1/n_k sum_{i in domain k} d(F(onehot(y_i)), F(softmax_k(y_hat_i)))`` with F the
    frozen encoder of a :class:`LabelAutoencoder`, ``softmax_k`` the softmax over the channels of the
    sample's domain k and K the domains present in the batch (Boutillon et al. 2022, Eq. 7; Oktay et
    al. 2018).

    ``form`` decides ``d`` (codes ``(C, x, y)`` per sample):
      * ``"l2"`` (default): the paper's Euclidean distance ``||F(y) - F(y_hat)||_2``, the square root of
        the SUM over all ``C * x * y`` code elements of the squared difference. It grows with the code
        size (about ``sqrt(C x y)`` times the root-mean-square difference), so lambda3 goes with the
        autoencoder's code size and patch size; the logged gradient-norm ratio MJAP/seg says whether it
        fits (docs/method.md, "Default weights").
      * ``"squared_l2"``: the squared norm ``||F(y) - F(y_hat)||_2^2``, same averaging.
      * ``"legacy_element_mean"``: the form this plugin used before issue 22 (the study's runs 4 and 5
        were trained with it): the MEAN over code elements of the squared difference, averaged over
        the samples of the batch (not per domain; the trainer's batches are balanced, where both
        averages agree). It is ``||.||^2 / (C x y)``, thousands of times smaller than the norm, so
        lambda3 = 0.1 of it contributed almost nothing. Kept only to reproduce those results.

    The autoencoder is frozen: ``requires_grad=False`` on all its parameters and eval mode, which
    :meth:`train` preserves (a parent's ``.train()`` cannot switch it back). Gradients flow through
    the frozen encoder into the prediction only. Computed in float32 even under autocast. The
    autoencoder must be on the same device as the inputs. Do not register this module inside the
    segmentation network (see the module docstring).

    Args:
        autoencoder: a trained :class:`LabelAutoencoder`.
        form: ``"l2"``, ``"squared_l2"`` or ``"legacy_element_mean"`` (see above).
    """

    def __init__(self, autoencoder: LabelAutoencoder, form: MJAPForm = "l2") -> None:
        super().__init__()
        if form not in MJAP_FORMS:
            raise ValueError(f"AnatomicalPriorLoss: form must be one of {MJAP_FORMS}, got {form!r}.")
        self.form = form
        self.autoencoder = freeze(autoencoder)

    def train(self, mode: bool = True) -> AnatomicalPriorLoss:
        """Set this module's mode; the frozen autoencoder always stays in eval mode."""
        super().train(mode)
        self.autoencoder.eval()
        return self

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        domain_idx: Tensor,
        pred_is_probabilities: bool = False,
    ) -> Tensor:
        """Args:
            pred: ``(B, C_unified, X, Y)`` segmentation logits in the unified space (full-resolution
                output; with deep supervision pass only the first output), or class probabilities
                when ``pred_is_probabilities``. Logits are turned into the softmax over the sample's
                domain channels (other channels are masked; with the network's -1000 fill this
                equals the plain softmax over all unified channels).
            target: ``(B, 1, X, Y)`` or ``(B, X, Y)`` integer unified label ids (each sample's ids
                must belong to its domain; not checked, to avoid a device synchronisation).
            domain_idx: ``(B,)`` int64 domain index per sample.

        Returns:
            Scalar float32 loss.
        """
        ae = self.autoencoder
        if ae.training:  # someone called ae.train() directly
            ae.eval()
        d = domain_idx.to(device=pred.device, dtype=torch.long)
        with torch.autocast(device_type=pred.device.type, enabled=False):
            p = pred.float()
            if not pred_is_probabilities:
                valid = ae.domain_channel_mask[d].view(d.shape[0], -1, *(1,) * (p.dim() - 2))
                p = torch.softmax(p.masked_fill(~valid, float("-inf")), dim=1)
            with torch.no_grad():
                code_gt = ae.encode(labels_to_onehot(target, ae.num_classes), d)
            code_pred = ae.encode(p, d)
            return code_distance(code_pred, code_gt, d, self.form)

    def extra_repr(self) -> str:
        return f"form={self.form!r}"
