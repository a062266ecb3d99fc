"""What the MJAP label autoencoder trains on: label crops of the training patch size, drawn from the
preprocessed segmentations of the fold's training cases, with the trainer's spatial augmentation.

MJAP feeds the frozen autoencoder the ground truth of the segmentation network's training patches
(Boutillon et al. 2022, section 2.3), so the autoencoder learns exactly that distribution:

- label maps: every 2D slice (2D configuration: the slices along the first preprocessed axis, as
  nnU-Net's 2D loader takes them) or every volume (3D) of the preprocessed segmentations of the
  given cases, read with nnU-Net's dataset class (``infer_dataset_class(folder)``, ``load_case``);
  nnU-Net's ``-1`` (outside the nonzero crop) becomes background;
- batches: domain-balanced (rounds of one sample per domain, :func:`balanced_domain_slots`), a
  fraction ``fg_fraction`` of the samples centred on a voxel of a structure (nnU-Net's forced
  foreground: a map with foreground, one of its structures uniformly, one of its voxels), the rest at
  a uniformly random position of a random map;
- augmentation (:class:`SpatialAugmentation`): nnU-Net's ``SpatialTransform`` parameters (rotation
  with probability 0.2 within the trainer's rotation range, scaling within (0.7, 1.4) with
  probability 0.2, mirroring of each of the trainer's mirror axes with probability 0.5); labels are
  resampled as nnU-Net does it (linear interpolation of the one-hot map, then argmax); outside the
  map is background.

Batches are dicts like nnU-Net's: ``target`` ``(B, 1, X, Y)`` float32 unified label ids and
``domain`` ``(B,)`` int64.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nnunetv2_mtmd.domains import DomainSpec
from nnunetv2_mtmd.errors import InputDataError
from nnunetv2_mtmd.training.sampling import balanced_domain_slots

logger = logging.getLogger(__name__)

__all__ = ["LabelMaps", "LabelPatchSampler", "SpatialAugmentation", "load_label_maps", "rotation_range"]


@dataclass
class LabelMaps:
    """Label maps of one split, per domain: ``maps[k]`` the 2D slices ``(X, Y)`` (or 3D volumes) of
    domain k, int16 unified label ids; ``case_ids`` the cases they came from."""

    maps: list[list[np.ndarray]]
    case_ids: list[str] = field(default_factory=list)

    @property
    def num_domains(self) -> int:
        return len(self.maps)

    def foreground(self, k: int) -> list[np.ndarray]:
        """The maps of domain k that hold any structure."""
        return [m for m in self.maps[k] if m.any()]

    def counts(self) -> list[int]:
        return [len(m) for m in self.maps]


def load_label_maps(folder: str | Path, case_ids: Sequence[str], domain_spec: DomainSpec, dim: int) -> LabelMaps:
    """The segmentations of ``case_ids`` in nnU-Net's preprocessed ``folder`` as :class:`LabelMaps`.

    Args:
        folder: ``nnUNet_preprocessed/<Dataset>/<plans>_<configuration>``.
        dim: 2 (every slice along the first axis is a map) or 3 (every volume is a map).
    """
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    folder = Path(folder)
    if not folder.is_dir():
        raise InputDataError(f"Preprocessed folder {folder} does not exist; run nnUNetv2_plan_and_preprocess "
                             "(or nnUNetv2_preprocess) for this plans and configuration first.")
    if dim not in (2, 3):
        raise ValueError(f"load_label_maps: dim must be 2 or 3, got {dim!r}.")
    dataset = infer_dataset_class(str(folder))(str(folder), sorted(case_ids))
    maps: list[list[np.ndarray]] = [[] for _ in range(domain_spec.num_domains)]
    for case in sorted(case_ids):
        k = domain_spec.domain_of_case(case).index
        _, seg, _, _ = dataset.load_case(case)
        seg = np.clip(np.asarray(seg)[0], 0, None).astype(np.int16)  # (Z, X, Y); -1 -> background
        allowed = np.array([0, *domain_spec.domains[k].unified_ids])
        if not np.isin(seg, allowed).all():
            bad = sorted(set(np.unique(seg).tolist()) - set(allowed.tolist()))
            raise InputDataError(f"{folder}: case {case} (domain {domain_spec.domains[k].name}) holds label(s) "
                                 f"{bad} of another domain; re-run nnUNetv2_mtmd_merge and preprocessing.")
        maps[k].extend(list(seg) if dim == 2 else [seg])
    return LabelMaps(maps, sorted(case_ids))


def rotation_range(rotation: object) -> tuple[float, float]:
    """``(low, high)`` in radians from nnU-Net's ``rotation_for_DA`` (a 2-tuple or a number)."""
    if isinstance(rotation, (int, float)) and not isinstance(rotation, bool):
        return float(rotation), float(rotation)
    if isinstance(rotation, Sequence) and len(rotation) == 2:
        return float(rotation[0]), float(rotation[1])
    raise ValueError(f"rotation_for_DA must be a (low, high) tuple of radians or a number, found {rotation!r}.")


