"""The total training loss ``L = L_seg + lambda2 * MSC + lambda3 * MJAP`` (Boutillon et al. 2022, eq. 6).

:class:`RegularizedLoss` wraps nnU-Net's own loss (Dice + CE with deep supervision) so that the
trainer's ``train_step`` stays nnU-Net's: it is called as ``loss(output, target)`` inside nnU-Net's
autocast block, takes the per-stage features and domain indices that the multi-domain network
recorded during the same forward pass, and adds the regularizers (computed in float32 by their own
modules). In eval mode (nnU-Net's validation step) only ``L_seg`` is returned, so nnU-Net's
``val_loss`` stays comparable between schemes.

:class:`LossTermTracker` accumulates the per-term values of an epoch for nnU-Net's logger; an optional
:class:`~nnunetv2_mtmd.losses.gradient_ratio.GradientNormProbe` samples the gradient-norm ratios of
the weighted regularizers to the segmentation loss on the shared parameters.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from nnunetv2_mtmd.losses.gradient_ratio import GradientNormProbe

logger = logging.getLogger(__name__)


class LossTermTracker:
    """Running sums of named loss terms over one epoch (detached floats), plus counters."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, value: Tensor | float) -> None:
        v = float(value.detach()) if isinstance(value, Tensor) else float(value)
        self.sums[name] = self.sums.get(name, 0.0) + v
        self.counts[name] = self.counts.get(name, 0) + 1

    def count(self, name: str, n: int = 1) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + n
        self.counts[name] = 1

    def pop_means(self) -> dict[str, float]:
        """Mean of every term since the last call (counters: their total), then reset."""
        out = {k: self.sums[k] / max(1, self.counts[k]) for k in self.sums}
        self.sums, self.counts = {}, {}
        return out


class RegularizedLoss(nn.Module):
    """``L_seg + lambda_msc * MSC + lambda_mjap * MJAP`` on top of nnU-Net's loss.

    Args:
        seg_loss: nnU-Net's loss (``DeepSupervisionWrapper(DC_and_CE_loss)`` or ``DC_and_CE_loss``),
            called as ``seg_loss(output, target)``.
        network_state: callable returning ``(training, features, domain_idx)`` of the multi-domain
            network's last forward pass: ``features`` the list of stage outputs ``(B, C_s, X_s, Y_s)``
            (encoder, then decoder), ``domain_idx`` ``(B,)``. A callable rather than the network
            itself, so the network's parameters are not registered twice.
        msc: a ``MultiScaleContrastiveLoss`` (MSC or SSC) or None.
        mjap: an ``AnatomicalPriorLoss`` or None.
        lambda_msc, lambda_mjap: weights (lambda2 and lambda3 of the paper).
        grad_probe: a ``GradientNormProbe`` stepped once per training call with ``L_seg`` and the weighted
            terms (every term the scheme has, finite or not), or None.

    ``output``/``target`` are lists (deep supervision, highest resolution first) or tensors
    ``(B, C, X, Y)`` / ``(B, 1, X, Y)``; MJAP uses the highest resolution only.
    Per-term values go to :attr:`tracker` (``seg``, ``msc``, ``mjap``, and ``msc_skipped``: batches in
    which no anchor had a positive, where MSC is exactly 0).

    Non-finite regularizers: a regularizer term whose value is NaN or inf in a batch (e.g. an fp16
    overflow upstream) is left out of that batch's total, explicitly, and counted in the tracker as
    ``msc_nonfinite`` / ``mjap_nonfinite`` (logged per epoch by the trainer); the segmentation loss
    is never touched. Leaving the term out of the graph (rather than multiplying it by 0, which
    would still back-propagate NaN) keeps its NaN out of the gradients. Under DDP the MSC value is
    the same on every rank (global batch), so every rank makes the same decision.
    """

    def __init__(self, seg_loss: nn.Module, network_state: Callable[[], tuple[bool, Sequence[Tensor], Tensor]],
                 msc: nn.Module | None = None, mjap: nn.Module | None = None,
                 lambda_msc: float = 0.0, lambda_mjap: float = 0.0,
                 grad_probe: GradientNormProbe | None = None) -> None:
        super().__init__()
        self.seg_loss = seg_loss
        self.network_state = network_state
        self.msc = msc if lambda_msc > 0 else None
        self.mjap = mjap if lambda_mjap > 0 else None
        self.lambda_msc = float(lambda_msc)
        self.lambda_mjap = float(lambda_mjap)
        self.tracker = LossTermTracker()
        self.grad_probe = grad_probe

    def forward(self, output: Tensor | list[Tensor], target: Tensor | list[Tensor]) -> Tensor:
        seg = self.seg_loss(output, target)
        training, features, domain_idx = self.network_state()
        if not training:
            return seg
        self.tracker.add("seg", seg)
        raw: dict[str, Tensor] = {}  # unweighted regularizer values
        if self.msc is not None:
            if not features:
                raise RuntimeError("MSC needs the network's stage features: set network.collect_features = True")
            msc = self.msc(features, domain_idx)
            if getattr(self.msc, "last_num_valid_anchors", 1) == 0:
                self.tracker.count("msc_skipped")
            raw["msc"] = msc
        if self.mjap is not None:
            out0 = output[0] if isinstance(output, (list, tuple)) else output
            tgt0 = target[0] if isinstance(target, (list, tuple)) else target
            raw["mjap"] = self.mjap(out0, tgt0, domain_idx)
        weights = {"msc": self.lambda_msc, "mjap": self.lambda_mjap}
        weighted = {name: weights[name] * value for name, value in raw.items()}
        if self.grad_probe is not None:
            self.grad_probe.step(seg, {"msc": weighted.get("msc"), "mjap": weighted.get("mjap")})
        total = seg
        for name, term in weighted.items():
            if _is_finite(raw[name]):
                self.tracker.add(name, raw[name])
                total = total + term.to(seg.dtype)
            else:
                self.tracker.count(f"{name}_nonfinite")
                logger.warning("%s term is %s in this batch: left out of the loss (counted as %s_nonfinite).",
                               name.upper(), float(raw[name].detach()), name)
        return total


def _is_finite(value: Tensor) -> bool:
    """Whether a scalar loss term is finite (one host synchronisation, as the tracker makes anyway)."""
    return bool(torch.isfinite(value.detach()).all())


def count_nonfinite(values: dict[str, float]) -> list[str]:
    """Names of the terms whose value is NaN or inf."""
    return [k for k, v in values.items() if not torch.isfinite(torch.tensor(v))]
