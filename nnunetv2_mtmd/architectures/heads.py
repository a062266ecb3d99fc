"""Domain-specific 1x1 output layers in the unified label space.

Boutillon et al. (MICCAI 2021) give every domain its own 1x1 output layer predicting background +
that domain's structures. Here each head's logits are written into the unified label space of the
merged dataset (docs/design.md, "The network is described by the plans"): for a sample of domain
``k`` channel 0 holds head k's background logit, channels ``domain_label_ids[k]`` hold head k's
label logits and every other channel is exactly :data:`OTHER_DOMAIN_LOGIT` (-1000). nnU-Net's loss,
argmax, softmax export and validation then work unchanged (softmax of -1000 is 0 in fp16 and fp32;
-1e4 would overflow nnU-Net's fp16 prediction buffers).

``shared=True`` gives the paper's "shared" scheme instead: one head over all unified classes, the
domain is ignored.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nnunetv2_mtmd.architectures.dsbn import DomainAware
from nnunetv2_mtmd.errors import DomainSpecError

__all__ = ["OTHER_DOMAIN_LOGIT", "DomainHeads", "gather_unified", "unified_gather_table", "validate_domain_label_ids"]

#: Logit written into the channels of the other domains' structures.
OTHER_DOMAIN_LOGIT = -1000.0

_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_DIM = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}


def validate_domain_label_ids(
    domain_label_ids: object, where: str = "domain_label_ids"
) -> tuple[tuple[int, ...], ...]:
    """Check the unified label ids of every domain and return them as a tuple of tuples.

    Expected: a non-empty list (one entry per domain, in domain order) of non-empty lists of unified
    label ids >= 1, no id used twice, all ids together exactly ``1..L`` (nnU-Net needs consecutive
    labels). Raises :class:`~nnunetv2_mtmd.errors.DomainSpecError` otherwise.
    """
    hint = (
        " It comes from the plans (arch_kwargs['domain_label_ids']), written from the dataset's domain block "
        "(DomainSpec.domain_label_ids); re-run nnUNetv2_plan_and_preprocess with the MTMD planner."
    )
    if not _is_list_like(domain_label_ids) or not domain_label_ids:
        raise DomainSpecError(
            f"{where}: expected a non-empty list with one list of unified label ids per domain, "
            f"found {domain_label_ids!r}.{hint}"
        )
    out: list[tuple[int, ...]] = []
    seen: dict[int, int] = {}
    for k, ids in enumerate(domain_label_ids):
        if not _is_list_like(ids) or not ids:
            raise DomainSpecError(
                f"{where}[{k}]: expected a non-empty list of unified label ids (every domain has at least one "
                f"foreground label), found {ids!r}.{hint}"
            )
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, int) or i < 1:
                raise DomainSpecError(f"{where}[{k}]: label ids must be integers >= 1, found {i!r} (0 is the "
                                      f"background; foreground ids are unique across domains).{hint}")
            if i in seen:
                raise DomainSpecError(
                    f"{where}[{k}]: unified label id {i} is also used by domain {seen[i]}; the label sets of "
                    f"different domains must not overlap (every unified id unique across domains).{hint}"
                )
            seen[i] = k
        out.append(tuple(int(i) for i in ids))
    if sorted(seen) != list(range(1, len(seen) + 1)):
        raise DomainSpecError(
            f"{where}: the unified label ids of all domains together must be 1..{len(seen)}, found "
            f"{sorted(seen)}.{hint}"
        )
    return tuple(out)


def unified_gather_table(domain_label_ids: Sequence[Sequence[int]], num_classes: int) -> tuple[Tensor, Tensor, int]:
    """Where each domain's head output goes in the unified label space.

    The K per-domain outputs are computed as one tensor whose channels are the heads one after
    another (head k: background, then ``domain_label_ids[k]``). Returns ``(index, valid, n)``:
    ``index[k, c]`` (LongTensor ``(K, C)``) is the channel of that tensor holding unified channel ``c``
    for domain ``k`` (0 where the domain has no such channel), ``valid[k, c]`` (BoolTensor ``(K, C)``)
    says whether it has one, and ``n = sum_k (1 + len(ids_k))`` is the number of head channels. Used by
    :class:`DomainHeads` and by the label autoencoder's output layer."""
    k_dom = len(domain_label_ids)
    index = torch.zeros(k_dom, num_classes, dtype=torch.long)
    valid = torch.zeros(k_dom, num_classes, dtype=torch.bool)
    offset = 0
    for k, ids in enumerate(domain_label_ids):
        chans = [0, *ids]
        index[k, chans] = torch.arange(offset, offset + len(chans))
        valid[k, chans] = True
        offset += len(chans)
    return index, valid, offset


