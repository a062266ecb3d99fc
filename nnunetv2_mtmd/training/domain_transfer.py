"""A trained K-domain network extended by one domain: weights, frozen layers, AdaBN (docs/add_domain.md).

Used by ``nnUNetTrainerMTMD_AddDomain`` (training/trainers/add_domain.py); plain functions on the
multi-domain U-Net (architectures/unet.py), tested on their own.

* :func:`transfer_source_weights` copies a K-domain state dict into the K+1-domain network: every
  shared tensor as is, rows ``0..K-1`` of every domain-specific norm tensor (affine ``(K, C)``,
  running statistics ``(K, C)``, ``num_batches_tracked`` ``(K,)``), the K old heads of every
  deep-supervision scale. Row K (the new domain): running statistics reset (AdaBN re-estimates
  them), affine parameters the mean of the old domains' rows (``"mean"``) or ``1, 0``
  (``"identity"``); its heads keep the network's initialisation. Anything else that does not fit is
  an error listing the keys.
* :func:`prepare_new_domain_training` freezes what the old domains use: the old heads and (unless
  asked otherwise) the shared convolutions get ``requires_grad=False``; the domain-specific norm
  tensors stay trainable but a gradient hook zeroes every row except the new domain's, BEFORE
  nnU-Net's gradient clipping and the optimizer see it. The caller must also keep weight decay off
  those tensors (SGD adds ``weight_decay * param`` to the gradient of every row); with a zero
  gradient, no weight decay and a momentum buffer that therefore stays zero, SGD (with Nesterov
  momentum, as nnU-Net's) leaves the old rows bitwise unchanged.
* :func:`adabn` re-estimates the new domain's running statistics (Li et al., "Revisiting batch
  normalization for practical domain adaptation", 2016/2018: AdaBN) from batches of the new domain,
  the network in training mode without gradients and with a cumulative average (``momentum=None``)
  for the row, so it is the mean of the per-batch statistics. The old rows are untouched: a DSBN
  layer updates only the rows of domains present in the batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from nnunetv2_mtmd.architectures.dsbn import DomainSpecificBatchNorm, DomainSpecificInstanceNorm
from nnunetv2_mtmd.architectures.heads import DomainHeads
from nnunetv2_mtmd.errors import InputDataError

logger = logging.getLogger(__name__)

__all__ = ["AFFINE_INITS", "NewDomainParameters", "adabn", "domain_norms", "prepare_new_domain_training",
           "transfer_source_weights"]

AFFINE_INITS = ("mean", "identity")
_DOMAIN_NORMS = (DomainSpecificBatchNorm, DomainSpecificInstanceNorm)


def domain_norms(network: nn.Module) -> dict[str, nn.Module]:
    """Qualified name -> module of every domain-specific norm (DSBN, domain-specific instance norm)."""
    return {n: m for n, m in network.named_modules() if isinstance(m, _DOMAIN_NORMS)}


def _classify_keys(network: nn.Module, new_domain: int) -> tuple[set[str], set[str]]:
    """``(row keys, new-head keys)`` of ``network.state_dict()``: the tensors of domain-specific norms
    (one row per domain) and the parameters of head ``new_domain`` at every deep-supervision scale.

    Classified per state-dict key through its owning module, because dynamic-network-architectures
    registers each norm twice (``convs.0.norm`` and ``convs.0.all_modules.1``) and ``named_modules``
    lists it once."""
    rows, heads = set(), set()
    for key in network.state_dict():
        owner = network.get_submodule(key.rsplit(".", 1)[0]) if "." in key else network
        if isinstance(owner, _DOMAIN_NORMS):
            rows.add(key)
        parts = key.split(".")
        # <...>.heads.<scale>.heads.<domain>.<param>: the module two levels up is a DomainHeads
        if len(parts) >= 3 and parts[-3] == "heads" and parts[-2] == str(new_domain):
            holder = network.get_submodule(".".join(parts[:-3]))
            if isinstance(holder, DomainHeads) and not holder.shared:
                heads.add(key)
    return rows, heads


def transfer_source_weights(
    network: nn.Module, source_state: dict[str, Tensor], where: str, affine_init: str = "mean"
) -> int:
    """Load the K-domain ``source_state`` into the K+1-domain ``network`` (module docstring); returns K.

    ``where`` names the source (the checkpoint file) in errors. Raises :class:`InputDataError`
    listing every key that is missing, unexpected or of a shape that fits neither rule."""
    if affine_init not in AFFINE_INITS:
        raise ValueError(f"affine_init must be one of {AFFINE_INITS}, found {affine_init!r}")
    norms = domain_norms(network)
    if not norms:
        raise InputDataError(f"The network has no domain-specific norm layers: it cannot take a domain from {where}.")
    k_new = next(iter(norms.values())).num_domains
    k_old = k_new - 1
    row_keys, new_heads = _classify_keys(network, k_old)
    target = network.state_dict()
    problems: list[str] = []
    for key in sorted(set(source_state) - set(target)):
        problems.append(f"unexpected key '{key}' {tuple(source_state[key].shape)}")
    for key, dst in target.items():
        src = source_state.get(key)
        if src is None:
            if key not in new_heads:
                problems.append(f"missing key '{key}' {tuple(dst.shape)}")
            continue
        if src.shape == dst.shape and key not in row_keys:
            continue
        if key in row_keys and src.shape[:1] == (k_old,) and src.shape[1:] == dst.shape[1:]:
            continue
        problems.append(f"'{key}': source {tuple(src.shape)}, network {tuple(dst.shape)}")
    if problems:
        raise InputDataError(
            f"The weights of {where} do not fit the {k_new}-domain network of the new plans ({len(problems)} "
            f"key(s)): " + "; ".join(problems[:12]) + ("; ..." if len(problems) > 12 else "")
            + ". The new plans must come from the model's own plans (nnUNetv2_mtmd_add_domain) and the "
            "checkpoint from a DSL-type model with per-domain heads trained on them."
        )
    with torch.no_grad():  # state_dict() tensors share storage with the parameters and buffers
        for key, dst in target.items():
            src = source_state.get(key)
            if src is None:
                continue  # a new head: keeps the network's initialisation
            if key in row_keys:
                dst[:k_old].copy_(src)
            else:
                dst.copy_(src)
        for mod in norms.values():
            _init_new_row(mod, k_old, affine_init)
    logger.info("Loaded %d tensors of %s (%d domains) into the %d-domain network.", len(source_state), where,
                k_old, k_new)
    return k_old


def _init_new_row(mod: nn.Module, row: int, affine_init: str) -> None:
    """Row ``row`` of a domain norm: running statistics reset, affine from the other rows or identity."""
    if getattr(mod, "running_mean", None) is not None:
        mod.running_mean[row] = 0.0
        mod.running_var[row] = 1.0
        mod.num_batches_tracked[row] = 0
    if getattr(mod, "weight", None) is not None:
        if affine_init == "mean":
            mod.weight[row] = mod.weight[:row].mean(0)
            mod.bias[row] = mod.bias[:row].mean(0)
        else:
            mod.weight[row] = 1.0
            mod.bias[row] = 0.0


@dataclass
class NewDomainParameters:
    """The trainable part of a network prepared by :func:`prepare_new_domain_training`.

    ``row_masked``: the domain-norm affine tensors ``(K+1, C)`` whose old rows are masked (optimizer
    group WITHOUT weight decay); ``others``: the new domain's heads (and the shared convolutions when
    they train), an ordinary group; ``frozen``: names of the frozen parameters."""

    row_masked: list[nn.Parameter]
    others: list[nn.Parameter]
    frozen: list[str]
    hooks: list = field(default_factory=list, repr=False)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Optimizer parameter groups: weight decay on ``others`` only (see the module docstring)."""
        groups = [{"params": self.others, "weight_decay": weight_decay}]
        if self.row_masked:
            groups.append({"params": self.row_masked, "weight_decay": 0.0})
        return groups

    def remove_hooks(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks.clear()


def _row_mask_hook(keep: Tensor):
    """Gradient hook keeping only the rows where ``keep`` ``(K, 1)`` is True (exact zeros elsewhere,
    also where the gradient is inf/NaN, so that nothing reaches the old rows)."""

    def hook(grad: Tensor) -> Tensor:
        return grad.masked_fill(~keep.to(grad.device), 0.0)

    return hook


def prepare_new_domain_training(
    network: nn.Module, new_domain: int, train_shared: bool = False
) -> NewDomainParameters:
    """Freeze what the old domains use, mask the old rows of the domain norms (module docstring).

    ``network``: the plain multi-domain U-Net (no DDP / compile wrapper); ``new_domain``: 0-based index
    of the new domain; ``train_shared``: the shared convolutions train too (the old domains' outputs
    then change)."""
    norms = domain_norms(network)
    norm_params = {id(p) for m in norms.values() for p in m.parameters(recurse=False)}
    new_head = {id(p) for m in network.modules() if isinstance(m, DomainHeads) and not m.shared
                for p in m.heads[new_domain].parameters()}
    head_params = {id(p) for m in network.modules() if isinstance(m, DomainHeads) for p in m.parameters()}
    out = NewDomainParameters([], [], [])
    for name, p in network.named_parameters():
        if id(p) in norm_params:
            keep = torch.zeros(p.shape[0], *([1] * (p.ndim - 1)), dtype=torch.bool)
            keep[new_domain] = True
            p.requires_grad_(True)
            out.hooks.append(p.register_hook(_row_mask_hook(keep)))
            out.row_masked.append(p)
        elif id(p) in new_head or (train_shared and id(p) not in head_params):
            p.requires_grad_(True)
            out.others.append(p)
        else:
            p.requires_grad_(False)
            out.frozen.append(name)
    return out


@torch.no_grad()
def adabn(network: nn.Module, batches: Iterable[Tensor], new_domain: int) -> int:
    """Re-estimate the running statistics of ``new_domain`` in every DSBN layer from ``batches``
    (input tensors ``(B, C + 1, *spatial)``, all of that domain, on the network's device); returns the
    number of batches used. The network's training flag and the layers' momentum are restored.

    Raises :class:`InputDataError` when a batch holds another domain (its rows would change)."""
    bns = [m for m in domain_norms(network).values() if isinstance(m, DomainSpecificBatchNorm)]
    momenta = [m.momentum for m in bns]
    was_training = network.training
    for m in bns:
        m.running_mean[new_domain] = 0.0
        m.running_var[new_domain] = 1.0
        m.num_batches_tracked[new_domain] = 0
        m.momentum = None  # cumulative average per domain: the mean of the batches' statistics
    n = 0
    try:
        network.train()
        for x in batches:
            codes = torch.round(x[:, -1].flatten(1).amax(1)).long() - 1
            if bool((codes != new_domain).any()):
                raise InputDataError(
                    f"AdaBN: a batch holds domain index(es) {sorted(set(codes.tolist()))}, expected only the new "
                    f"domain {new_domain}: the dataset of a domain added to a model must hold only its cases."
                )
            network(x)
            n += 1
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        network.train(was_training)
    return n
