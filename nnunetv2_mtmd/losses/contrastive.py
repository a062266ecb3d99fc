"""Supervised contrastive regularization with the domain as the class: MSC and SSC.

References
----------
* P. Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020 (SupCon, the ``L_out`` form,
  their equation 2).
* A. Boutillon et al., "Multi-task, multi-domain deep segmentation with shared representations and
  contrastive regularization for sparse pediatric datasets", MICCAI 2021 (SSC: SupCon on the
  bottleneck, the domain as the class).
* A. Boutillon et al., "Generalizable multi-task, multi-domain deep segmentation of sparse pediatric
  imaging datasets via multi-scale contrastive regularization and multi-joint anatomical priors",
  2022 extension (MSC: the same loss at every encoder and decoder stage, temperature 0.1 at every
  stage; lambda2 = 0.5 for their Att-UNet and Inception-UNet, 0.05 for Dense- and Efficient-UNet).

Definition
----------
For a batch of embeddings ``z_i`` (L2-normalised, shape ``(B, D)``) with labels ``y_i`` (here: the
domain index of each sample), temperature ``tau``, ``A(i) = {a != i}`` (all other samples) and
``P(i) = {p in A(i) : y_p == y_i}`` (the positives of anchor ``i``)::

    L_i = -1/|P(i)| * sum_{p in P(i)} log( exp(z_i.z_p / tau) / sum_{a in A(i)} exp(z_i.z_a / tau) )
    L   = mean of L_i over the anchors with |P(i)| >= 1

This is Khosla et al.'s ``L_out`` averaged (not summed) over anchors, with no extra
``tau / base_tau`` factor (their reference code multiplies by it; with ``base_tau = tau`` it is 1).

Scales: averaged, not summed
----------------------------
``MSC = 1/S * sum_s L(z^s)`` over the ``S`` selected stages. The 2022 paper's Eq. 5 (the combination
over scales) is not legible in the source we work from, so this is a choice, taken because it keeps
lambda2 meaningful across configurations: the averaged term has the range of a single SupCon loss
(between its floor and about ``log(B - 1)``) whatever the number of regularized stages, so the same
lambda2 weighs SSC (one stage) and MSC (9 stages for nnU-Net's 5-stage 2D U-Net) alike, and a
lambda2 chosen for one depth still means the same for another. A sum would multiply the weight by S
(lambda2 = 0.5 on 9 summed stages is 4.5 times one SupCon loss, more than the segmentation loss
itself). With the paper's lambda2 = 0.5 on the mean, each stage
carries 0.5 / S; had the paper summed over its S_p stages, its per-stage weight would be S / S_p
times ours. The logged gradient-norm ratio MSC/seg (:mod:`nnunetv2_mtmd.losses.gradient_ratio`) is
the check of the balance either way.

Floor with balanced batches
---------------------------
For every anchor ``L_i >= log|P(i)|`` (the positive terms alone already give
``logsumexp_p(s_ip) - mean_p(s_ip) >= log|P(i)|``), so with ``n = B/K`` samples per domain the loss is
bounded below by ``log(n - 1) = log(B/K - 1)``, not 0 (0 only for ``B/K = 2``). When every sample's
embedding equals its domain's embedding and two domains' embeddings have cosine ``c``::

    L_i = log((n - 1) + (B - n) * exp((c - 1) / tau))

which tends to ``log(B/K - 1)`` as ``(1 - c) / tau`` grows (at tau = 0.1 and orthogonal domains,
``c = 0``, the excess is ``(B - n) / (n - 1) * e^-10``). Collapsed embeddings (``c = 1``, the start of
training) give ``log(B - 1)``.

Anchors without a positive (a domain with a single sample in the batch, or a batch in which every
sample has its own domain) are **excluded** from the mean, as in the SupCon reference code: such an
anchor has nothing to be pulled towards, and ``-1/|P(i)| * sum`` over an empty set is undefined.
Such samples still act as negatives (they sit in the denominator of the other anchors). When no
anchor has a positive, the loss is exactly ``0`` (returned as ``z.sum() * 0`` so that the autograd
graph stays intact and gradients are zeros, never None or NaN). The number of anchors that were used
is reported (``return_num_valid`` / :attr:`MultiScaleContrastiveLoss.last_num_valid_anchors`) so
that a trainer can count batches that carried no contrastive signal.

Single-domain batch (no negatives): every other sample is a positive, ``P(i) = A(i)``, and::

    L_i = logsumexp_{a != i}(s_ia) - mean_{a != i}(s_ia),      s_ia = z_i.z_a / tau

By Jensen's inequality ``L_i >= log(B - 1)``, with equality iff all similarities of anchor ``i`` to
the other samples are equal. So the loss stays finite and well defined, its floor is ``log(B-1)``
(not 0), and its gradient does not pull samples together as a whole: it only equalises each
anchor's similarities (pulls the closest samples' similarity down towards the mean and the
farthest up). With ``B = 2`` it is identically 0. In the trainer batches are split equally between
the domains, so this case only arises with a single-domain dataset or a batch size below 2K.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nnunetv2_mtmd.losses.temperature import BoundedTemperature

logger = logging.getLogger(__name__)

__all__ = [
    "BoundedTemperature",
    "supcon_loss",
    "embed",
    "gather_across_ranks",
    "MultiScaleContrastiveLoss",
    "select_stages",
    "multi_scale_supcon_loss",
]

StageSpec = Literal["all", "bottleneck"] | Sequence[int]


def _check_temperature(temperature: float | Tensor) -> float | Tensor:
    """A float temperature is validated (finite, > 0); a tensor one (learnable) is passed through
    unchecked, to avoid a host synchronisation: :class:`BoundedTemperature` keeps it in range."""
    if isinstance(temperature, Tensor):
        if temperature.dim() != 0:
            raise ValueError(f"supcon_loss: a tensor temperature must be 0-dim, got shape {tuple(temperature.shape)}.")
        return temperature
    t = float(temperature)
    if not t > 0 or t != t or t == float("inf"):
        raise ValueError(f"SupCon temperature must be a finite number > 0, got {temperature!r}.")
    return t


def supcon_loss(
    z: Tensor,
    labels: Tensor,
    temperature: float | Tensor = 0.1,
    return_num_valid: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Supervised contrastive loss (Khosla et al. 2020, ``L_out``), averaged over valid anchors.

    Computed in float32 even under autocast. ``z`` is L2-normalised inside (idempotent for vectors
    that are already unit length, with the same gradient), so the similarities are cosines.

    Args:
        z: embeddings, shape ``(B, D)``, any floating dtype.
        labels: integer class (here: domain index) per sample, shape ``(B,)``.
        temperature: ``tau > 0``; the paper uses 0.1. A 0-dim tensor (a learnable temperature) is used
            as is, in float32, and receives gradients.
        return_num_valid: also return the number of anchors that had at least one positive.

    Returns:
        The scalar loss (float32); with ``return_num_valid`` a tuple ``(loss, num_valid)`` where
        ``num_valid`` is a 0-dim int64 tensor on ``z``'s device (no host synchronisation).
        See the module docstring for anchors without positives and single-class batches.
    """
    t = _check_temperature(temperature)
    if z.dim() != 2:
        raise ValueError(f"supcon_loss: z must have shape (B, D), got {tuple(z.shape)}.")
    labels = labels.reshape(-1)
    if labels.numel() != z.shape[0]:
        raise ValueError(
            f"supcon_loss: got {z.shape[0]} embeddings but {labels.numel()} labels; expected one label "
            "(domain index) per sample."
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"supcon_loss: labels must be an integer tensor, got {labels.dtype}.")
    labels = labels.to(z.device)
    b = z.shape[0]
    with torch.autocast(device_type=z.device.type, enabled=False):
        zf = F.normalize(z.float(), p=2.0, dim=1)
        same = labels[:, None] == labels[None, :]
        not_self = ~torch.eye(b, dtype=torch.bool, device=z.device)
        pos = same & not_self  # (B, B)
        num_pos = pos.sum(dim=1)  # (B,)
        valid = num_pos > 0
        num_valid = valid.sum()
        if b < 2:
            # No anchor can have a positive (nor a denominator): the loss is 0 by definition.
            loss = zf.sum() * 0.0
        else:
            tf = t.float() if isinstance(t, Tensor) else t
            logits = (zf @ zf.t()) / tf  # (B, B), cosine / tau
            # Self-similarity is excluded from the denominator: -inf BEFORE logsumexp. Every row
            # keeps B-1 >= 1 finite entries, so logsumexp is finite; masked_fill passes zero
            # gradient to the filled positions, so no NaN reaches the backward pass.
            logits = logits.masked_fill(~not_self, float("-inf"))
            log_denominator = torch.logsumexp(logits, dim=1, keepdim=True)  # (B, 1), stable
            log_prob = logits - log_denominator  # -inf on the diagonal only
            # Select the positives with where() (never 0 * -inf, which would be NaN).
            pos_log_prob = torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(dim=1)  # (B,)
            per_anchor = -pos_log_prob / num_pos.clamp(min=1).to(pos_log_prob.dtype)  # (B,)
            per_anchor = torch.where(valid, per_anchor, torch.zeros_like(per_anchor))
            # mean over valid anchors; 0 (with intact graph) when there is none
            loss = per_anchor.sum() / num_valid.clamp(min=1).to(per_anchor.dtype)
    if return_num_valid:
        return loss, num_valid
    return loss