def gather_unified(y: Tensor, index: Tensor, valid: Tensor, domain_idx: Tensor) -> Tensor:
    """Unified logits ``(B, C, *spatial)`` from the concatenated head outputs ``y`` ``(B, n, *spatial)``:
    every sample's channels are gathered from its own domain's head (``domain_idx`` ``(B,)``, table of
    :func:`unified_gather_table`); the other domains' channels are :data:`OTHER_DOMAIN_LOGIT`."""
    b, c, spatial = y.shape[0], index.shape[1], y.shape[2:]
    view = (b, c) + (1,) * len(spatial)
    idx = index[domain_idx].view(view).expand(b, c, *spatial)
    other = torch.full((), OTHER_DOMAIN_LOGIT, dtype=y.dtype, device=y.device)
    return torch.where(valid[domain_idx].view(view), torch.gather(y, 1, idx), other)


def _is_list_like(obj: object) -> bool:
    return isinstance(obj, Sequence) and not isinstance(obj, (str, bytes))


def _conv_dim(conv_op: type[nn.Module]) -> int:
    for cls, dim in _CONV_DIM.items():
        if issubclass(conv_op, cls):
            return dim
    raise ValueError(f"DomainHeads: conv_op must be a torch Conv1d/2d/3d class, found {conv_op!r}.")


class DomainHeads(DomainAware, nn.Module):
    """One 1x1 convolution per domain, output in the unified label space.

    Args:
        in_channels: channels of the decoder stage output.
        domain_label_ids: unified label ids of every domain (background excluded), see
            :func:`validate_domain_label_ids`; ``num_classes = 1 + total number of labels``.
        conv_op: ``nn.Conv1d``/``nn.Conv2d``/``nn.Conv3d`` (the network's conv op).
        shared: one head over all unified classes instead (paper's "shared" scheme, domain ignored).

    Input ``(B, in_channels, *spatial)``; output ``(B, num_classes, *spatial)``. The domain of each
    sample is given to ``forward`` (``domain_idx``, LongTensor ``(B,)``, 0-based) or, if omitted, set
    beforehand with :func:`~nnunetv2_mtmd.architectures.dsbn.set_domain_index`.

    All K heads run as one convolution (their weights concatenated, ``1 + len(ids_k)`` output channels
    each), then every sample's unified channels are gathered from its own head with a precomputed
    index table; no loop over domains.
    """

    def __init__(
        self,
        in_channels: int,
        domain_label_ids: Sequence[Sequence[int]],
        conv_op: type[nn.Module] = nn.Conv2d,
        shared: bool = False,
    ) -> None:
        super().__init__()
        self.__dict__["_domain_idx"] = None
        self.domain_label_ids = validate_domain_label_ids(domain_label_ids)
        self.num_domains = len(self.domain_label_ids)
        self.num_classes = 1 + sum(len(ids) for ids in self.domain_label_ids)
        self.shared = bool(shared)
        self.in_channels = in_channels
        self.conv_dim = _conv_dim(conv_op)
        if self.shared:
            self.heads = nn.ModuleList([conv_op(in_channels, self.num_classes, 1, 1, 0, bias=True)])
        else:
            self.heads = nn.ModuleList(
                [conv_op(in_channels, 1 + len(ids), 1, 1, 0, bias=True) for ids in self.domain_label_ids]
            )
        # gather table: for domain k and unified channel c, the channel of the concatenated head output
        # holding it (valid[k, c]) or a dummy 0 (not valid[k, c] -> OTHER_DOMAIN_LOGIT)
        gather_idx, valid, _ = unified_gather_table(self.domain_label_ids, self.num_classes)
        self.register_buffer("_gather_idx", gather_idx, persistent=False)
        self.register_buffer("_valid", valid, persistent=False)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, num_domains={self.num_domains}, "
            f"num_classes={self.num_classes}, shared={self.shared}"
        )

    def forward(self, x: Tensor, domain_idx: Tensor | None = None) -> Tensor:
        """Logits ``(B, num_classes, *spatial)`` of ``x`` ``(B, in_channels, *spatial)``."""
        if self.shared:
            return self.heads[0](x)
        d = self._require_domain(x) if domain_idx is None else domain_idx.to(x.device)
        weight = torch.cat([h.weight for h in self.heads], 0)
        bias = torch.cat([h.bias for h in self.heads], 0)
        y = _CONV_FN[self.conv_dim](x, weight, bias)  # (B, sum_k (1 + L_k), *spatial)
        return gather_unified(y, self._gather_idx, self._valid, d)
