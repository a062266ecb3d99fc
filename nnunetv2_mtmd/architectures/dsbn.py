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
* The forward pass is vectorised over domains (no Python loop over domains): per-sample channel
  sums are pooled into per-domain sums with a one-hot ``(B, K)`` table (broadcast-multiply-and-sum:
  exact, deterministic on every device, no TF32 matmul), the per-domain mean is gathered back per
  sample, the biased variance is computed in a second pass over ``x - mean`` (two-pass, no
  ``E[x^2] - E[x]^2`` cancellation), and ``y = x * alpha + beta`` is applied in one fused pass with
  per-sample ``alpha, beta`` gathered from the ``(K, C)`` statistics and affine parameters. Cost is
  independent of K apart from ``(B, K, C)``-sized tables. Every domain's parameters take part in the
  graph (zero gradient when absent), so DDP never sees unused parameters.
* Training uses a hand-written autograd function (:class:`_DSBNBatchStats`, the per-group batch-norm
  backward; saves only the input and ``(K, C)`` statistics); ``use_fused_function = False`` (or the
  distributed all-reduce) uses plain autograd ops instead. Both are tested against
  ``torch.nn.BatchNorm``.
* Statistics are computed in fp32 (fp64 for fp64 inputs) and the output is cast back to the input
  dtype, so the modules are safe under ``torch.autocast`` / fp16 inputs.
