"""Domain-specific normalization: DSBN and a domain-specific instance norm (for comparison).

Domain-specific batch normalization (Chang et al., CVPR 2019) as used by Boutillon et al. (MICCAI
2021, "Multi-task, multi-domain deep segmentation with shared representations ..."): one BatchNorm
per domain, i.e. per-domain affine parameters AND per-domain running statistics. A mixed-domain batch
is normalised group by group: every sample is normalised with the statistics of the samples of its
own domain in the batch (training) or with its domain's running statistics (evaluation). The output
for a mixed batch is therefore identical to running each domain group through its own
``torch.nn.BatchNorm`` alone.

The modules are drop-in ``norm_op`` classes for dynamic-network-architectures (and thus nnU-Net
plans): they are constructed as ``norm_op(num_features, **norm_op_kwargs)`` with
``norm_op_kwargs = {"num_domains": K, "eps": 1e-5, "momentum": 0.1, "affine": True}``.

Which domain each sample belongs to is not an argument of ``forward`` (the conv blocks of
dynamic-network-architectures call ``norm(x)``). Instead every domain-aware module holds a LongTensor
of domain indices ``(B,)`` that is set before the forward pass with :func:`set_domain_index` on the
root of the module tree (the multi-domain U-Net does this itself from the code channel).

Implementation notes
--------------------
* The forward pass is vectorised over domains (no Python loop over domains): per-sample channel sums
  are scattered into per-domain sums with a one-hot ``(B, K)`` table (broadcast-multiply-and-sum:
  exact fp32, deterministic on every device, no TF32 matmul), per-domain mean and two-pass biased
  variance are gathered back per sample, and the per-sample affine parameters are gathered from the
  ``(K, C)`` parameter tensors. Cost is independent of K apart from ``(B, K, C)``-sized tables.
* Statistics are computed in fp32 (fp64 for fp64 inputs) and the output is cast back to the input
  dtype, so the modules are safe under ``torch.autocast`` / fp16 inputs.
* Edge case that ``torch.nn.BatchNorm`` rejects: a domain represented by a single value per channel in
  a training batch (one sample and spatial size 1). Here it is allowed: the batch variance is 0, the
  normalised value is exactly 0 (the output equals that domain's bias), the running mean is updated
  and the running variance update is skipped for that domain (an unbiased variance of one value is
  undefined). No NaN is produced.
* Distributed training (hook for later): nnU-Net's DDP path calls
  ``nn.SyncBatchNorm.convert_sync_batchnorm``, which does not touch these modules. If
  ``sync_distributed`` is True (see :func:`set_dsbn_sync`), torch.distributed is initialised and the
  world size is > 1, the per-domain sums and counts are all-reduced (with
  ``torch.distributed.nn.functional.all_reduce``, which keeps gradients) in training mode, so every
  rank normalises with the global per-domain statistics. Off by default: it requires every rank to run
  every training forward pass.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = [
    "DomainAware",
    "DomainSpecificBatchNorm",
    "DomainSpecificBatchNorm1d",
    "DomainSpecificBatchNorm2d",
    "DomainSpecificBatchNorm3d",
    "DomainSpecificInstanceNorm",
    "DomainSpecificInstanceNorm1d",
    "DomainSpecificInstanceNorm2d",
    "DomainSpecificInstanceNorm3d",
    "domain_aware_modules",
    "set_domain_index",
    "set_dsbn_sync",
]

#: Attribute of a root module under which :func:`set_domain_index` caches its domain-aware modules.
_CACHE_ATTR = "_mtmd_domain_aware_modules"


class DomainAware:
    """Mixin of modules whose forward pass depends on the domain of each sample.

    The domain indices (0-based, LongTensor of shape ``(B,)``) are set with :meth:`set_domain` (usually
    through :func:`set_domain_index` on the root module) before ``forward``.
    """

    _domain_idx: Tensor | None = None

    def set_domain(self, domain_idx: Tensor | None) -> None:
        """Set the domain indices ``(B,)`` (int64) used by the next forward passes; ``None`` clears them."""
        if domain_idx is not None:
            if not isinstance(domain_idx, Tensor) or domain_idx.ndim != 1 or domain_idx.dtype != torch.long:
                raise TypeError(
                    f"{type(self).__name__}.set_domain: expected a 1-D int64 tensor of domain indices (B,), "
                    f"found {_describe(domain_idx)}. Use torch.as_tensor(indices, dtype=torch.long)."
                )
        # plain attribute (not a buffer): it is per-batch state, not part of the state dict
        self.__dict__["_domain_idx"] = domain_idx

    @property
    def domain_idx(self) -> Tensor | None:
        """The domain indices ``(B,)`` currently set, or None."""
        return self._domain_idx

    def _require_domain(self, x: Tensor) -> Tensor:
        d = self._domain_idx
        if d is None:
            raise RuntimeError(
                f"{type(self).__name__}: no domain index set. Call "
                "nnunetv2_mtmd.architectures.dsbn.set_domain_index(network, domain_idx) with a LongTensor "
                "of shape (B,) before the forward pass (the multi-domain U-Net does this itself from the "
                "code channel)."
            )
        if d.shape[0] != x.shape[0]:
            raise RuntimeError(
                f"{type(self).__name__}: the domain index has {d.shape[0]} entries but the input batch has "
                f"{x.shape[0]} samples (input shape {tuple(x.shape)}). Call set_domain_index with one "
                "domain index per sample before each forward pass."
            )
        return d.to(x.device, non_blocking=True)


def _describe(obj: object) -> str:
    if isinstance(obj, Tensor):
        return f"a tensor of shape {tuple(obj.shape)} and dtype {obj.dtype}"
    return f"{type(obj).__name__}"


def domain_aware_modules(module_tree: nn.Module, refresh: bool = False) -> list[nn.Module]:
    """All :class:`DomainAware` modules of ``module_tree`` (itself included), cached on the root.

    The list is cached on the root module so that setting the domain every forward pass does not walk
    the tree; pass ``refresh=True`` after replacing submodules.
    """
    cached = module_tree.__dict__.get(_CACHE_ATTR)
    if cached is None or refresh:
        cached = [m for m in module_tree.modules() if isinstance(m, DomainAware)]
        module_tree.__dict__[_CACHE_ATTR] = cached
    return cached


def set_domain_index(module_tree: nn.Module, domain_idx: Tensor | None, refresh: bool = False) -> None:
    """Set the domain indices ``(B,)`` (0-based, int64) on every domain-aware module of ``module_tree``.

    ``None`` clears them (a following forward pass of a domain-aware module then raises). Values are
    not range-checked here (that would synchronise with the device); callers validate them.
    """
    for m in domain_aware_modules(module_tree, refresh=refresh):
        m.set_domain(domain_idx)


def set_dsbn_sync(module_tree: nn.Module, enabled: bool = True) -> None:
    """Enable/disable the all-reduce of per-domain batch statistics across processes (DDP)."""
    for m in module_tree.modules():
        if isinstance(m, DomainSpecificBatchNorm):
            m.sync_distributed = bool(enabled)


def _gather(table: Tensor, onehot: Tensor) -> Tensor:
    """Rows of ``table`` (K, C) picked per sample by ``onehot`` (B, K) -> (B, C).

    Broadcast-multiply-and-sum: exact (a single nonzero term per row), deterministic forward and
    backward on every device."""
    return (onehot[:, :, None] * table[None]).sum(1)


def _scatter_sum(values: Tensor, onehot: Tensor) -> Tensor:
    """Per-domain sums of per-sample ``values`` (B, C) with ``onehot`` (B, K) -> (K, C)."""
    return (onehot[:, :, None] * values[:, None, :]).sum(0)


def _dist_active() -> bool:
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def _all_reduce(t: Tensor) -> Tensor:
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(t)


class DomainSpecificBatchNorm(DomainAware, nn.Module):
    """Domain-specific batch norm over K domains (base class; use the 1d/2d/3d subclasses).

    Parameters ``weight``, ``bias`` and buffers ``running_mean``, ``running_var`` have shape
    ``(num_domains, num_features)``; ``num_batches_tracked`` has shape ``(num_domains,)`` (batches in
    which that domain was present). Input ``(B, C, *spatial)``; output same shape and dtype.

    Args:
        num_features: C, the number of channels.
        num_domains: K, the number of domains (>= 1).
        eps, momentum, affine, track_running_stats: as ``torch.nn.BatchNorm2d`` (``momentum=None``
            gives the cumulative moving average, per domain).
    """

    _input_ndims: tuple[int, ...] = ()

    def __init__(
        self,
        num_features: int,
        num_domains: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if isinstance(num_domains, bool) or not isinstance(num_domains, int) or num_domains < 1:
            raise ValueError(
                f"{type(self).__name__}: num_domains must be an integer >= 1, found {num_domains!r}. "
                "It comes from norm_op_kwargs['num_domains'] in the plans (the number of domains of the dataset)."
            )
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ValueError(
                f"{type(self).__name__}: num_features must be an integer >= 1, found {num_features!r}."
            )
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.num_domains = num_domains
        self.eps = float(eps)
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.sync_distributed = False
        self.__dict__["_domain_idx"] = None
        if affine:
            self.weight = nn.Parameter(torch.empty(num_domains, num_features, **factory))
            self.bias = nn.Parameter(torch.empty(num_domains, num_features, **factory))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_domains, num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_domains, num_features, **factory))
            self.register_buffer(
                "num_batches_tracked", torch.zeros(num_domains, dtype=torch.long, device=device)
            )
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, num_domains={self.num_domains}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats}"
        )

    def _check_input_dim(self, x: Tensor) -> None:
        if x.ndim not in self._input_ndims:
            raise ValueError(
                f"{type(self).__name__}: expected a {' or '.join(f'{n}D' for n in self._input_ndims)} input "
                f"(B, C, ...), found shape {tuple(x.shape)}."
            )
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__}: expected {self.num_features} channels, found {x.shape[1]} "
                f"(input shape {tuple(x.shape)})."
            )

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` (B, C, *spatial) sample by sample with the statistics of its domain."""
        self._check_input_dim(x)
        d = self._require_domain(x)
        b, c = x.shape[:2]
        k = self.num_domains
        cdt = torch.promote_types(x.dtype, torch.float32)  # fp32 statistics for fp16/bf16 inputs
        xf = x.to(cdt).reshape(b, c, -1)  # (B, C, N)
        n = xf.shape[-1]
        onehot = F.one_hot(d, k).to(cdt)  # (B, K)

        use_batch_stats = self.training or not self.track_running_stats
        if use_batch_stats:
            count = onehot.sum(0) * n  # (K,) values per channel per domain
            sums = _scatter_sum(xf.sum(-1), onehot)  # (K, C)
            sync = self.sync_distributed and self.training and _dist_active()
            if sync:
                red = _all_reduce(torch.cat([sums, count[:, None]], 1))
                sums, count = red[:, :c], red[:, c].detach()
            denom = count.clamp(min=1)[:, None]
            mean_k = sums / denom  # (K, C)
            diff = xf - _gather(mean_k, onehot)[..., None]  # (B, C, N)
            sq = _scatter_sum((diff * diff).sum(-1), onehot)  # (K, C)
            if sync:
                sq = _all_reduce(sq)
            var_k = sq / denom  # biased, as used for normalisation by nn.BatchNorm
            scale = torch.rsqrt(_gather(var_k, onehot) + self.eps)  # (B, C)
            if self.affine:
                scale = scale * _gather(self.weight.to(cdt), onehot)
                y = diff * scale[..., None] + _gather(self.bias.to(cdt), onehot)[..., None]
            else:
                y = diff * scale[..., None]
            if self.training and self.track_running_stats:
                self._update_running_stats(mean_k.detach(), var_k.detach(), count)
        else:
            rm = _gather(self.running_mean.to(cdt), onehot)
            scale = torch.rsqrt(_gather(self.running_var.to(cdt), onehot) + self.eps)
            if self.affine:
                scale = scale * _gather(self.weight.to(cdt), onehot)
                shift = _gather(self.bias.to(cdt), onehot) - rm * scale
            else:
                shift = -rm * scale
            y = xf * scale[..., None] + shift[..., None]
        return y.reshape(x.shape).to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean_k: Tensor, var_k: Tensor, count: Tensor) -> None:
        """Update running stats of the domains present in the batch (as nn.BatchNorm does, per domain)."""
        present = count > 0  # (K,)
        self.num_batches_tracked.add_(present.long())
        if self.momentum is None:  # cumulative moving average per domain
            factor = 1.0 / self.num_batches_tracked.clamp(min=1).to(count.dtype)
        else:
            factor = torch.full_like(count, float(self.momentum))
        factor = factor[:, None]
        rm, rv = self.running_mean.to(mean_k.dtype), self.running_var.to(var_k.dtype)
        new_mean = (1 - factor) * rm + factor * mean_k
        self.running_mean.copy_(torch.where(present[:, None], new_mean, rm))
        has_var = count > 1
        unbiased = var_k * (count / (count - 1).clamp(min=1))[:, None]
        new_var = (1 - factor) * rv + factor * unbiased
        self.running_var.copy_(torch.where(has_var[:, None], new_var, rv))


