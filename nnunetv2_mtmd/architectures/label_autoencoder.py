"""The multi-joint (multi-domain) label autoencoder of MJAP (Boutillon et al. 2022).

References
----------
* O. Oktay et al., "Anatomically Constrained Neural Networks (ACNN)", IEEE TMI 2018: a label
  autoencoder learns a compact code of plausible shapes.
* A. Boutillon et al., "Generalizable multi-task, multi-domain deep segmentation of sparse pediatric
  imaging datasets via multi-scale contrastive regularization and multi-joint anatomical priors",
  2022 (Table 1, Fig. 3): one autoencoder for all joints (domains) with shared convolutions,
  domain-specific batch normalization (DSBN), a domain-specific input layer (that domain's one-hot
  classes) and a domain-specific output layer; 4 max-pooling stages, channels doubling per stage,
  2 convolutions per stage. Its Shared+MJAP scheme uses the same autoencoder with every parameter
  shared (``shared=True`` here).

The network works in the UNIFIED label space of a merged dataset (docs/design.md, "Unified label
space"): channel 0 is background, then each domain's labels; domain ``k`` owns the channels
``[0] + domain_label_ids[k]``. Its outputs fill the other domains' channels with
:data:`~nnunetv2_mtmd.architectures.heads.OTHER_DOMAIN_LOGIT`, through the same gather table as the
segmentation network's heads (:func:`~nnunetv2_mtmd.architectures.heads.unified_gather_table`).
Its training loss is :mod:`nnunetv2_mtmd.training.autoencoder_loss`; the prior that uses it is
:mod:`nnunetv2_mtmd.losses.anatomical_prior`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nnunetv2_mtmd.architectures.dsbn import (
    DomainSpecificBatchNorm2d,
    DomainSpecificBatchNorm3d,
    set_domain_index,
)
from nnunetv2_mtmd.architectures.heads import (
    OTHER_DOMAIN_LOGIT,
    gather_unified,
    unified_gather_table,
    validate_domain_label_ids,
)

__all__ = ["OTHER_DOMAIN_LOGIT", "LabelAutoencoder", "freeze", "labels_to_onehot", "reconstruction_dice"]

_DIMS = {nn.Conv2d: 2, nn.Conv3d: 3}
_NORMS = {2: DomainSpecificBatchNorm2d, 3: DomainSpecificBatchNorm3d}
_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_CONV_F = {2: F.conv2d, 3: F.conv3d}


def freeze(module: nn.Module) -> nn.Module:
    """Freeze ``module`` in place and return it: eval mode (DSBN uses and never updates its running
    statistics) and ``requires_grad=False`` on every parameter. The one way the plugin freezes the
    trained label autoencoder (after its phase, when a checkpoint restores it, inside the MJAP loss)."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def labels_to_onehot(labels: Tensor, num_classes: int) -> Tensor:
    """One-hot encode an integer label map.

    Args:
        labels: ``(B, 1, X, Y)`` or ``(B, X, Y)`` integer unified label ids in ``[0, num_classes)``
            (3D: one more spatial axis). Not range-checked (that would synchronise with the device).
        num_classes: C, the number of unified classes (background included).

    Returns:
        ``(B, C, X, Y)`` float32 one-hot tensor.
    """
    if labels.dtype.is_floating_point:
        labels = labels.round()
    labels = labels.long()
    if labels.dim() >= 4 and labels.shape[1] == 1:
        labels = labels[:, 0]
    shape = (labels.shape[0], num_classes, *labels.shape[1:])
    out = torch.zeros(shape, dtype=torch.float32, device=labels.device)
    return out.scatter_(1, labels[:, None], 1.0)


