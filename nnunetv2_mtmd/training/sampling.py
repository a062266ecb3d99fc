"""Domain-balanced batches for nnU-Net's data loader (Boutillon et al. 2021: "batches are split
equally between the domains").

:class:`DomainBalancedDataLoader` is nnU-Net's ``nnUNetDataLoader`` with two changes:

- ``get_indices`` draws exactly ``B / K`` case keys of every domain (with replacement, like nnU-Net),
  laid out in rounds of one sample per domain, each round in a random domain order. nnU-Net forces
  foreground in the LAST ``oversample_foreground_percent`` of the batch slots; because every round
  holds one sample of each domain, those forced-foreground slots are spread over the domains instead
  of landing on one of them.
- after augmentation the domain code channel (the last input channel) is restored from the batch's
  case keys: nnU-Net's intensity and spatial augmentations act on every channel and would otherwise
  corrupt the code.

When a split leaves a domain without cases (e.g. a tiny validation fold), the batch is spread over the
domains that have cases, as evenly as possible.
"""

from __future__ import annotations

import numpy as np
import torch
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

from nnunetv2_mtmd.domains import DomainSpec


def balanced_domain_slots(batch_size: int, domains_present: list[int], rng=np.random) -> list[int]:
    """Domain index of every batch slot: rounds of one slot per present domain, each round shuffled.

    With ``batch_size`` a multiple of the number of present domains every domain gets exactly
    ``batch_size / len(domains_present)`` slots; otherwise the last, partial round takes a random subset."""
    if not domains_present:
        raise ValueError("no domain has cases in this split")
    slots: list[int] = []
    while len(slots) < batch_size:
        slots.extend(int(d) for d in rng.permutation(domains_present))
    return slots[:batch_size]


class DomainBalancedDataLoader(nnUNetDataLoader):
    """nnU-Net data loader drawing ``B / K`` samples of every domain per batch.

    Batches are dicts like nnU-Net's: ``data`` (B, C+1, X, Y), ``target``, ``keys``, plus
    ``domain`` (B,) int64 domain indices."""

    def __init__(self, data, batch_size: int, patch_size, final_patch_size, label_manager,
                 domain_spec: DomainSpec, rare_class_exponent: float = 0.0, **kwargs):
        if isinstance(rare_class_exponent, bool) or not (
                isinstance(rare_class_exponent, (int, float)) and 0.0 <= rare_class_exponent <= 2.0):
            raise ValueError(f"rare_class_exponent must be a number in [0, 2], found {rare_class_exponent!r}")
        super().__init__(data, batch_size, patch_size, final_patch_size, label_manager, **kwargs)
        self.rare_class_exponent = float(rare_class_exponent)
        self.domain_spec = domain_spec
        self.keys_per_domain: dict[int, list[str]] = {}
        for k in self.indices:
            self.keys_per_domain.setdefault(domain_spec.domain_of_case(k).index, []).append(k)
        self.domains_present = sorted(self.keys_per_domain)

    def get_indices(self) -> list[str]:
        slots = balanced_domain_slots(self.batch_size, self.domains_present)
        return [self.keys_per_domain[d][np.random.randint(len(self.keys_per_domain[d]))] for d in slots]

    def get_bbox(self, data_shape, force_fg: bool, class_locations, overwrite_class=None, verbose: bool = False):
        if force_fg and overwrite_class is None and self.rare_class_exponent > 0 and class_locations:
            overwrite_class = pick_foreground_class(class_locations, self.rare_class_exponent,
                                                    exclude=self.annotated_classes_key)
        return super().get_bbox(data_shape, force_fg, class_locations, overwrite_class, verbose)

    def generate_train_batch(self) -> dict:
        batch = super().generate_train_batch()
        domain = torch.tensor([self.domain_spec.domain_of_case(k).index for k in batch["keys"]], dtype=torch.long)
        restore_code_channel(batch["data"], domain)
        batch["domain"] = domain
        return batch


def restore_code_channel(data: torch.Tensor, domain_idx: torch.Tensor) -> torch.Tensor:
    """Set the last channel of ``data`` (B, C+1, ...) to each sample's code (domain index + 1), in place."""
    codes = (domain_idx.to(data.dtype) + 1).view(-1, *([1] * (data.ndim - 2)))
    data[:, -1] = codes
    return data


def pick_foreground_class(class_locations: dict, exponent: float, exclude=None, rng=np.random):
    """The structure a forced-foreground sample shows, chosen with weights ``n_c ** -exponent``.

    ``n_c`` is the number of locations nnU-Net's preprocessing stored for class ``c`` in this case
    (every voxel of a class up to 10 000 voxels, about that many for larger ones), so rare classes get
    larger weights; ``exponent = 0`` is nnU-Net's uniform choice among the case's classes. Classes
    without locations and ``exclude`` (nnU-Net's annotated-classes key) are skipped; returns None when
    no class is left (nnU-Net then samples a random location)."""
    keys = [k for k, v in class_locations.items() if len(v) > 0 and not (exclude is not None and k == exclude)]
    if not keys:
        return None
    w = np.array([len(class_locations[k]) for k in keys], dtype=np.float64) ** -float(exponent)
    return keys[rng.choice(len(keys), p=w / w.sum())]