class DomainSpecificBatchNorm1d(DomainSpecificBatchNorm):
    """DSBN for ``(B, C)`` or ``(B, C, L)`` inputs (like ``torch.nn.BatchNorm1d``)."""

    _input_ndims = (2, 3)


class DomainSpecificBatchNorm2d(DomainSpecificBatchNorm):
    """DSBN for ``(B, C, X, Y)`` inputs (like ``torch.nn.BatchNorm2d``)."""

    _input_ndims = (4,)


class DomainSpecificBatchNorm3d(DomainSpecificBatchNorm):
    """DSBN for ``(B, C, X, Y, Z)`` inputs (like ``torch.nn.BatchNorm3d``)."""

    _input_ndims = (5,)


class DomainSpecificInstanceNorm(DomainAware, nn.Module):
    """Instance norm with per-domain affine parameters only (base class; use the 1d/2d/3d subclasses).

    Each sample is normalised over its own spatial extent (no running statistics); the affine
    parameters ``weight``, ``bias`` of shape ``(num_domains, num_features)`` are picked by the sample's
    domain. A comparison baseline to DSBN (nnU-Net's default norm is instance norm).

    ``momentum`` is accepted and ignored (drop-in compatibility with norm_op_kwargs written for batch
    norm); ``track_running_stats`` must be False.
    """

    _input_ndims: tuple[int, ...] = ()

    def __init__(
        self,
        num_features: int,
        num_domains: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if isinstance(num_domains, bool) or not isinstance(num_domains, int) or num_domains < 1:
            raise ValueError(
                f"{type(self).__name__}: num_domains must be an integer >= 1, found {num_domains!r}. "
                "It comes from norm_op_kwargs['num_domains'] in the plans (the number of domains of the dataset)."
            )
        if track_running_stats:
            raise ValueError(
                f"{type(self).__name__}: track_running_stats=True is not supported (instance norm uses the "
                "statistics of each sample). Remove it from norm_op_kwargs."
            )
        self.num_features = num_features
        self.num_domains = num_domains
        self.eps = float(eps)
        self.affine = affine
        self.__dict__["_domain_idx"] = None
        if affine:
            self.weight = nn.Parameter(torch.ones(num_domains, num_features, device=device, dtype=dtype))
            self.bias = nn.Parameter(torch.zeros(num_domains, num_features, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def reset_parameters(self) -> None:
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_domains={self.num_domains}, eps={self.eps}, affine={self.affine}"

    def forward(self, x: Tensor) -> Tensor:
        """Instance-normalise ``x`` (B, C, *spatial), then apply the affine of each sample's domain."""
        if x.ndim not in self._input_ndims or x.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__}: expected a {' or '.join(f'{n}D' for n in self._input_ndims)} input "
                f"with {self.num_features} channels, found shape {tuple(x.shape)}."
            )
        if not self.affine:
            # the domain is irrelevant without affine parameters, but keep the contract consistent
            self._require_domain(x)
            return F.instance_norm(x.to(torch.promote_types(x.dtype, torch.float32)), eps=self.eps).to(x.dtype)
        d = self._require_domain(x)
        onehot = F.one_hot(d, self.num_domains).to(torch.float32)
        y = F.instance_norm(x.float(), eps=self.eps)
        extra = (1,) * (x.ndim - 2)
        w = _gather(self.weight.to(cdt), onehot).view(*x.shape[:2], *extra)
        b = _gather(self.bias.to(cdt), onehot).view(*x.shape[:2], *extra)
        return (y * w + b).to(x.dtype)


class DomainSpecificInstanceNorm1d(DomainSpecificInstanceNorm):
    """Domain-specific instance norm for ``(B, C, L)`` inputs."""

    _input_ndims = (3,)


class DomainSpecificInstanceNorm2d(DomainSpecificInstanceNorm):
    """Domain-specific instance norm for ``(B, C, X, Y)`` inputs."""

    _input_ndims = (4,)


class DomainSpecificInstanceNorm3d(DomainSpecificInstanceNorm):
    """Domain-specific instance norm for ``(B, C, X, Y, Z)`` inputs."""

    _input_ndims = (5,)
