"""Multi-GPU training (``nnUNetv2_train ... -num_gpus N``, torch.distributed) for the MTMD trainers.

nnU-Net's DDP path splits the plans' (global) batch over the ranks, converts every
``torch.nn.BatchNorm`` to ``SyncBatchNorm`` and wraps the network in ``DistributedDataParallel``.
What the multi-domain method needs on top of that, and where it is done:

- **Per-domain batch balance on every rank** (:func:`rank_batch`): the global batch is rounded up to
  a multiple of ``world_size * K`` and split equally, so every rank's batch is a multiple of K and
  the domain-balanced loader draws ``B_rank / K`` samples of every domain on every rank.
  Foreground oversampling is split over the ranks exactly as nnU-Net does it.
- **DSBN statistics stay per domain**: the domain-specific batch norm is not a
  ``torch.nn.BatchNorm`` subclass, so ``SyncBatchNorm.convert_sync_batchnorm`` leaves it alone (its
  ``(K, C)`` running statistics and affine parameters survive); :func:`prepare_network_for_ddp`
  turns on its own all-reduce of per-domain sums and counts (``set_dsbn_sync``), so every rank
  normalises each domain with the statistics of that domain over the global batch. The shared
  scheme's plain BatchNorm is converted to SyncBatchNorm by nnU-Net, as for stock nnU-Net.
- **MSC over the global batch**: the trainer builds the contrastive loss with
  ``gather_distributed=True``; embeddings are all-gathered with gradients
  (``torch.distributed.nn.functional.all_gather``), so every rank computes SupCon over all ranks'
  samples, and after DDP's gradient averaging the gradient equals the single-process gradient on
  the concatenated batch (tested with two gloo processes).
- **One label autoencoder for all ranks** (MJAP phase 1): ranks start from rank 0's weights, average
  their gradients every step (:func:`average_gradients`) and end with rank 0's state
  (:func:`broadcast_module_state`); only rank 0 writes files.
- **Logged loss terms** are averaged over the ranks (:func:`reduce_term_means`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

# unwrap_network moved to the network's module (inference needs it too); re-exported here
from nnunetv2_mtmd.architectures.unet import unwrap_network

logger = logging.getLogger(__name__)

__all__ = [
    "RankBatch",
    "average_gradients",
    "balanced_global_batch_size",
    "broadcast_module_state",
    "dist_active",
    "prepare_network_for_ddp",
    "rank_batch",
    "reduce_term_means",
    "unwrap_network",
]


def dist_active() -> bool:
    """True when torch.distributed is initialised with more than one process."""
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


# ----------------------------------------------------------------------------------- batch split
@dataclass(frozen=True)
class RankBatch:
    """Batch of one rank: the (rounded) global batch size, this rank's batch size and its foreground
    oversampling fraction."""

    global_batch_size: int
    batch_size: int
    oversample_foreground_percent: float


def balanced_global_batch_size(global_batch_size: int, world_size: int, num_domains: int) -> int:
    """Smallest multiple of ``world_size * num_domains`` that is ``>= global_batch_size``."""
    for name, v in (("global_batch_size", global_batch_size), ("world_size", world_size),
                    ("num_domains", num_domains)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"balanced_global_batch_size: {name} must be an integer >= 1, found {v!r}.")
    m = world_size * num_domains
    return -(-global_batch_size // m) * m


def rank_batch(global_batch_size: int, world_size: int, rank: int, num_domains: int,
               oversample_foreground_percent: float) -> RankBatch:
    """Batch size and foreground oversampling of ``rank`` for domain-balanced DDP training.

    The global batch is rounded up to a multiple of ``world_size * K``
    (:func:`balanced_global_batch_size`) and split equally, so every rank holds ``B / (W K)``
    samples of each domain. Oversampling follows nnU-Net's
    ``nnUNetTrainer._set_batch_size_and_oversample`` (nnunetv2 2.8.1; re-implemented rather than
    called, since nnU-Net's method sets the trainer's attributes from the plans' batch size, tracked
    in :data:`nnunetv2_mtmd.compat.UPSTREAM`): the last ``round(B * p)`` slots of the global batch
    force foreground, and each rank gets the share of them that falls into its slice.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank_batch: rank must be in 0..{world_size - 1}, found {rank!r}.")
    g = balanced_global_batch_size(global_batch_size, world_size, num_domains)
    per = g // world_size
    low, high = rank * per, (rank + 1) * per
    p = float(oversample_foreground_percent)
    n_random = round(g * (1 - p))
    forced = [i >= n_random for i in range(g)]
    if high / g < (1 - p):
        pct = 0.0
    elif low / g > (1 - p):
        pct = 1.0
    else:
        pct = sum(forced[low:high]) / per
    return RankBatch(g, per, pct)


# --------------------------------------------------------------------------------------- network
def prepare_network_for_ddp(network: nn.Module, log: Callable[[str], None] = logger.info) -> int:
    """Turn on the cross-rank all-reduce of every domain-specific batch norm of ``network``.

    Call after nnU-Net's ``SyncBatchNorm.convert_sync_batchnorm`` + DDP wrapping (the wrappers are
    looked through). Returns the number of DSBN layers synchronised (0 for the shared scheme, whose
    plain BatchNorm layers nnU-Net converted to ``SyncBatchNorm``)."""
    from nnunetv2_mtmd.architectures.dsbn import DomainSpecificBatchNorm, set_dsbn_sync

    mod = unwrap_network(network)
    set_dsbn_sync(mod, True)
    n_dsbn = sum(isinstance(m, DomainSpecificBatchNorm) for m in mod.modules())
    n_sync = sum(isinstance(m, nn.SyncBatchNorm) for m in mod.modules())
    log(f"DDP: {n_dsbn} domain-specific batch norm layer(s) all-reduce per-domain statistics over the ranks; "
        f"{n_sync} shared BatchNorm layer(s) run as SyncBatchNorm.")
    return n_dsbn


@torch.no_grad()
def broadcast_module_state(module: nn.Module, src: int = 0) -> None:
    """Copy parameters and buffers of rank ``src`` to every rank (no-op without torch.distributed)."""
    if not dist_active():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        torch.distributed.broadcast(t.data, src)


@torch.no_grad()
def average_gradients(module: nn.Module) -> None:
    """All-reduce and average the gradients of ``module`` over the ranks (a hand-made DDP step).

    Parameters without a gradient get a zero gradient first, so every rank issues the same
    collectives."""
    if not dist_active():
        return
    world = torch.distributed.get_world_size()
    for p in module.parameters():
        if not p.requires_grad:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        torch.distributed.all_reduce(p.grad)
        p.grad.div_(world)


def reduce_term_means(means: dict[str, float], counters: tuple[str, ...] = ()) -> dict[str, float]:
    """Average per-rank epoch means of the logged loss terms over the ranks; ``counters`` are summed.

    Without torch.distributed the input is returned unchanged. A term missing on a rank (e.g. never
    computed there) is averaged over the ranks that have it."""
    if not dist_active():
        return dict(means)
    world = torch.distributed.get_world_size()
    gathered: list[dict[str, float] | None] = [None] * world
    torch.distributed.all_gather_object(gathered, dict(means))
    out: dict[str, float] = {}
    keys = sorted({k for g in gathered for k in (g or {})})
    for k in keys:
        vals = [float(g[k]) for g in gathered if g and k in g]
        out[k] = sum(vals) if k in counters else sum(vals) / len(vals)
    return out