* Edge case that ``torch.nn.BatchNorm`` rejects: a domain represented by a single value per channel in
  a training batch (one sample and spatial size 1). Here it is allowed: the batch variance is 0, the
  normalised value is 0 up to rounding (the output equals that domain's bias), the running mean is
  updated and the running variance update is skipped for that domain (an unbiased variance of one
  value is undefined). No NaN is produced.
* Distributed training: nnU-Net's DDP path calls
  ``nn.SyncBatchNorm.convert_sync_batchnorm``, which does not touch these modules. If
  ``sync_distributed`` is True (see :func:`set_dsbn_sync`), torch.distributed is initialised and the
  world size is > 1, the per-domain sums and counts are all-reduced (with an all-reduce that keeps
  gradients, see :func:`_all_reduce`) in training mode, so every rank normalises with the global
  per-domain statistics (tested with two gloo processes, eager and compiled). Off by default: it
  requires every rank to run every training forward pass.
* ``torch.compile``: the forward and the hand-written backward trace without graph break (the domain
  indices are a tensor, the per-domain tables have the static size K), so a batch's domain mix never
  triggers a recompilation (tests/architectures/test_compile.py).
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


def _check_num_domains(owner: str, num_domains: object) -> None:
    if isinstance(num_domains, bool) or not isinstance(num_domains, int) or num_domains < 1:
        raise ValueError(
            f"{owner}: num_domains must be an integer >= 1, found {num_domains!r}. It comes from "
            "norm_op_kwargs['num_domains'] in the plans (the number of domains of the dataset)."
        )


def _gather(table: Tensor, onehot: Tensor) -> Tensor:
    """Rows of ``table`` (K, C) picked per sample by ``onehot`` (B, K) -> (B, C).

    Broadcast-multiply-and-sum: exact (a single nonzero term per row), deterministic forward and
    backward on every device."""
    return (onehot[:, :, None] * table[None]).sum(1)


def _scatter_sum(values: Tensor, onehot: Tensor) -> Tensor:
    """Per-domain sums of per-sample ``values`` (B, C) with ``onehot`` (B, K) -> (K, C)."""
    return (onehot[:, :, None] * values[:, None, :]).sum(0)

def _bcast(t: Tensor, x: Tensor) -> Tensor:
    """View a per-sample, per-channel table (B, C) as (B, C, 1, ...) to broadcast against ``x``."""
    return t.view(*t.shape, *([1] * (x.ndim - 2)))


def _alpha_beta(
    scale: Tensor, mean_s: Tensor, weight: Tensor | None, bias: Tensor | None, onehot: Tensor, cdt: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Per-sample ``alpha, beta`` (B, C) with ``y = x * alpha + beta = (x - mean) * scale * w + b``."""
    if weight is None:
        return scale, -mean_s * scale
    alpha = scale * _gather(weight.to(cdt), onehot)
    return alpha, _gather(bias.to(cdt), onehot) - mean_s * alpha


def _dsbn_batch_stats_autograd(
    x: Tensor, d: Tensor, k: int, weight: Tensor | None, bias: Tensor | None, eps: float, sync: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Batch-statistics DSBN with plain autograd ops (reference path; supports the DDP all-reduce).

    Returns ``y`` (shape and dtype of ``x``), per-domain ``mean_k``, biased ``var_k`` (K, C) and the
    number of values per channel of every domain ``count`` (K,)."""
    b, c = x.shape[:2]
    cdt = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(cdt).reshape(b, c, -1)  # (B, C, N)
    n = xf.shape[-1]
    onehot = F.one_hot(d, k).to(cdt)  # (B, K)
    count = onehot.sum(0) * n  # (K,)
    sums = _scatter_sum(xf.sum(-1), onehot)  # (K, C)
    if sync:
        red = _all_reduce(torch.cat([sums, count[:, None]], 1))
        sums, count = red[:, :c], red[:, c].detach()
    denom = count.clamp(min=1)[:, None]
    mean_k = sums / denom
    mean_s = _gather(mean_k, onehot)  # (B, C)
    diff = xf - mean_s[..., None]
    sq = _scatter_sum((diff * diff).sum(-1), onehot)  # two-pass variance
    if sync:
        sq = _all_reduce(sq)
    var_k = sq / denom  # biased, as used for normalisation by nn.BatchNorm
    scale = torch.rsqrt(_gather(var_k, onehot) + eps)
    alpha, beta = _alpha_beta(scale, mean_s, weight, bias, onehot, cdt)
    y = torch.addcmul(_bcast(beta, x), x.to(cdt), _bcast(alpha, x))
    return y.to(x.dtype), mean_k, var_k, count


class _DSBNBatchStats(torch.autograd.Function):
    """Batch-statistics DSBN with a hand-written backward (the per-group batch-norm gradient).

    Forward as :func:`_dsbn_batch_stats_autograd` without all-reduce. Saves only the input (in its own
    dtype) and ``(K, C)`` statistics. Backward, per domain k with ``xc = x - mean_k``,
    ``xhat = xc * invstd_k``, ``A = w_k * invstd_k`` and sums over the samples of domain k:
    ``dx = A * (g - sum(g) / n_k - xhat * sum(g * xhat) / n_k)``, ``dw_k = sum(g * xhat)``,
    ``db_k = sum(g)``. Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, x, d, k, weight, bias, eps):  # noqa: D102
        b, c = x.shape[:2]
        cdt = torch.promote_types(x.dtype, torch.float32)
        xf = x.to(cdt).reshape(b, c, -1)
        n = xf.shape[-1]
        onehot = F.one_hot(d, k).to(cdt)
        count = onehot.sum(0) * n
        denom = count.clamp(min=1)[:, None]
        mean_k = _scatter_sum(xf.sum(-1), onehot) / denom
        mean_s = _gather(mean_k, onehot)
        sq = (xf - mean_s[..., None]).square_().sum(-1)  # two-pass variance
        var_k = _scatter_sum(sq, onehot) / denom
        invstd_k = torch.rsqrt(var_k + eps)
        alpha, beta = _alpha_beta(_gather(invstd_k, onehot), mean_s, weight, bias, onehot, cdt)
        # computed in x's own shape: the output must not be a view (in-place nonlins follow)
        y = torch.addcmul(_bcast(beta, x), x.to(cdt), _bcast(alpha, x)).to(x.dtype)
        ctx.save_for_backward(x, d, weight, mean_k, invstd_k, denom)
        ctx.k = k
        ctx.mark_non_differentiable(mean_k, var_k, count)
        return y, mean_k, var_k, count

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy, _g_mean, _g_var, _g_count):  # noqa: D102
        x, d, weight, mean_k, invstd_k, denom = ctx.saved_tensors
        b, c = x.shape[:2]
        cdt = mean_k.dtype
        onehot = F.one_hot(d, ctx.k).to(cdt)
        g = gy.to(cdt).reshape(b, c, -1)
        xc = x.to(cdt).reshape(b, c, -1) - _gather(mean_k, onehot)[..., None]  # (B, C, N)
        sum_g_k = _scatter_sum(g.sum(-1), onehot)  # (K, C)
        sum_gxhat_k = _scatter_sum((g * xc).sum(-1), onehot) * invstd_k  # (K, C)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            invstd_s = _gather(invstd_k, onehot)
            a = invstd_s if weight is None else invstd_s * _gather(weight.to(cdt), onehot)  # (B, C)
            inv_n = _gather(1.0 / denom, onehot)  # (B, 1)
            coef_xc = -a * invstd_s * _gather(sum_gxhat_k, onehot) * inv_n
            coef_0 = -a * _gather(sum_g_k, onehot) * inv_n
            grad_x = xc.mul_(coef_xc[..., None]).add_(coef_0[..., None]).addcmul_(g, a[..., None])
            grad_x = grad_x.reshape(x.shape).to(x.dtype)
        if weight is not None and ctx.needs_input_grad[3]:
            grad_w = sum_gxhat_k.to(weight.dtype)
        if weight is not None and ctx.needs_input_grad[4]:
            grad_b = sum_g_k.to(weight.dtype)
        return grad_x, None, None, grad_w, grad_b, None


def _dist_active() -> bool:
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def _all_reduce(t: Tensor) -> Tensor:
    """Sum of ``t`` over all ranks of the default group, differentiable (backward: the sum of the ranks'
    gradients).

    torch's functional collectives trace into a compiled graph (``torch.distributed.nn.functional``'s
    autograd function breaks it, 5 breaks per DSBN layer) and, in recent torch versions (2.14 here), carry
    an autograd formula (``all_reduce_backward``); without it the autograd function is used."""
    import torch.distributed._functional_collectives as fc

    if hasattr(fc, "all_reduce_backward"):
        return fc.wait_tensor(fc.all_reduce(t, "sum", torch.distributed.group.WORLD))
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
    #: Training forward/backward with the hand-written autograd function (fewer passes over memory);
    #: False uses plain autograd ops (always used when statistics are all-reduced across processes).
    use_fused_function: bool = True

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
        _check_num_domains(type(self).__name__, num_domains)
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
        k = self.num_domains
        cdt = torch.promote_types(x.dtype, torch.float32)  # fp32 statistics for fp16/bf16 inputs
        weight = self.weight if self.affine else None
        bias = self.bias if self.affine else None

        if self.training or not self.track_running_stats:
            sync = self.sync_distributed and self.training and _dist_active()
            if sync or not self.use_fused_function:
                y, mean_k, var_k, count = _dsbn_batch_stats_autograd(x, d, k, weight, bias, self.eps, sync)
            else:
                y, mean_k, var_k, count = _DSBNBatchStats.apply(x, d, k, weight, bias, self.eps)
            if self.training and self.track_running_stats:
                self._update_running_stats(mean_k.detach(), var_k.detach(), count)
            return y
        onehot = F.one_hot(d, k).to(cdt)  # (B, K)
        mean_s = _gather(self.running_mean.to(cdt), onehot)
        scale = torch.rsqrt(_gather(self.running_var.to(cdt), onehot) + self.eps)
        alpha, beta = _alpha_beta(scale, mean_s, weight, bias, onehot, cdt)
        return torch.addcmul(_bcast(beta, x), x.to(cdt), _bcast(alpha, x)).to(x.dtype)

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
        _check_num_domains(type(self).__name__, num_domains)
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
        d = self._require_domain(x)  # required even without affine: keeps the contract consistent
        cdt = torch.promote_types(x.dtype, torch.float32)
        y = F.instance_norm(x.to(cdt), eps=self.eps)
        if not self.affine:
            return y.to(x.dtype)
        onehot = F.one_hot(d, self.num_domains).to(cdt)
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