def _per_dim(value: int | Sequence[int], dim: int, what: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        out = (value,) * dim
    else:
        out = tuple(int(v) for v in value)
    if len(out) != dim or any(v < 1 for v in out):
        raise ValueError(
            f"LabelAutoencoder: {what} must be a positive int or {dim} positive ints, got {value!r}."
        )
    return out


def _he_init(module: nn.Module, slope: float) -> None:
    """nnU-Net's initialisation (``InitWeights_He``): Kaiming normal for every (transposed) convolution."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(m.weight, a=slope)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class _ConvNormAct(nn.Sequential):
    """conv (no bias) -> DSBN -> LeakyReLU."""

    def __init__(self, dim: int, cin: int, cout: int, kernel: tuple[int, ...], norm_kwargs: dict,
                 slope: float) -> None:
        conv = _CONV[dim](cin, cout, kernel, padding=tuple(k // 2 for k in kernel), bias=False)
        super().__init__(conv, _NORMS[dim](cout, **norm_kwargs), nn.LeakyReLU(slope, inplace=True))


def _checked_args(domain_label_ids: Sequence[Sequence[int]], features: Sequence[int],
                  strides: Sequence[int | Sequence[int]], conv_op: type[nn.Module], kernel_size: int,
                  convs_per_stage: int, num_classes: int | None,
                  code_channels: int | None) -> tuple[list[list[int]], int, list[int], int, int]:
    """The validated ``(domain_label_ids, num_classes, features, dim, code_channels)`` of a
    :class:`LabelAutoencoder`; ``ValueError`` naming the argument otherwise."""
    if conv_op not in _DIMS:
        raise ValueError(f"LabelAutoencoder: conv_op must be nn.Conv2d or nn.Conv3d, got {conv_op!r}.")
    if num_classes is not None:  # checked first: the clearer message when ids and num_classes disagree
        too_big = [i for d in domain_label_ids for i in d if isinstance(i, int) and i >= num_classes]
        if too_big:
            raise ValueError(
                f"LabelAutoencoder: label id {max(too_big)} does not fit num_classes={num_classes} "
                "(background 0 + unified ids)."
            )
    ids = [list(d) for d in validate_domain_label_ids(domain_label_ids, "LabelAutoencoder domain_label_ids")]
    if num_classes is None:
        num_classes = 1 + max(i for d in ids for i in d)
    features = [int(f) for f in features]
    if len(features) < 1 or len(strides) != len(features) or any(f < 1 for f in features):
        raise ValueError(
            f"LabelAutoencoder: features and strides must be non-empty and of equal length; got "
            f"features={features!r}, strides={strides!r}."
        )
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"LabelAutoencoder: kernel_size must be odd, got {kernel_size!r}.")
    if convs_per_stage < 1:
        raise ValueError(f"LabelAutoencoder: convs_per_stage must be >= 1, got {convs_per_stage!r}.")
    if code_channels is None:
        code_channels = max(1, features[-1] // 4)
    if isinstance(code_channels, bool) or not isinstance(code_channels, int) or code_channels < 1:
        raise ValueError(f"LabelAutoencoder: code_channels must be a positive int or None, got {code_channels!r}.")
    return ids, int(num_classes), features, _DIMS[conv_op], code_channels


class LabelAutoencoder(nn.Module):
    """Multi-joint (multi-domain) label autoencoder of Boutillon et al. 2022 (MJAP), no skip connections.

    Architecture (``S = len(features)`` stages; the defaults are the paper's shape, Table 1, at half
    its width: 16 -> 256 channels, 4 max-poolings, 2 convolutions per stage)::

        input  (B, C_unified, X, Y)  one-hot (ground truth) or softmax (prediction), unified space
        enc 0  domain-specific conv k x k, (1 + n_k) -> features[0]; DSBN; LeakyReLU;
               then (convs_per_stage - 1) x [shared conv; DSBN; LeakyReLU]
        enc s  max-pool strides[s]; shared conv features[s-1] -> features[s]; DSBN; LeakyReLU;
               then (convs_per_stage - 1) x [shared conv; DSBN; LeakyReLU]     (s = 1 .. S-1)
        code   1x1 conv features[-1] -> code_channels (linear): (B, code_channels, X / stride, Y / stride)
        dec    1x1 conv code_channels -> features[-1]; DSBN; LeakyReLU; then for s = S-2 .. 0:
               transposed conv (kernel = stride = strides[s+1]) features[s+1] -> features[s]; DSBN;
               LeakyReLU; convs_per_stage x [shared conv; DSBN; LeakyReLU]
        output domain-specific 1x1 conv features[0] -> 1 + n_k, written into the unified channels
               [0] + ids_k; the other domains' channels are OTHER_DOMAIN_LOGIT (-1000)

    The code is at most a quarter of the one-hot input when ``code_channels * X * Y / stride**2 <=
    C_unified * X * Y / 4`` (defaults: 64 channels at 1/16 of the resolution per axis, 1/4 value per
    pixel), so the autoencoder has to compress. :meth:`forward` returns the ``2 S - 1`` stage outputs
    (encoder stages, high to low resolution, then decoder stages, low to high), MSC's scales.

    All convolutions are shared between domains except the input and output layers; every
    normalization is a DSBN (per-domain statistics and affine parameters). The per-domain layers
    are vectorised: the input layer is ONE grouped convolution whose per-sample weights are gathered
    from a ``(K, F0, C_unified, k, k)`` tensor masked to each domain's channels (so a domain's input
    layer only ever sees its own classes: masked weights get zero gradient and never act), and the
    output layer is ONE 1x1 convolution computing all K heads followed by a gather into the unified
    channels.

    ``shared=True`` is the fully shared variant of the Shared+MJAP scheme: one input layer over all
    unified channels, one batch norm per layer for all domains (a DSBN of one domain, so that DDP
    synchronises it like the others), one output head over all unified channels (no -1000 fill); the
    domain index is accepted and ignored. :attr:`domain_channel_mask` (``(K, C)``: the channels a
    sample of domain k may hold) is then all True; :attr:`own_channel_mask` is always the domains'
    own channels.

    The spatial size of the input must be divisible by the total stride ``prod(strides)`` per axis
    (16 for the defaults); nnU-Net patches of a 5-stage plan are.

    Args:
        domain_label_ids: for each domain k (in domain order), its unified foreground label ids
            (``DomainSpec`` order; background 0 is implicit). Ids must be unique across domains.
        features: channels per stage; default ``(16, 32, 64, 128, 256)``.
        strides: max-pool factor per stage (int or per-axis tuple); ``strides[0]`` must be 1 (the
            first stage works at full resolution); default ``(1, 2, 2, 2, 2)``.
        conv_op: ``nn.Conv2d`` (default) or ``nn.Conv3d``.
        kernel_size: odd kernel size of the k x k convolutions.
        convs_per_stage: convolutions per encoder/decoder stage.
        num_classes: C_unified; default ``1 + max(all ids)``.
        negative_slope: LeakyReLU slope (nnU-Net uses 0.01).
        norm_eps, norm_momentum: DSBN eps (1e-5, as in the paper) and momentum.
        code_channels: channels of the code (1x1 reduction of the bottleneck); default
            ``features[-1] // 4``.
        shared: the fully shared variant (see above).
    """

    def __init__(
        self,
        domain_label_ids: Sequence[Sequence[int]],
        features: Sequence[int] = (16, 32, 64, 128, 256),
        strides: Sequence[int | Sequence[int]] = (1, 2, 2, 2, 2),
        conv_op: type[nn.Module] = nn.Conv2d,
        kernel_size: int = 3,
        convs_per_stage: int = 2,
        num_classes: int | None = None,
        negative_slope: float = 0.01,
        norm_eps: float = 1e-5,
        norm_momentum: float = 0.1,
        code_channels: int | None = None,
        shared: bool = False,
    ) -> None:
        super().__init__()
        ids, num_classes, features, dim, code_channels = _checked_args(
            domain_label_ids, features, strides, conv_op, kernel_size, convs_per_stage, num_classes, code_channels)
        self.dim = dim
        self.num_domains = len(ids)
        self.num_classes = int(num_classes)
        self.domain_label_ids = ids
        self.features = features
        self.code_channels = code_channels
        self.shared = bool(shared)
        self.strides = [_per_dim(s, dim, f"strides[{i}]") for i, s in enumerate(strides)]
        if any(v != 1 for v in self.strides[0]):
            raise ValueError(f"LabelAutoencoder: strides[0] must be 1 (the first stage works at full resolution), "
                             f"got {strides[0]!r}; put the pooling into the later stages.")
        self.total_stride = tuple(math.prod(s[a] for s in self.strides) for a in range(dim))
        self._config: dict[str, Any] = {
            "domain_label_ids": ids, "features": features, "strides": [list(s) for s in self.strides], "dim": dim,
            "kernel_size": int(kernel_size), "convs_per_stage": int(convs_per_stage), "num_classes": self.num_classes,
            "negative_slope": float(negative_slope), "norm_eps": float(norm_eps),
            "norm_momentum": float(norm_momentum), "code_channels": code_channels, "shared": self.shared,
        }
        kernel = (kernel_size,) * dim
        # the per-domain layers: one "layer domain" per domain, or one for everything (shared)
        layer_ids = [sorted(i for d in ids for i in d)] if self.shared else ids
        self._layer_domains = len(layer_ids)
        nkw = {"num_domains": self._layer_domains, "eps": norm_eps, "momentum": norm_momentum, "affine": True}

        # ---- channel bookkeeping (derived from the constructor: not saved in the state dict); the same
        # gather table as the segmentation network's heads
        _, own_mask, _ = unified_gather_table(ids, self.num_classes)
        out_index, layer_mask, offset = unified_gather_table(layer_ids, self.num_classes)
        self.register_buffer("own_channel_mask", own_mask, persistent=False)  # (K, C)
        allowed = torch.ones_like(own_mask) if self.shared else own_mask
        self.register_buffer("domain_channel_mask", allowed, persistent=False)  # (K, C)
        self.register_buffer("_layer_channel_mask", layer_mask, persistent=False)  # (K or 1, C)
        self.register_buffer("_out_index", out_index, persistent=False)  # (K or 1, C)
        self._num_head_channels = offset

        # built in this order: parameters are initialised from torch's RNG in construction order
        self._build_input_layer(layer_ids, kernel, nkw, negative_slope)
        self._build_encoder_decoder(kernel, nkw, negative_slope, convs_per_stage)
        # ---- domain-specific output layer: all K heads in one 1x1 conv, gathered per sample
        self.output_conv = conv_op(features[0], self._num_head_channels, 1, bias=True)

    def _build_input_layer(self, layer_ids: list[list[int]], kernel: tuple[int, ...], nkw: dict,
                           negative_slope: float) -> None:
        """The domain-specific input layer: weights ``(K, F0, C, k, k)``, masked to each domain's channels."""
        k_layer, dim, f0 = self._layer_domains, self.dim, self.features[0]
        w = torch.zeros(k_layer, f0, self.num_classes, *kernel)
        for k, d in enumerate(layer_ids):
            wk = torch.empty(f0, 1 + len(d), *kernel)
            nn.init.kaiming_normal_(wk, a=negative_slope)  # fan_in = (1 + n_k) * k^dim
            w[k][:, [0, *d]] = wk
        self.input_weight = nn.Parameter(w)
        self.register_buffer(
            "_input_weight_mask",
            self._layer_channel_mask.view(k_layer, 1, self.num_classes, *(1,) * dim).float(),
            persistent=False,
        )
        self.input_padding = tuple(kk // 2 for kk in kernel)
        self.input_norm = _NORMS[dim](f0, **nkw)
        self.input_act = nn.LeakyReLU(negative_slope, inplace=True)

    def _build_encoder_decoder(self, kernel: tuple[int, ...], nkw: dict, negative_slope: float,
                               convs_per_stage: int) -> None:
        """The shared encoder (max-pooling), the 1x1 code layers and the shared decoder (no skips)."""
        dim, features = self.dim, self.features

        def cna(cin: int, cout: int) -> nn.Module:
            return _ConvNormAct(dim, cin, cout, kernel, nkw, negative_slope)

        self.encoder = nn.ModuleList()
        for s, f in enumerate(features):
            # stage 0 starts with the domain-specific input layer (applied in encode_stages)
            blocks: list[nn.Module] = []
            if s > 0:
                blocks += [_POOL[dim](self.strides[s], self.strides[s]), cna(features[s - 1], f)]
            blocks += [cna(f, f) for _ in range(convs_per_stage - 1)]
            self.encoder.append(nn.Sequential(*blocks))
        self.to_code = _CONV[dim](features[-1], self.code_channels, 1, bias=True)
        self.from_code = nn.Sequential(_CONV[dim](self.code_channels, features[-1], 1, bias=False),
                                       _NORMS[dim](features[-1], **nkw), nn.LeakyReLU(negative_slope, inplace=True))
        self.decoder = nn.ModuleList()
        for s in reversed(range(len(features) - 1)):
            cin, cout = features[s + 1], features[s]
            up = _CONV_T[dim](cin, cout, self.strides[s + 1], stride=self.strides[s + 1], bias=False)
            blocks = [up, _NORMS[dim](cout, **nkw), nn.LeakyReLU(negative_slope, inplace=True)]
            blocks += [cna(cout, cout) for _ in range(convs_per_stage)]
            self.decoder.append(nn.Sequential(*blocks))
        _he_init(self.encoder, negative_slope)
        _he_init(self.decoder, negative_slope)
        _he_init(self.from_code, negative_slope)

    # ------------------------------------------------------------------------------- config I/O
    def get_config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments; :meth:`from_config` rebuilds the same module."""
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self._config.items()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LabelAutoencoder:
        cfg = dict(config)
        dim = cfg.pop("dim", 2)
        return cls(conv_op=nn.Conv2d if dim == 2 else nn.Conv3d, **cfg)

    def code_shape(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """Shape ``(code_channels, X / stride, Y / stride)`` of the code of one input of size ``spatial``."""
        return (self.code_channels, *(int(s) // t for s, t in zip(spatial, self.total_stride)))

    # ------------------------------------------------------------------------------- forward
    def _check(self, x: Tensor, domain_idx: Tensor) -> Tensor:
        if x.dim() != self.dim + 2 or x.shape[1] != self.num_classes:
            raise ValueError(
                f"LabelAutoencoder: expected input (B, {self.num_classes}, "
                f"{', '.join('XYZ'[: self.dim])}) in the unified label space, got {tuple(x.shape)}."
            )
        bad = [a for a in range(self.dim) if x.shape[2 + a] % self.total_stride[a] != 0]
        if bad:
            raise ValueError(
                f"LabelAutoencoder: spatial size {tuple(x.shape[2:])} is not divisible by the total "
                f"stride {self.total_stride}; pad or crop the patch to a multiple of it."
            )
        if not isinstance(domain_idx, Tensor) or domain_idx.dim() != 1 or domain_idx.shape[0] != x.shape[0]:
            raise ValueError(
                f"LabelAutoencoder: domain_idx must be a (B,) = ({x.shape[0]},) tensor of domain indices, "
                f"got {domain_idx!r}."
            )
        return domain_idx.to(device=x.device, dtype=torch.long)

    def _layer_domain(self, d: Tensor) -> Tensor:
        """Index into the per-domain layers: the domain, or 0 for every sample (shared)."""
        return torch.zeros_like(d) if self.shared else d

    def encode_stages(self, onehot: Tensor, domain_idx: Tensor) -> list[Tensor]:
        """Encoder stage outputs, high to low resolution (the last one is the bottleneck, before the
        1x1 reduction to the code).

        Args:
            onehot: ``(B, C_unified, X, Y)`` one-hot labels or class probabilities (unified space);
                only channels ``[0] + ids_k`` of each sample's domain k are read (all: shared).
            domain_idx: ``(B,)`` int64 domain index per sample.

        Returns:
            ``S`` tensors ``(B, features[s], X_s, Y_s)``.
        """
        d = self._layer_domain(self._check(onehot, domain_idx))
        set_domain_index(self, d)
        b = onehot.shape[0]
        w = self.input_weight * self._input_weight_mask  # (K, F0, C, k, k)
        if self._layer_domains == 1:
            h = _CONV_F[self.dim](onehot.to(w.dtype), w[0], None, 1, self.input_padding)
        else:
            w = w[d].reshape(b * w.shape[1], *w.shape[2:])  # (B * F0, C, k, k)
            x = onehot.reshape(1, b * onehot.shape[1], *onehot.shape[2:]).to(w.dtype)
            h = _CONV_F[self.dim](x, w, None, 1, self.input_padding, 1, b)
            h = h.reshape(b, -1, *h.shape[2:])
        h = self.input_act(self.input_norm(h))
        feats = []
        for stage in self.encoder:
            h = stage(h)
            feats.append(h)
        return feats

    def encode(self, onehot: Tensor, domain_idx: Tensor) -> Tensor:
        """The code F(y): ``(B, code_channels, X / stride, Y / stride)`` (what MJAP compares)."""
        return self.to_code(self.encode_stages(onehot, domain_idx)[-1])

    def decode_stages(self, code: Tensor, domain_idx: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Reconstruction logits ``(B, C_unified, X, Y)`` (other domains' channels -1000, except
        shared) and the ``S - 1`` decoder stage outputs (low to high resolution) from a code."""
        d = domain_idx.to(device=code.device, dtype=torch.long)
        set_domain_index(self, self._layer_domain(d))
        h = self.from_code(code)
        feats = []
        for stage in self.decoder:
            h = stage(h)
            feats.append(h)
        heads = self.output_conv(h)  # (B, sum_k (1 + n_k), X, Y); shared: (B, C, X, Y) in unified order
        if self.shared:
            return heads, feats
        return gather_unified(heads, self._out_index, self._layer_channel_mask, d), feats

    def decode(self, code: Tensor, domain_idx: Tensor) -> Tensor:
        """Reconstruction logits ``(B, C_unified, X, Y)`` from a code; other domains' channels are -1000."""
        return self.decode_stages(code, domain_idx)[0]

    def forward(self, onehot: Tensor, domain_idx: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Args:
            onehot: ``(B, C_unified, X, Y)`` one-hot / probabilities in the unified space.
            domain_idx: ``(B,)`` int64 domain index per sample.

        Returns:
            ``(logits (B, C_unified, X, Y), stage_features)``: reconstruction logits with -1000 in
            other domains' channels, and the ``2 S - 1`` stage outputs (the S encoder stages, high to
            low resolution, then the S - 1 decoder stages, low to high): MSC's scales.
        """
        enc = self.encode_stages(onehot, domain_idx)
        logits, dec = self.decode_stages(self.to_code(enc[-1]), domain_idx)
        return logits, enc + dec


@torch.no_grad()
def reconstruction_dice(ae: LabelAutoencoder, onehot: Tensor, domain_idx: Tensor) -> float:
    """Mean foreground Dice of ``argmax(ae(onehot))`` against the input labels (for logging).

    Runs in eval mode (running statistics; the module's mode is restored afterwards). The mean is
    over (sample, foreground class of the sample's domain) pairs in which the class is present in
    the input or the reconstruction; pairs where it is absent from both are left out. Returns NaN
    when no pair is left. (Per-structure Dice pooled over slices: ``training/autoencoder_eval.py``.)

    Args:
        onehot: ``(B, C_unified, X, Y)`` one-hot labels; domain_idx: ``(B,)`` int64.
    """
    was_training = ae.training
    ae.eval()
    try:
        logits, _ = ae(onehot, domain_idx)
    finally:
        ae.train(was_training)
    c = onehot.shape[1]
    pred = F.one_hot(logits.argmax(1), c).movedim(-1, 1).float()  # (B, C, X, Y)
    gt = F.one_hot(onehot.argmax(1), c).movedim(-1, 1).float()
    dims = tuple(range(2, onehot.dim()))
    inter = (pred * gt).sum(dims)
    denom = pred.sum(dims) + gt.sum(dims)  # (B, C)
    mask = getattr(ae, "own_channel_mask", None)
    mask = ae.domain_channel_mask if mask is None else mask
    fg = mask[domain_idx.to(mask.device).long()].clone()
    fg[:, 0] = False
    fg = fg.to(denom.device) & (denom > 0)
    if not fg.any():
        return float("nan")
    dice = 2 * inter[fg] / denom[fg]
    return float(dice.mean())
