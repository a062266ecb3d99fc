"""Training batches for the timed iterations, built once and reused: every trainer gets the same
batch, already on the device, so the timings exclude data loading and host-to-device copies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nnunetv2_mtmd.apps.benchmark.data import PreparedDataset
from nnunetv2_mtmd.domains import DomainSpec
from nnunetv2_mtmd.errors import InputDataError


def center_crop_or_pad(arr: np.ndarray, patch: Sequence[int], pad_value: float = 0) -> np.ndarray:
    """Center-crop or pad (with ``pad_value``) the trailing ``len(patch)`` axes of ``arr`` to ``patch``."""
    spatial = arr.shape[-len(patch):]
    out = arr
    for ax, (s, p) in enumerate(zip(spatial, patch)):
        axis = arr.ndim - len(patch) + ax
        if s > p:
            start = (s - p) // 2
            out = np.take(out, np.arange(start, start + p), axis=axis)
        elif s < p:
            before = (p - s) // 2
            widths = [(0, 0)] * out.ndim
            widths[axis] = (before, p - s - before)
            out = np.pad(out, widths, constant_values=pad_value)
    return out


def deep_supervision_targets(seg: Any, scales: Sequence[Sequence[float]] | None) -> Any:
    """Targets as nnU-Net's ``DownsampleSegForDSTransform`` makes them: ``seg`` ``(B, 1, X, Y)`` at
    every scale (``round(shape * scale)``, nearest-exact), same dtype; ``scales`` None -> ``seg``."""
    import torch.nn.functional as F

    if scales is None:
        return seg
    out = []
    for s in scales:
        if all(float(v) == 1 for v in s):
            out.append(seg)
        else:
            shape = [round(n * float(v)) for n, v in zip(seg.shape[2:], s)]
            out.append(F.interpolate(seg.float(), shape, mode="nearest-exact").to(seg.dtype))
    return out


def make_fixed_batch(prepared: PreparedDataset, trainer: Any, batch_size: int, device: str) -> dict[str, Any]:
    """One training batch from the preprocessed merged dataset, as nnU-Net's loader would give it.

    ``data``: ``(B, C + 1, X, Y)`` float32 (image channels, then the domain code), ``target``: list of
    ``(B, 1, X_s, Y_s)`` int16 at the trainer's deep-supervision scales. B / K samples per domain in
    domain order (as the domain-balanced loader draws them), each a 2D slice (the one with most
    foreground first, cycling over the domain's cases) center-cropped/padded to the patch size."""
    import torch
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    spec = prepared.spec
    k = spec.num_domains
    if batch_size % k:
        raise InputDataError(f"batch size {batch_size} is not a multiple of the {k} domains.")
    patch = [int(p) for p in trainer.configuration_manager.patch_size]
    ds = infer_dataset_class(str(prepared.preprocessed))(str(prepared.preprocessed))
    by_domain: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {d.index: [] for d in spec.domains}
    for key in sorted(ds.identifiers):
        data, seg, _, _ = ds.load_case(key)
        data, seg = np.asarray(data), np.asarray(seg)
        order = np.argsort(-(seg[0] > 0).reshape(seg.shape[1], -1).sum(1), kind="stable")
        by_domain[spec.domain_of_case(key).index].append((data[:, order], seg[:, order]))
    imgs, segs = [], []
    for d in spec.domains:
        cases = by_domain[d.index]
        if not cases:
            raise InputDataError(f"no preprocessed case of domain {d.name} in {prepared.preprocessed}.")
        for j in range(batch_size // k):
            data, seg = cases[j % len(cases)]
            z = (j // len(cases)) % data.shape[1]
            img = center_crop_or_pad(data[:, z], patch)
            img[spec.code_channel] = d.code  # the loader restores the code after augmentation
            imgs.append(img)
            segs.append(center_crop_or_pad(seg[:, z], patch))
    data_t = torch.from_numpy(np.stack(imgs).astype(np.float32)).to(device)
    seg_t = torch.from_numpy(np.stack(segs).astype(np.int16)).to(device)
    return {"data": data_t, "target": deep_supervision_targets(seg_t, trainer._get_deep_supervision_scales())}


def random_batch(spec: DomainSpec, batch_size: int, patch: Sequence[int], scales: Any, device: str,
                 seed: int = 0) -> dict[str, Any]:
    """A fixed random batch for K synthetic domains: B / K samples per domain in domain order; image
    ``N(0, 1)``, code channel = domain code, labels = blocks of the sample's own domain labels."""
    import torch

    g = torch.Generator().manual_seed(seed)
    k = spec.num_domains
    per = batch_size // k
    dom = torch.arange(k).repeat_interleave(per)  # (B,)
    img = torch.randn(batch_size, spec.code_channel, *patch, generator=g)
    code = (dom + 1).float().view(-1, 1, *([1] * len(patch))).expand(batch_size, 1, *patch)
    data = torch.cat([img, code], 1)
    coarse = [max(1, p // 8) for p in patch]
    segs = []
    for b in range(batch_size):
        ids = torch.tensor([0] + list(spec.domains[int(dom[b])].unified_ids))
        pick = torch.randint(0, len(ids), coarse, generator=g)
        lab = ids[pick].float()[None, None]
        segs.append(torch.nn.functional.interpolate(lab, list(patch), mode="nearest")[0])
    seg = torch.stack(segs).to(torch.int16)
    return {"data": data.to(device), "target": deep_supervision_targets(seg.to(device), scales)}
