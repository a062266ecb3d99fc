"""How strongly each regularizer pulls on the shared convolutions, compared with the segmentation loss.

The weights lambda2 (MSC) and lambda3 (MJAP) of ``L = L_seg + lambda2 * MSC + lambda3 * MJAP``
(Boutillon et al. 2022, Eq. 6) are only meaningful relative to the segmentation loss's gradient:
loss values do not say how much a term moves the network. :class:`GradientNormProbe` measures, every
``every`` training iterations, the L2 norms over the network's SHARED parameters (the convolutions
common to all domains; not the domain-specific batch norms, not the per-domain heads) of the gradients
of ``L_seg``, ``lambda2 * MSC`` and ``lambda3 * MJAP``, and keeps the ratios ``MSC/seg`` and
``MJAP/seg``; the trainer logs their median per epoch. A ratio around 0.1-1 means the term shapes the
shared representation without overriding the segmentation loss.

The gradients are taken with ``torch.autograd.grad(..., retain_graph=True)`` on the loss terms of the
training step itself, inside :class:`~nnunetv2_mtmd.losses.combined.RegularizedLoss` (so under
nnU-Net's autocast, before nnU-Net's own backward, which is unchanged). ``.grad`` of the parameters is
not touched. Under fp16 autocast the terms are multiplied by the GradScaler's current scale before
differentiation (as nnU-Net's backward does) and the norms divided by it again, so small gradients do
not underflow; a sample with any non-finite norm (an overflow the scaler would skip too), or a zero
segmentation gradient, is dropped. Cost: three extra backward passes every ``every`` iterations.

Under DDP every rank samples the same iterations and differentiates every term it has, finite or not,
so the collectives inside the backward passes (DSBN statistics, MSC's all-gather) match on every
rank; the ratios are those of each rank's own batch (the trainer averages the per-rank medians).
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

logger = logging.getLogger(__name__)

__all__ = ["GradientNormProbe", "GradRatioSummary", "format_ratio_line", "shared_parameters"]

#: Names of the regularizer terms whose ratio to the segmentation term is kept.
REGULARIZERS = ("msc", "mjap")


def shared_parameters(network: nn.Module, exclude_prefixes: Sequence[str] = ("heads",)) -> list[nn.Parameter]:
    """Weights and biases of every convolution (and transposed convolution) of ``network`` outside the
    modules named by ``exclude_prefixes``: for the multi-domain U-Net, the encoder's and decoder's
    convolutions, shared by all domains (its DSBN layers are norms, its per-domain 1x1 output layers
    live under ``heads``). Pass the plain network (not a DDP or compiled wrapper)."""
    params: list[nn.Parameter] = []
    seen: set[int] = set()
    for name, module in network.named_modules():
        if not isinstance(module, _ConvNd):
            continue
        if any(name == p or name.startswith(p + ".") for p in exclude_prefixes):
            continue
        for param in module.parameters(recurse=False):
            if param.requires_grad and id(param) not in seen:
                seen.add(id(param))
                params.append(param)
    return params


@dataclass(frozen=True)
class GradRatioSummary:
    """One epoch of samples: their number and the median ratio of each regularizer (NaN: not sampled,
    or a term the scheme does not have)."""

    samples: int
    msc: float
    mjap: float

    def as_log_values(self) -> dict[str, float]:
        """The values under their logger keys."""
        return {"msc_grad_ratio": self.msc, "mjap_grad_ratio": self.mjap, "grad_ratio_samples": float(self.samples)}


def format_ratio_line(summary: GradRatioSummary) -> str:
    """The training-log line (parsed by the study report; keep its form)::

        Gradient-norm ratios on the shared parameters (median of N sampled iterations): MSC/seg 0.1234, MJAP/seg 0.0567
    """
    return (f"Gradient-norm ratios on the shared parameters (median of {summary.samples} sampled iterations): "
            f"MSC/seg {summary.msc:.4f}, MJAP/seg {summary.mjap:.4f}")


def _grad_norm(term: Tensor, params: Sequence[Tensor], scale: float) -> float:
    """L2 norm over ``params`` of the gradient of ``term`` (computed on ``scale * term``, divided back)."""
    if not term.requires_grad:
        return 0.0
    grads = torch.autograd.grad(term.float() * scale, params, retain_graph=True, allow_unused=True)
    sq = [g.detach().float().pow(2).sum() for g in grads if g is not None]
    if not sq:
        return 0.0
    return float(torch.stack(sq).sum().sqrt()) / scale


class GradientNormProbe:
    """Samples the gradient-norm ratios ``||grad lambda*R|| / ||grad L_seg||`` on the shared parameters.

    Args:
        parameters: the shared parameters (:func:`shared_parameters`), or a callable returning them.
        every: sample at training iterations ``0, every, 2 * every, ...`` of each epoch (the counter is
            reset by :meth:`pop_epoch`); ``every >= 1``.
        loss_scale: callable returning the current loss scale of nnU-Net's GradScaler (fp16 autocast),
            or None for 1.

    :meth:`step` is called once per training iteration with the weighted terms; :meth:`pop_epoch`
    returns the epoch's :class:`GradRatioSummary` and starts a new epoch.
    """

    def __init__(self, parameters: Sequence[Tensor] | Callable[[], Sequence[Tensor]], every: int = 50,
                 loss_scale: Callable[[], float] | None = None) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"GradientNormProbe: every must be an integer >= 1, got {every!r}.")
        self._parameters = parameters
        self.every = every
        self.loss_scale = loss_scale
        self.iteration = 0
        self.ratios: dict[str, list[float]] = {k: [] for k in REGULARIZERS}
        self.samples = 0
        self.skipped = 0

    def parameters(self) -> list[Tensor]:
        p = self._parameters() if callable(self._parameters) else self._parameters
        return list(p)

    def step(self, seg: Tensor, terms: dict[str, Tensor | None]) -> bool:
        """Count one training iteration; on a sampled one, measure. Returns whether it measured.

        Args:
            seg: the segmentation loss (scalar, part of the autograd graph).
            terms: ``{"msc": lambda2 * MSC, "mjap": lambda3 * MJAP}``, None for a term the scheme does not
                have. Pass every term the scheme has, even a non-finite one (DDP: every rank must run
                the same backward passes); a non-finite value drops the sample.
        """
        it = self.iteration
        self.iteration += 1
        present = {k: v for k, v in terms.items() if v is not None}
        if it % self.every or not present or not torch.is_grad_enabled():
            return False
        params = self.parameters()
        if not params:
            return False
        scale = float(self.loss_scale()) if self.loss_scale is not None else 1.0
        norms = {k: _grad_norm(v, params, scale) for k, v in present.items()}
        g_seg = _grad_norm(seg, params, scale)
        if not all(math.isfinite(v) for v in (*norms.values(), g_seg)) or g_seg <= 0:
            self.skipped += 1
            logger.info("gradient-norm ratio sample dropped (seg %s, terms %s)", g_seg, norms)
            return False
        for k, v in norms.items():
            self.ratios[k].append(v / g_seg)
        self.samples += 1
        return True

    def pop_epoch(self) -> GradRatioSummary:
        """Medians of this epoch's samples (NaN where none), then reset the samples and the counter."""
        med = {k: statistics.median(v) if v else math.nan for k, v in self.ratios.items()}
        out = GradRatioSummary(self.samples, float(med["msc"]), float(med["mjap"]))
        self.ratios = {k: [] for k in REGULARIZERS}
        self.samples = self.skipped = self.iteration = 0
        return out