@dataclass(frozen=True)
class SpatialAugmentation:
    """nnU-Net's 2.8.1 ``SpatialTransform`` settings for label maps (rotation in radians).

    ``dummy_2d`` (3D only): rotate within the last two axes only (nnU-Net's dummy 2D augmentation)."""

    rotation: tuple[float, float] = (-math.pi, math.pi)
    mirror_axes: tuple[int, ...] = (0, 1)
    p_rotation: float = 0.2
    scaling: tuple[float, float] = (0.7, 1.4)
    p_scaling: float = 0.2
    p_mirror: float = 0.5
    dummy_2d: bool = False

    def to_json(self) -> dict:
        return {"rotation": list(self.rotation), "mirror_axes": list(self.mirror_axes),
                "p_rotation": self.p_rotation, "scaling": list(self.scaling), "p_scaling": self.p_scaling,
                "p_mirror": self.p_mirror, "dummy_2d": self.dummy_2d}

    def sample_matrix(self, dim: int, rng: np.random.Generator) -> np.ndarray:
        """A random ``(dim, dim)`` matrix taking patch offsets to map offsets (identity: no change)."""
        m = np.eye(dim)
        if rng.random() < self.p_rotation:
            m = _rotation(dim, self.rotation, self.dummy_2d, rng) @ m
        if rng.random() < self.p_scaling:
            m = m * rng.uniform(*self.scaling)
        for ax in self.mirror_axes:
            if ax < dim and rng.random() < self.p_mirror:
                m[:, ax] = -m[:, ax]
        return m


def _rotation(dim: int, rng_range: tuple[float, float], dummy_2d: bool, rng: np.random.Generator) -> np.ndarray:
    def plane(a: float, i: int, j: int) -> np.ndarray:
        r = np.eye(dim)
        c, s = math.cos(a), math.sin(a)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        return r

    if dim == 2:
        return plane(rng.uniform(*rng_range), 0, 1)
    planes = [(1, 2)] if dummy_2d else [(1, 2), (0, 2), (0, 1)]
    out = np.eye(3)
    for i, j in planes:
        out = plane(rng.uniform(*rng_range), i, j) @ out
    return out


