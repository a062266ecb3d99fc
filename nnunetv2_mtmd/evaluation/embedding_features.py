"""Slices of a fold's preprocessed cases and their multi-scale embeddings by a trained network.

The feature-extraction half of the embedding analysis (:mod:`nnunetv2_mtmd.evaluation.embeddings`,
steps 3 and 4 there): which slices of a case are embedded (:func:`select_slices`), how each is brought
to the plans' patch size with its domain code channel (:func:`crop_or_pad_slice`), and the network's
stage outputs embedded with GAP + L2 norm in batches (:func:`compute_embeddings`), named by
:func:`stage_names`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nnunetv2_mtmd.domains import DomainSpec
from nnunetv2_mtmd.errors import InputDataError

logger = logging.getLogger(__name__)

__all__ = [
    "SliceRecord",
    "compute_embeddings",
    "crop_or_pad_slice",
    "iter_slices",
    "select_slices",
    "stage_names",
]


# -------------------------------------------------------------------------------------- stages
def stage_names(num_features: int) -> list[str]:
    """Names of the entries of the multi-domain U-Net's feature list.

    ``2 * n_stages - 1`` entries: encoder ``enc0`` (full resolution) .. ``enc{n-1}`` (bottleneck),
    then decoder ``dec0`` (lowest resolution) .. ``dec{n-2}`` (full resolution).
    """
    if num_features < 1 or num_features % 2 == 0:
        raise ValueError(
            f"stage_names: expected 2 * n_stages - 1 feature maps (encoder then decoder), found {num_features}."
        )
    n = (num_features + 1) // 2
    return [f"enc{i}" for i in range(n)] + [f"dec{i}" for i in range(n - 1)]


# ------------------------------------------------------------------------------------- slices
def select_slices(seg: np.ndarray, max_slices: int) -> np.ndarray:
    """Indices along axis 0 of the slices of ``seg`` ``(Z, Y, X)`` with at least one label > 0.

    With ``max_slices > 0`` and more eligible slices than that, ``max_slices`` of them evenly spaced
    over the eligible ones (``np.linspace`` over their positions, rounded; first and last included).
    ``max_slices <= 0`` keeps all."""
    seg = np.asarray(seg)
    if seg.ndim < 2:
        raise ValueError(f"select_slices: expected a (Z, Y, X) label map, found shape {seg.shape}.")
    fg = np.flatnonzero((seg > 0).reshape(seg.shape[0], -1).any(axis=1))
    if max_slices <= 0 or len(fg) <= max_slices:
        return fg.astype(np.int64)
    pos = np.unique(np.round(np.linspace(0, len(fg) - 1, max_slices)).astype(np.int64))
    return fg[pos].astype(np.int64)


def _window(size: int, target: int, fg: np.ndarray) -> tuple[int, int, int]:
    """(start in the slice, length copied, start in the output) along one axis."""
    if size <= target:
        off = (target - size) // 2
        return 0, size, off
    center = (fg.min() + fg.max() + 1) / 2.0 if fg.size else size / 2.0
    start = int(round(center - target / 2.0))
    start = min(max(start, 0), size - target)
    return start, target, 0


def crop_or_pad_slice(
    image: np.ndarray, seg: np.ndarray | None, patch_size: Sequence[int], code: float
) -> np.ndarray:
    """Bring one slice to ``patch_size`` and set its code channel.

    Args:
        image: ``(C + 1, Y, X)`` slice, the last channel being the domain code channel.
        seg: ``(Y, X)`` labels of the slice (the crop window is centred on its foreground bounding
            box where the slice is larger than the patch) or None (centre crop).
        patch_size: ``(PY, PX)``.
        code: domain code written into every pixel of the last channel.

    Returns:
        ``(C + 1, PY, PX)`` float32: image channels cropped / zero-padded symmetrically (odd padding:
        one more pixel after), last channel constant ``code``.
    """
    image = np.asarray(image)
    if image.ndim != 1 + len(patch_size):
        raise ValueError(
            f"crop_or_pad_slice: image of shape {image.shape} does not match patch size {tuple(patch_size)}."
        )
    out = np.zeros((image.shape[0], *patch_size), dtype=np.float32)
    if seg is not None:
        fg_axes = np.nonzero(np.asarray(seg) > 0)
    else:
        fg_axes = tuple(np.zeros(0, dtype=np.int64) for _ in patch_size)
    src, dst = [slice(None)], [slice(None)]
    for ax, target in enumerate(patch_size):
        s0, n, d0 = _window(image.shape[ax + 1], int(target), fg_axes[ax])
        src.append(slice(s0, s0 + n))
        dst.append(slice(d0, d0 + n))
    out[tuple(dst)] = image[tuple(src)]
    out[-1] = code
    return out


# ------------------------------------------------------------------------------- embeddings
@dataclass
class SliceRecord:
    """One embedded slice."""

    case_id: str
    domain: int  # 0-based domain index
    split: str  # "train" or "val"
    slice_index: int


def iter_slices(
    dataset: Any,
    cases: Sequence[tuple[str, str]],
    spec: DomainSpec,
    patch_size: Sequence[int],
    max_slices_per_case: int,
    progress: Callable[[Iterator], Iterator] | None,
) -> Iterator[tuple[SliceRecord, np.ndarray]]:
    """``(record, (C + 1, PY, PX) slice)`` for the selected slices (:func:`select_slices`) of every
    ``(case id, "train" / "val")`` of ``cases``, loaded from ``dataset`` (an nnU-Net dataset class) and
    brought to ``patch_size`` with the case's domain code (:func:`crop_or_pad_slice`). ``progress``
    wraps the case list (a progress bar) or is None."""
    it = cases if progress is None else progress(cases)
    for case_id, split in it:
        dom = spec.domain_of_case(case_id)
        data, seg, _, _ = dataset.load_case(case_id)
        seg0 = np.asarray(seg[0])
        if data.shape[0] != spec.code_channel + 1:
            raise InputDataError(
                f"Preprocessed case '{case_id}' has {data.shape[0]} channels, expected {spec.code_channel + 1} "
                "(image channels + the domain code channel)."
            )
        zs = select_slices(seg0, max_slices_per_case)
        for z in zs:
            img = np.asarray(data[:, int(z)], dtype=np.float32)
            found = float(img[-1].max())
            if round(found) != dom.code:
                logger.warning(
                    "Case %s slice %d: code channel holds %s, but the case id says domain %s (code %d); using %d.",
                    case_id, z, found, dom.name, dom.code, dom.code,
                )
            x = crop_or_pad_slice(img, seg0[int(z)], patch_size, float(dom.code))
            yield SliceRecord(case_id, dom.index, split, int(z)), x


def compute_embeddings(
    network: Any,
    slices: Iterator[tuple[SliceRecord, np.ndarray]],
    batch_size: int = 32,
    device: str = "cpu",
) -> tuple[list[SliceRecord], list[np.ndarray]]:
    """Run the network on ``(record, (C + 1, X, Y) slice)`` items in batches and embed every stage.

    Returns the records and, per stage, a ``(N, C_s)`` float32 array of L2-normalised GAP embeddings
    (:func:`nnunetv2_mtmd.losses.contrastive.embed`)."""
    import torch

    from nnunetv2_mtmd.losses.contrastive import embed

    records: list[SliceRecord] = []
    per_stage: list[list[np.ndarray]] | None = None
    buf_r: list[SliceRecord] = []
    buf_x: list[np.ndarray] = []
    old = network.collect_features
    network.collect_features = True

    def flush() -> None:
        nonlocal per_stage
        x = torch.from_numpy(np.stack(buf_x)).to(device)
        network(x)
        feats = network.last_features
        expected = torch.tensor([r.domain for r in buf_r], device=network.last_domain_idx.device)
        if not torch.equal(network.last_domain_idx.long(), expected):
            raise RuntimeError("the network read a different domain from the code channel than the case id says.")
        zs = [z.cpu().numpy().astype(np.float32) for z in embed(feats)]
        if per_stage is None:
            per_stage = [[] for _ in zs]
        for s, z in enumerate(zs):
            per_stage[s].append(z)
        records.extend(buf_r)
        buf_r.clear()
        buf_x.clear()

    try:
        network.eval()
        with torch.no_grad():
            for rec, x in slices:
                buf_r.append(rec)
                buf_x.append(x)
                if len(buf_x) >= batch_size:
                    flush()
            if buf_x:
                flush()
    finally:
        network.collect_features = old
        network.last_features = None
    if per_stage is None:
        return records, []
    return records, [np.concatenate(s, axis=0) for s in per_stage]