def embed(features: Sequence[Tensor]) -> list[Tensor]:
    """Global average pooling + L2 normalisation of each stage output, in float32.

    Args:
        features: stage outputs, each ``(B, C_s, *spatial)`` (``(B, C_s, X_s, Y_s)`` in 2D).

    Returns:
        One ``(B, C_s)`` float32 tensor of unit-length rows per stage (a row that is exactly zero
        stays zero). Used by the contrastive losses and by the embedding analysis (t-SNE, cosine
        similarities).
    """
    out = []
    for i, f in enumerate(features):
        if f.dim() < 3:
            raise ValueError(
                f"embed: feature map {i} must have shape (B, C, X, Y[, Z]), got {tuple(f.shape)}."
            )
        with torch.autocast(device_type=f.device.type, enabled=False):
            g = f.float().mean(dim=tuple(range(2, f.dim())))
            out.append(F.normalize(g, p=2.0, dim=1))
    return out


def select_stages(
    num_features: int, stages: StageSpec = "all", bottleneck_index: int | None = None
) -> list[int]:
    """Indices of the feature maps a multi-scale loss uses.

    The feature list of the multi-domain U-Net is: encoder stage outputs from high to low
    resolution (``n_stages`` entries, the last one is the bottleneck), then decoder stage outputs
    from low to high resolution (``n_stages - 1`` entries), i.e. ``2 * n_stages - 1`` entries with the
    bottleneck at index ``n_stages - 1 == num_features // 2``.

    Args:
        num_features: length of the feature list.
        stages: ``"all"`` (MSC), ``"bottleneck"`` (SSC) or explicit indices (negative indices count
            from the end).
        bottleneck_index: index of the bottleneck; derived as ``num_features // 2`` when None, which
            requires an odd ``num_features`` (encoder + decoder list).
    """
    if num_features < 1:
        raise ValueError("multi-scale contrastive loss: the feature list is empty.")
    if isinstance(stages, str):
        if stages == "all":
            return list(range(num_features))
        if stages == "bottleneck":
            if bottleneck_index is None:
                if num_features % 2 == 0:
                    raise ValueError(
                        f"multi-scale contrastive loss: cannot derive the bottleneck from {num_features} "
                        "feature maps; expected 2*n_stages-1 (encoder then decoder outputs, an odd "
                        "number). Pass bottleneck_index explicitly."
                    )
                return [num_features // 2]
            stages = [bottleneck_index]
        else:
            raise ValueError(
                f"multi-scale contrastive loss: stages must be 'all', 'bottleneck' or a list of ints, "
                f"got {stages!r}."
            )
    idx = []
    for s in stages:
        if isinstance(s, bool) or not isinstance(s, int) or not -num_features <= s < num_features:
            raise ValueError(
                f"multi-scale contrastive loss: stage index {s!r} is out of range for {num_features} "
                f"feature maps (valid: {-num_features}..{num_features - 1})."
            )
        idx.append(s % num_features)
    if not idx:
        raise ValueError("multi-scale contrastive loss: the list of stages is empty.")
    return idx


def _dist_active() -> bool:
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def gather_across_ranks(zs: Sequence[Tensor], labels: Tensor) -> tuple[list[Tensor], Tensor]:
    """All-gather per-stage embeddings (with gradients) and labels from every rank (DDP).

    Args:
        zs: per-stage embeddings of this rank, each ``(B_r, D_s)``.
        labels: ``(B_r,)`` integer labels (domain indices) of this rank.

    Returns:
        ``(zs_all, labels_all)``: each ``(sum_r B_r, D_s)`` / ``(sum_r B_r,)``, concatenated in rank
        order. Without an initialised process group of more than one rank, the inputs unchanged.

    The embeddings of all stages travel in one ``torch.distributed.nn.functional.all_gather``
    (differentiable: its backward sums the gradients that every rank computed for this rank's rows,
    so after DDP's gradient averaging the parameter gradient is that of the loss on the global
    batch). Ranks may hold different numbers of samples (rows are padded, then dropped). Every rank
    must call this the same number of times, as with any collective.
    """
    if not _dist_active():
        return list(zs), labels
    import torch.distributed as dist
    from torch.distributed.nn.functional import all_gather

    world = dist.get_world_size()
    b = zs[0].shape[0]
    dims = [z.shape[1] for z in zs]
    size = torch.tensor([b], dtype=torch.long, device=zs[0].device)
    sizes_t = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes_t, size)
    sizes = [int(t) for t in sizes_t]
    m = max(sizes)
    # one (m, sum D_s + 1) tensor per rank: all stages, then the label (exact in float32 for small ints)
    packed = torch.cat([z.float() for z in zs] + [labels.reshape(-1, 1).to(zs[0].device, torch.float32)], 1)
    if m > b:
        packed = F.pad(packed, (0, 0, 0, m - b))
    rows = torch.cat([t[:n] for t, n in zip(all_gather(packed), sizes)])  # (sum B_r, sum D_s + 1)
    out, start = [], 0
    for d in dims:
        out.append(rows[:, start:start + d])
        start += d
    labels_all = rows[:, start].detach().round().long()
    return out, labels_all


