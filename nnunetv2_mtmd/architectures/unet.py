"""nnU-Net's U-Nets made multi-domain (Boutillon et al., MICCAI 2021 / 2022).

:class:`MultiDomainPlainConvUNet` and :class:`MultiDomainResEncUNet` wrap the encoder and decoder of
dynamic-network-architectures' ``PlainConvUNet`` / ``ResidualEncoderUNet`` (the nnU-Net default and
ResEnc presets):

* shared convolutions; the normalization layers are whatever ``norm_op`` the plans name, for the
  multi-domain schemes :class:`~nnunetv2_mtmd.architectures.dsbn.DomainSpecificBatchNorm2d`
  (``norm_op_kwargs["num_domains"] = K``);
* a :class:`~nnunetv2_mtmd.architectures.heads.DomainHeads` (one 1x1 conv per domain) at every
  deep-supervision scale, always built, so state dicts load with deep supervision on or off;
  outputs are in the unified label space, the other domains' channels are exactly -1000;
* the input's LAST channel is the domain code (domain index + 1, constant image, DESIGN.md decision
  3). The network reads it per sample as the spatial maximum (robust to the zero padding of
  sliding-window tiles), strips it and never convolves it. A caller may pass ``domain_idx`` instead.
* per-stage features (encoder stages then decoder stages, ``2 * n_stages - 1`` tensors) for the
  multi-scale contrastive loss are stored in ``last_features`` when ``collect_features`` is True;
  nothing is kept otherwise.
* ``torch.compile`` (nnU-Net compiles the network on CUDA): the forward pass traces as ONE graph in
  training and eval mode, with or without ``collect_features``, and the domain mix of a batch is data,
  not a guard, so a (mode, input shape) compiles once (tests/architectures/test_compile.py). The
  stores of ``last_features`` / ``last_domain_idx`` and the domain indices set on the DSBN modules
  are attribute writes dynamo replays after the compiled call; the one host synchronisation, the
  domain-code check, becomes an in-graph assert while compiling (:func:`_assert_valid`).

The network is described completely by the plans: ``network_class_name`` =
``nnunetv2_mtmd.architectures.unet.MultiDomainPlainConvUNet`` and ``arch_kwargs`` = the backbone's
kwargs + ``domain_label_ids`` (+ optional ``head_mode``), so nnU-Net's ``get_network_from_plans``
rebuilds it from plans.json alone. ``input_channels`` (from dataset.json) includes the code channel.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from dynamic_network_architectures.architectures.abstract_arch import AbstractDynamicNetworkArchitectures
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim
from dynamic_network_architectures.building_blocks.residual import BasicBlockD, BottleneckD
from dynamic_network_architectures.initialization.weight_init import (
    InitWeights_He,
    init_last_bn_before_add_to_0,
)
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.dropout import _DropoutNd

from nnunetv2_mtmd.architectures.dsbn import DomainAware, set_domain_index
from nnunetv2_mtmd.architectures.heads import DomainHeads, validate_domain_label_ids
from nnunetv2_mtmd.compat import unet_decoder_forward
from nnunetv2_mtmd.errors import DomainSpecError

logger = logging.getLogger(__name__)

__all__ = [
    "HEAD_MODES",
    "MultiDomainPlainConvUNet",
    "MultiDomainResEncUNet",
    "MultiDomainUNetBase",
    "decode_domain",
    "unwrap_network",
]

HEAD_MODES = ("domain", "shared")

IntOrSeq = int | list[int] | tuple[int, ...]


def _is_compiling() -> bool:
    """Whether the caller is being traced by ``torch.compile`` (dynamo); False in eager mode."""
    is_compiling = getattr(torch.compiler, "is_compiling", None)  # torch >= 2.3
    if is_compiling is None:  # pragma: no cover - torch 2.1 / 2.2
        return bool(torch._dynamo.is_compiling())
    return bool(is_compiling())


def _assert_valid(bad: Tensor, message: str) -> None:
    """Refuse a batch in which any entry of ``bad`` ``(B,)`` (bool) is set.

    Under ``torch.compile`` a host synchronisation (``bool(bad.any())``) would break the graph, so the
    check stays inside it as ``torch._assert_async``: on CPU it raises ``RuntimeError(message)`` when
    the compiled code runs; on CUDA it is a device-side assert (fails the run, but asynchronously and
    without naming the values). The callers with a clear host-side error before the compiled network
    runs are the predictor's input check (``inference/checks.py``, every case before anything is
    written) and the training loader, which writes the code channel from the sample's domain
    (``training/sampling.restore_code_channel``)."""
    torch._assert_async(torch.logical_not(bad.any()), message)


def decode_domain(x: Tensor, num_domains: int) -> Tensor:
    """Domain indices ``(B,)`` (int64, 0-based) read from the code channel, the LAST channel of ``x``.

    ``x``: ``(B, C + 1, *spatial)``. The code of a sample is the spatial maximum of its code channel
    (zero padding of sliding-window tiles does not change it), rounded to the nearest integer;
    domain index = code - 1. Raises ValueError naming the codes found if any is outside 1..K (eager
    mode; under ``torch.compile`` the check is an in-graph assert, see :func:`_assert_valid`).
    """
    if x.ndim < 3 or x.shape[1] < 2:
        raise ValueError(
            f"Multi-domain U-Net: expected input (B, C + 1, *spatial) with the domain code as last channel, "
            f"found shape {tuple(x.shape)}."
        )
    code = torch.round(x[:, -1].detach().flatten(1).amax(1).float()).long()  # (B,)
    bad = (code < 1) | (code > num_domains)
    if _is_compiling():
        _assert_valid(bad, _invalid_code_message("", num_domains))
    elif bool(bad.any()):  # eager: one host sync, an error naming the codes
        found = sorted({int(c) for c in code[bad].tolist()})
        raise ValueError(_invalid_code_message(f" {found}", num_domains))
    return code - 1


def _invalid_code_message(found: str, num_domains: int) -> str:
    return (
        f"Multi-domain U-Net: invalid domain code(s){found} in the last input channel; valid codes are "
        f"1..{num_domains} (domain index + 1). The last channel must be the constant domain code image "
        "(channel name 'noNorm'); add it to new cases with nnUNetv2_mtmd_prepare_input. A code of 0 "
        "usually means the code channel is missing or the tile contains only padding."
    )


def unwrap_network(network: nn.Module) -> nn.Module:
    """The plain module inside ``DistributedDataParallel`` and/or ``torch.compile`` wrappers.

    Training (DDP, ``training/ddp.py``) and inference (is the predictor's network multi-domain?) both
    need the network under nnU-Net's wrappers; it lives here, with the network, so that neither room
    imports the other."""
    mod = network
    for _ in range(4):
        if isinstance(mod, nn.parallel.DistributedDataParallel):
            mod = mod.module
        elif hasattr(mod, "_orig_mod"):  # torch.compile's OptimizedModule
            mod = mod._orig_mod
        else:
            break
    return mod


def _check_domain_idx(domain_idx: Tensor, batch: int, num_domains: int) -> Tensor:
    """``domain_idx`` ``(B,)`` as int64 after checking its shape and range ``0..K-1`` (ValueError in eager
    mode, an in-graph assert under ``torch.compile``)."""
    if not isinstance(domain_idx, Tensor) or domain_idx.ndim != 1 or domain_idx.shape[0] != batch:
        raise ValueError(
            f"Multi-domain U-Net: domain_idx must be a 1-D tensor with one 0-based domain index per sample "
            f"({batch}), found {domain_idx!r}."
        )
    if domain_idx.dtype != torch.long:
        domain_idx = domain_idx.long()
    bad = (domain_idx < 0) | (domain_idx >= num_domains)
    if _is_compiling():
        _assert_valid(bad, f"Multi-domain U-Net: invalid domain index(es); valid are 0..{num_domains - 1}.")
    elif bool(bad.any()):
        found = sorted({int(c) for c in domain_idx[bad].tolist()})
        raise ValueError(
            f"Multi-domain U-Net: invalid domain index(es) {found}; valid are 0..{num_domains - 1}."
        )
    return domain_idx


class MultiDomainUNetBase(AbstractDynamicNetworkArchitectures):
    """Common part of the multi-domain U-Nets: code channel, heads, forward, features.

    Subclasses build ``self.encoder`` and ``self.decoder`` (dynamic-network-architectures
    ``UNetDecoder``) for ``input_channels - 1`` image channels, then call :meth:`_finish_init`.

    Attributes:
        encoder, decoder: the backbone pieces (nnU-Net toggles ``decoder.deep_supervision``).
        heads: ModuleList of :class:`DomainHeads`, one per decoder stage (lowest resolution first).
        collect_features: if True, ``forward`` stores ``last_features`` (list of ``2 * n_stages - 1``
            tensors: encoder stage outputs high->low resolution, then decoder stage outputs low->high)
            (``last_domain_idx``, ``(B,)``, is stored after every forward).
    """

    encoder: nn.Module
    decoder: nn.Module

    def _finish_init(
        self,
        input_channels: int,
        num_classes: int,
        domain_label_ids: Sequence[Sequence[int]],
        head_mode: str,
        conv_op: type[_ConvNd],
    ) -> None:
        self.input_channels = input_channels
        self.num_classes = num_classes
        self.domain_label_ids = [list(ids) for ids in domain_label_ids]
        self.num_domains = len(self.domain_label_ids)
        self.head_mode = head_mode
        dec = self.decoder
        # the decoder's own single-domain output layers are replaced by the domain heads
        dec.seg_layers = nn.ModuleList()
        out_ch = self.encoder.output_channels
        self.heads = nn.ModuleList(
            [
                DomainHeads(out_ch[-(s + 2)], self.domain_label_ids, conv_op, shared=head_mode == "shared")
                for s in range(len(dec.stages))
            ]
        )
        self.collect_features = False
        self.last_features: list[Tensor] | None = None
        self.last_domain_idx: Tensor | None = None

    @staticmethod
    def _validate(
        input_channels: int,
        num_classes: int,
        domain_label_ids: Sequence[Sequence[int]],
        head_mode: str,
        norm_op: type[nn.Module] | None,
        norm_op_kwargs: dict | None,
    ) -> tuple[tuple[tuple[int, ...], ...], dict | None]:
        ids = validate_domain_label_ids(domain_label_ids, "arch_kwargs['domain_label_ids']")
        expected = 1 + sum(len(i) for i in ids)
        if num_classes != expected:
            raise DomainSpecError(
                f"Multi-domain U-Net: num_classes is {num_classes} but domain_label_ids "
                f"{[list(i) for i in ids]} define {expected} unified classes (background + "
                f"{expected - 1} labels). The dataset.json labels and the plans' domain_label_ids "
                "disagree; re-run planning on the merged dataset."
            )
        if head_mode not in HEAD_MODES:
            raise ValueError(
                f"Multi-domain U-Net: head_mode must be one of {HEAD_MODES}, found {head_mode!r}."
            )
        if isinstance(input_channels, bool) or not isinstance(input_channels, int) or input_channels < 2:
            raise ValueError(
                f"Multi-domain U-Net: input_channels is {input_channels!r}; it must count the image channels "
                "plus the domain code channel (last), so at least 2. Is the code channel missing from "
                "dataset.json?"
            )
        if norm_op is not None and isinstance(norm_op, type) and issubclass(norm_op, DomainAware):
            norm_op_kwargs = dict(norm_op_kwargs or {})
            k = norm_op_kwargs.setdefault("num_domains", len(ids))
            if k != len(ids):
                raise DomainSpecError(
                    f"Multi-domain U-Net: norm_op_kwargs['num_domains'] is {k} but domain_label_ids describe "
                    f"{len(ids)} domains. Fix the plans (both come from the dataset's domain block)."
                )
        return ids, norm_op_kwargs

    # ------------------------------------------------------------------------------------ forward
    def forward(self, x: Tensor, domain_idx: Tensor | None = None) -> Tensor | list[Tensor]:
        """Segment ``x`` ``(B, C + 1, *spatial)`` whose last channel is the domain code.

        Returns logits ``(B, num_classes, *spatial)`` in the unified label space, or with deep
        supervision a list of them, highest resolution first (the PlainConvUNet contract).
        ``domain_idx`` (``(B,)``, 0-based) overrides the code channel.
        """
        if x.shape[1] != self.input_channels:
            raise ValueError(
                f"Multi-domain U-Net: expected {self.input_channels} input channels (image channels + the "
                f"domain code channel), found input of shape {tuple(x.shape)}."
            )
        if domain_idx is None:
            d = decode_domain(x, self.num_domains)
        else:
            d = _check_domain_idx(domain_idx, x.shape[0], self.num_domains).to(x.device)
        x = x[:, :-1]
        set_domain_index(self, d)
        skips = self.encoder(x)
        # dynamic-network-architectures' UNetDecoder.forward has no hook for other output layers, so the
        # decoder runs through the copy in compat (tracked against upstream), with the domain heads
        outputs, dec_features = unet_decoder_forward(self.decoder, skips, lambda s, h: self.heads[s](h, d))
        # The domain indices are always kept (a (B,) tensor, free): losses such as MJAP need them
        # without the stage features.
        self.last_domain_idx = d
        self.last_features = list(skips) + dec_features if self.collect_features else None
        return outputs

    @property
    def deep_supervision(self) -> bool:
        """Whether ``forward`` returns all scales (stored on ``decoder``, where nnU-Net toggles it)."""
        return bool(self.decoder.deep_supervision)

    @deep_supervision.setter
    def deep_supervision(self, enabled: bool) -> None:
        self.decoder.deep_supervision = bool(enabled)

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """Feature-map elements for a patch of ``input_size`` (x, y(, z)); nnU-Net's VRAM estimate."""
        if len(input_size) != convert_conv_op_to_dim(self.encoder.conv_op):
            raise ValueError(
                "compute_conv_feature_map_size: give the spatial patch size only (x, y(, z)), "
                f"found {input_size}."
            )
        enc = self.encoder.compute_conv_feature_map_size(input_size)
        return enc + self.decoder.compute_conv_feature_map_size(input_size)


class MultiDomainPlainConvUNet(MultiDomainUNetBase):
    """Multi-domain ``PlainConvUNet`` (nnU-Net's default 2D/3D U-Net).

    Arguments as ``dynamic_network_architectures.architectures.unet.PlainConvUNet`` (``input_channels``
    includes the domain code channel) plus ``domain_label_ids`` (unified label ids per domain) and
    ``head_mode`` ("domain": one head per domain; "shared": one head for all classes).
    """

    def __init__(
        self,
        input_channels: int,
        n_stages: int,
        features_per_stage: IntOrSeq,
        conv_op: type[_ConvNd],
        kernel_sizes: IntOrSeq | list[list[int]],
        strides: IntOrSeq | list[list[int]],
        n_conv_per_stage: IntOrSeq,
        num_classes: int,
        n_conv_per_stage_decoder: IntOrSeq,
        domain_label_ids: Sequence[Sequence[int]],
        conv_bias: bool = False,
        norm_op: type[nn.Module] | None = None,
        norm_op_kwargs: dict | None = None,
        dropout_op: type[_DropoutNd] | None = None,
        dropout_op_kwargs: dict | None = None,
        nonlin: type[nn.Module] | None = None,
        nonlin_kwargs: dict | None = None,
        deep_supervision: bool = False,
        nonlin_first: bool = False,
        head_mode: str = "domain",
    ) -> None:
        super().__init__()
        ids, norm_op_kwargs = self._validate(
            input_channels, num_classes, domain_label_ids, head_mode, norm_op, norm_op_kwargs
        )
        backbone = PlainConvUNet(
            input_channels - 1, n_stages, features_per_stage, conv_op, kernel_sizes, strides,
            n_conv_per_stage, num_classes, n_conv_per_stage_decoder, conv_bias, norm_op, norm_op_kwargs,
            dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs, deep_supervision, nonlin_first,
        )
        self.key_to_encoder = backbone.key_to_encoder
        self.key_to_stem = backbone.key_to_stem
        self.keys_to_in_proj = backbone.keys_to_in_proj
        self.encoder = backbone.encoder
        self.decoder = backbone.decoder
        self._finish_init(input_channels, num_classes, ids, head_mode, conv_op)

    @staticmethod
    def initialize(module: nn.Module) -> None:
        """nnU-Net's init (``network.apply(network.initialize)``): He init of convolutions."""
        InitWeights_He(1e-2)(module)


class MultiDomainResEncUNet(MultiDomainUNetBase):
    """Multi-domain ``ResidualEncoderUNet`` (nnU-Net ResEnc presets).

    Arguments as ``dynamic_network_architectures.architectures.unet.ResidualEncoderUNet``
    (``input_channels`` includes the domain code channel) plus ``domain_label_ids`` and ``head_mode``.
    """

    def __init__(
        self,
        input_channels: int,
        n_stages: int,
        features_per_stage: IntOrSeq,
        conv_op: type[_ConvNd],
        kernel_sizes: IntOrSeq | list[list[int]],
        strides: IntOrSeq | list[list[int]],
        n_blocks_per_stage: IntOrSeq,
        num_classes: int,
        n_conv_per_stage_decoder: IntOrSeq,
        domain_label_ids: Sequence[Sequence[int]],
        conv_bias: bool = False,
        norm_op: type[nn.Module] | None = None,
        norm_op_kwargs: dict | None = None,
        dropout_op: type[_DropoutNd] | None = None,
        dropout_op_kwargs: dict | None = None,
        nonlin: type[nn.Module] | None = None,
        nonlin_kwargs: dict | None = None,
        deep_supervision: bool = False,
        block: type[BasicBlockD] | type[BottleneckD] = BasicBlockD,
        bottleneck_channels: IntOrSeq | None = None,
        stem_channels: int | None = None,
        head_mode: str = "domain",
    ) -> None:
        super().__init__()
        ids, norm_op_kwargs = self._validate(
            input_channels, num_classes, domain_label_ids, head_mode, norm_op, norm_op_kwargs
        )
        backbone = ResidualEncoderUNet(
            input_channels - 1, n_stages, features_per_stage, conv_op, kernel_sizes, strides,
            n_blocks_per_stage, num_classes, n_conv_per_stage_decoder, conv_bias, norm_op, norm_op_kwargs,
            dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs, deep_supervision, block,
            bottleneck_channels, stem_channels,
        )
        self.key_to_encoder = backbone.key_to_encoder
        self.key_to_stem = backbone.key_to_stem
        self.keys_to_in_proj = backbone.keys_to_in_proj
        self.encoder = backbone.encoder
        self.decoder = backbone.decoder
        self._finish_init(input_channels, num_classes, ids, head_mode, conv_op)

    @staticmethod
    def initialize(module: nn.Module) -> None:
        """nnU-Net's ResEnc init: He init of convolutions, last norm of each residual block set to 0."""
        InitWeights_He(1e-2)(module)
        init_last_bn_before_add_to_0(module)