class LabelPatchSampler:
    """Endless stream of domain-balanced, augmented label patches (see the module docstring).

    Args:
        maps: the label maps (:func:`load_label_maps`); domains without maps are left out of the batches.
        domain_label_ids: unified foreground ids of every domain (``DomainSpec.domain_label_ids``).
        patch_size: the training patch size (``configuration_manager.patch_size``).
        batch_size: samples per batch (rounds of one sample per present domain).
        augmentation: :class:`SpatialAugmentation`, or None for plain crops.
        fg_fraction: probability that a sample is centred on a structure.
        seed: seed of the sampler's own random generator (the stream is reproducible).
    """

    def __init__(self, maps: LabelMaps, domain_label_ids: Sequence[Sequence[int]], patch_size: Sequence[int],
                 batch_size: int, augmentation: SpatialAugmentation | None = None, fg_fraction: float = 0.95,
                 seed: int = 0) -> None:
        if not 0.0 <= fg_fraction <= 1.0:
            raise ValueError(f"fg_fraction must be within [0, 1], found {fg_fraction!r}.")
        self.patch = tuple(int(p) for p in patch_size)
        self.dim = len(self.patch)
        self.batch_size = int(batch_size)
        self.augmentation = augmentation
        self.fg_fraction = float(fg_fraction)
        self.rng = np.random.default_rng(seed)
        self.maps = maps.maps
        self.present = [k for k, m in enumerate(self.maps) if m]
        if not self.present:
            raise InputDataError("The label autoencoder has no label maps to train on (no case in the split).")
        self.classes = [np.array([0, *ids], dtype=np.int64) for ids in domain_label_ids]
        # forced foreground: per domain, per map with foreground, the voxel coordinates of each structure
        self._fg: list[list[tuple[int, list[np.ndarray]]]] = [
            [(i, [np.argwhere(m == c) for c in np.unique(m) if c > 0]) for i, m in enumerate(ms) if m.any()]
            for ms in self.maps]

    def __iter__(self) -> LabelPatchSampler:
        return self

    def __next__(self) -> dict:
        slots = balanced_domain_slots(self.batch_size, self.present, self.rng)
        target = torch.stack([self._sample(k) for k in slots])[:, None].float()
        return {"target": target, "domain": torch.tensor(slots, dtype=torch.long)}

    def _center(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """A map of domain k and the (float) centre of its patch."""
        entries = self._fg[k]
        if entries and self.rng.random() < self.fg_fraction:
            # nnU-Net's forced foreground: a map, one of its structures, one of its voxels
            m_idx, per_class = entries[int(self.rng.integers(len(entries)))]
            coords = per_class[int(self.rng.integers(len(per_class)))]
            return self.maps[k][m_idx], coords[int(self.rng.integers(len(coords)))].astype(np.float64)
        m = self.maps[k][int(self.rng.integers(len(self.maps[k])))]
        return m, np.array([self.rng.uniform(0, s - 1) if s > 1 else 0.0 for s in m.shape])

    def _sample(self, k: int) -> torch.Tensor:
        """One augmented patch ``(X, Y)`` int64 of domain k."""
        m, center = self._center(k)
        mat = self.augmentation.sample_matrix(self.dim, self.rng) if self.augmentation else np.eye(self.dim)
        return resample_patch(m, center, mat, self.patch, self.classes[k])


def resample_patch(label_map: np.ndarray, center: np.ndarray, matrix: np.ndarray, patch: Sequence[int],
                   classes: np.ndarray) -> torch.Tensor:
    """The patch ``p`` with ``p[x] = map[center + matrix @ (x - patch_center)]``, int64 unified ids.

    An axis-aligned ``matrix`` of +-1 entries (no rotation, no scaling) is an integer crop (mirrored);
    anything else resamples the one-hot map of ``classes`` linearly and takes the argmax (nnU-Net's
    label resampling). Outside the map is background."""
    patch = tuple(int(p) for p in patch)
    dim = len(patch)
    half = (np.array(patch) - 1) / 2.0
    if np.allclose(np.abs(matrix), np.eye(dim)):
        lo = np.floor(center - half + 0.5).astype(int)  # half-pixel positions round up
        out = _crop(label_map, lo, patch)
        flips = [a for a in range(dim) if matrix[a, a] < 0]
        return torch.from_numpy(np.ascontiguousarray(np.flip(out, flips) if flips else out).astype(np.int64))
    corners = np.array(np.meshgrid(*[[-h, h] for h in half], indexing="ij")).reshape(dim, -1)
    mapped = center[:, None] + matrix @ corners
    lo = np.floor(mapped.min(1)).astype(int) - 1
    hi = np.ceil(mapped.max(1)).astype(int) + 2
    region = _crop(label_map, lo, tuple(hi - lo))
    lut = np.zeros(int(max(classes.max(), region.max())) + 1, dtype=np.int64)
    lut[classes] = np.arange(len(classes))
    onehot = F.one_hot(torch.from_numpy(lut[region]), len(classes)).movedim(-1, 0)[None].float()
    offsets = np.array(np.meshgrid(*[np.arange(p) - h for p, h in zip(patch, half)], indexing="ij"))
    pos = center.reshape(dim, *(1,) * dim) + np.tensordot(matrix, offsets, axes=1) - lo.reshape(dim, *(1,) * dim)
    size = np.array(region.shape, dtype=np.float64).reshape(dim, *(1,) * dim)
    norm = 2 * pos / np.maximum(size - 1, 1) - 1  # align_corners=True coordinates
    grid = torch.from_numpy(np.stack(list(norm[::-1]), -1)).float()[None]  # (1, *patch, dim), (x, y[, z]) order
    sampled = F.grid_sample(onehot, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    sampled[0] += 1e-4  # ties and the zero padding outside the map go to background
    return torch.from_numpy(classes)[sampled.argmax(0)]


def _crop(a: np.ndarray, lo: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``a[lo : lo + shape]`` with zero padding where the window leaves ``a``."""
    out = np.zeros(tuple(shape), dtype=a.dtype)
    src, dst = [], []
    for ax, (low, n) in enumerate(zip(lo, shape)):
        s0, s1 = max(int(low), 0), min(int(low) + int(n), a.shape[ax])
        if s1 <= s0:
            return out
        src.append(slice(s0, s1))
        dst.append(slice(s0 - int(low), s1 - int(low)))
    out[tuple(dst)] = a[tuple(src)]
    return out