def multi_scale_supcon_loss(
    features: Sequence[Tensor],
    labels: Tensor,
    temperature: float | Tensor = 0.1,
    stages: StageSpec = "all",
    bottleneck_index: int | None = None,
    gather_distributed: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Functional form of :class:`MultiScaleContrastiveLoss`.

    ``temperature`` is one float for every stage, or an ``(S,)`` tensor with one (learnable)
    temperature per selected stage, in the order of :func:`select_stages`.

    With ``gather_distributed`` (and torch.distributed initialised with several ranks) the
    embeddings of all ranks are gathered with gradients (:func:`gather_across_ranks`) and the loss
    is computed over the global batch, identically on every rank.

    Returns:
        ``(loss, per_stage, num_valid)``: the scalar MEAN over the selected stages of
        :func:`supcon_loss` on :func:`embed` of each stage (module docstring: "Scales: averaged, not
        summed"), the ``(S,)`` per-stage losses, and the number of anchors with a positive (the same
        at every stage: it depends on the labels only).
    """
    idx = select_stages(len(features), stages, bottleneck_index)
    if isinstance(temperature, Tensor) and temperature.shape != (len(idx),):
        raise ValueError(f"multi-scale contrastive loss: {len(idx)} stage(s) selected but the temperature tensor "
                         f"has shape {tuple(temperature.shape)}; expected ({len(idx)},), one per stage.")
    zs = embed([features[i] for i in idx])
    if gather_distributed:
        zs, labels = gather_across_ranks(zs, labels.reshape(-1))
    per_stage = []
    num_valid = None
    for s, z in enumerate(zs):
        tau = temperature[s] if isinstance(temperature, Tensor) else temperature
        loss_s, num_valid = supcon_loss(z, labels, tau, return_num_valid=True)
        per_stage.append(loss_s)
    per_stage_t = torch.stack(per_stage)
    return per_stage_t.mean(), per_stage_t, num_valid


def _num_scales(stages: StageSpec, num_features: int | None, bottleneck_index: int | None) -> int:
    """Number of stages a loss with these settings uses (needed before the first forward pass to
    create one learnable temperature per stage)."""
    if stages == "bottleneck":
        return 1
    if stages == "all":
        if num_features is None:
            raise ValueError("MultiScaleContrastiveLoss: a learnable temperature with stages='all' needs "
                             "num_features (the length of the feature list, 2 * n_stages - 1) to create one "
                             "temperature per stage.")
        return num_features
    if num_features is not None:
        return len(select_stages(num_features, stages, bottleneck_index))
    return len(stages)


class MultiScaleContrastiveLoss(nn.Module):
    """MSC (``stages="all"``) or SSC (``stages="bottleneck"``) regularization.

    ``loss = 1/S * sum over the S selected stages s of supcon_loss(L2norm(GAP(features[s])), domain_idx,
    tau_s)`` (Boutillon et al. 2021/2022; Khosla et al. 2020): the stages are AVERAGED, so lambda2 does
    not depend on how many stages are regularized (module docstring, "Scales: averaged, not summed").
    Computed in float32 under autocast. Its floor with balanced batches is ``log(B/K - 1)`` (module
    docstring).

    Temperatures: by default ``tau_s = temperature`` at every stage (the paper: 0.1) and the module has
    no parameters. With ``learnable_temperature`` it holds a :class:`BoundedTemperature` (attribute
    :attr:`temperatures`): one parameter per selected stage, started at ``temperature`` and kept in
    ``temperature_range`` (a sigmoid between the bounds, in log space); the trainer hands its
    parameters to the optimizer. Under DDP with ``gather_distributed`` every rank computes the same
    loss over the global batch, so the temperature gradients agree on every rank without averaging.

    Args:
        temperature: ``tau`` (default 0.1, as in the paper); the starting value when learnable.
        stages: ``"all"``, ``"bottleneck"`` or a list of feature-list indices; see
            :func:`select_stages` for the order of the feature list.
        bottleneck_index: index of the bottleneck in the feature list; None derives it as
            ``len(features) // 2`` (the list has ``2 * n_stages - 1`` entries).
        gather_distributed: under torch.distributed (DDP), compute the loss over the embeddings of
            all ranks (all-gathered with gradients) instead of this rank's samples only; a no-op
            in a single process. Every rank must then call the loss in every training step.
        learnable_temperature: learn one temperature per selected stage (the 2022 paper's future work).
        temperature_range: ``(lo, hi)`` of the learnable temperatures (``lo < temperature < hi``).
        num_features: length of the feature list the loss will be called with; required with
            ``learnable_temperature`` and ``stages="all"`` (to know the number of temperatures), and
            then checked at every call.

    After each forward, :attr:`last_num_valid_anchors` holds the number of anchors with at least one
    positive (a Python int, read from the device once per call; 0 means the batch carried no
    contrastive signal and the loss was 0), and
    :attr:`last_stage_losses` the detached ``(S,)`` per-stage losses.
    """

    def __init__(
        self,
        temperature: float = 0.1,
        stages: StageSpec = "all",
        bottleneck_index: int | None = None,
        gather_distributed: bool = False,
        learnable_temperature: bool = False,
        temperature_range: tuple[float, float] = (0.03, 1.0),
        num_features: int | None = None,
    ) -> None:
        super().__init__()
        self.temperature = _check_temperature(float(temperature))
        self.gather_distributed = bool(gather_distributed)
        if isinstance(stages, str):
            if stages not in ("all", "bottleneck"):
                raise ValueError(f"stages must be 'all', 'bottleneck' or a list of ints, got {stages!r}.")
            self.stages: StageSpec = stages
        else:
            self.stages = [int(s) for s in stages]
        self.bottleneck_index = bottleneck_index
        self.num_features = num_features
        self.temperatures: BoundedTemperature | None = None
        if learnable_temperature:
            n = _num_scales(self.stages, num_features, bottleneck_index)
            self.temperatures = BoundedTemperature(n, self.temperature, temperature_range)
        self.last_num_valid_anchors: int | None = None
        self.last_stage_losses: Tensor | None = None

    @property
    def learnable_temperature(self) -> bool:
        return self.temperatures is not None

    def temperature_values(self) -> list[float]:
        """Current temperature of every selected stage (learnable: one host synchronisation); with a fixed
        temperature and an unknown number of stages, a one-element list."""
        if self.temperatures is not None:
            return self.temperatures.values()
        if self.num_features is None and self.stages == "all":
            return [self.temperature]
        return [self.temperature] * _num_scales(self.stages, self.num_features, self.bottleneck_index)

    def forward(self, features: Sequence[Tensor], domain_idx: Tensor) -> Tensor:
        """Args:
            features: stage outputs ``(B, C_s, X_s, Y_s)``: encoder high->low resolution, then
                decoder low->high resolution.
            domain_idx: ``(B,)`` int64 domain index of each sample (the SupCon class).

        Returns:
            Scalar float32 loss.
        """
        temperature: float | Tensor = self.temperature
        if self.temperatures is not None:
            if self.num_features is not None and len(features) != self.num_features:
                raise ValueError(f"MultiScaleContrastiveLoss: built for {self.num_features} feature maps (one "
                                 f"learnable temperature per stage), called with {len(features)}.")
            temperature = self.temperatures()
        loss, per_stage, num_valid = multi_scale_supcon_loss(
            features, domain_idx, temperature, self.stages, self.bottleneck_index, self.gather_distributed
        )
        self.last_num_valid_anchors = int(num_valid)
        self.last_stage_losses = per_stage.detach()
        return loss

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, stages={self.stages!r}, "
            f"bottleneck_index={self.bottleneck_index}, gather_distributed={self.gather_distributed}, "
            f"learnable_temperature={self.learnable_temperature}"
        )
