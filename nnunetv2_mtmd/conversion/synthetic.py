"""Synthetic three-joint MR-like data: ankle, knee and shoulder bones (issue 2, item 5).

Stand-in for the sparse pediatric MR datasets of Boutillon et al. (MICCAI 2021; "Generalizable
multi-task, multi-domain deep segmentation of sparse pediatric imaging datasets ...", 2022): three
domains, each with its own structures, image contrast, noise, bias field and voxel spacing.

* ankle (sagittal, T1-like): calcaneus, talus, tibia
* knee (sagittal, PD-like): femur, fibula, patella, tibia
* shoulder (coronal, T2-like): humerus, scapula

Each case is a 3D volume, numpy array ``(Z, Y, X)`` with Z the through-plane (slice) axis, written
with SimpleITK, so the spacing is given as ``(x, y, z)``. Anatomy is made of smooth shapes
(ellipsoids, smoothly joined and carved) in a normalised frame ``[-1, 1]`` per axis, with random
per-case size, position and rotation. Tissues: air (dark), subcutaneous and intermuscular fat
(bright), muscle (intermediate), tendons and menisci (dark), articular cartilage, bones = dark
cortical rim + textured marrow whose intensity overlaps fat and soft tissue, growth plates (physes)
in long bones. Every voxel is rendered from 2 x 2 x 3 sub-samples (y, x, z) and averaged, so
boundary voxels have intermediate intensity (partial volume); the label of a voxel is the majority
of its sub-samples. Then a smooth multiplicative bias field and Rician noise are applied, and the
image is scaled to the domain's scanner units.

The data are meant to be learnable (shapes, rims and texture are obvious to a human) but not
trivial: :func:`best_threshold_dice` measures the Dice that the best single intensity threshold
reaches for "any bone" per domain; it stays well below 0.8.

Generation is deterministic: case ``i`` of domain ``d`` with seed ``s`` uses the random stream
``numpy.random.default_rng([s, d, i])``, independent of how many cases are written.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter
from tqdm import tqdm

from nnunetv2_mtmd.errors import InputDataError, OutputExistsError, did_you_mean
from nnunetv2_mtmd.io import atomic_output_dir, dataset_id_in_use, save_json

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
#: Sub-samples per voxel along (z, y, x) used for partial-volume rendering.
SUPERSAMPLING = (3, 2, 2)
DEFAULT_IDS = (911, 912, 913)
MIN_SHAPE = (4, 24, 24)

# Tissue classes of the renderer (index into a domain's contrast table).
AIR, FAT, MUSCLE, CORTEX, MARROW, PHYSIS, CARTILAGE, TENDON = range(8)
TISSUES = ("air", "fat", "muscle", "cortex", "marrow", "physis", "cartilage", "tendon")


# ----------------------------------------------------------------------------------------------
# Shapes
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid in the normalised frame: centre and radii as ``(z, y, x)``, rotated in-plane
    (about the z axis) by ``angle`` radians (positive turns +x towards +y)."""

    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    angle: float = 0.0

    def sdf_block(
        self, w: np.ndarray, v: np.ndarray, u: np.ndarray, margin: float
    ) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
        """Approximate signed distance (negative inside) on the smallest array block outside which
        every point is farther than ``margin`` from the ellipsoid (the ellipsoid's box grown by
        ``margin``, in its own frame). Uses Quilez's ellipsoid bound ``k0 (k0 - 1) / k1`` with
        ``k0 = |p / r|``, ``k1 = |p / r^2|``, accurate near the surface.

        ``w`` has shape ``(Z, 1, 1)``, ``v`` and ``u`` ``(1, Y, X)``. Returns ``(slices, values)``
        with ``values`` of the block's shape, or None when the block is empty."""
        cz, cy, cx = self.center
        rz, ry, rx = self.radii
        c, s = math.cos(self.angle), math.sin(self.angle)
        dz = w[:, 0, 0] - cz
        zi = np.nonzero(np.abs(dz) <= rz + margin)[0]
        dv, du = v[0] - cy, u[0] - cx
        lx = c * du + s * dv
        ly = -s * du + c * dv
        near = (np.abs(lx) <= rx + margin) & (np.abs(ly) <= ry + margin)
        if zi.size == 0 or not near.any():
            return None
        rows = np.nonzero(near.any(axis=1))[0]
        cols = np.nonzero(near.any(axis=0))[0]
        ys, xs = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
        zs = slice(zi[0], zi[-1] + 1)
        lx, ly, dz = lx[ys, xs][None], ly[ys, xs][None], dz[zs][:, None, None]
        k0 = np.sqrt((dz / rz) ** 2 + ((ly / ry) ** 2 + (lx / rx) ** 2))
        k1 = np.sqrt((dz / rz**2) ** 2 + ((ly / ry**2) ** 2 + (lx / rx**2) ** 2))
        # k0 / k1 lies in [min r, max r]; clipping also fixes the centre, where both vanish
        ratio = np.clip(k0 / np.maximum(k1, 1e-12), min(self.radii), max(self.radii))
        return (zs, ys, xs), (k0 - 1.0) * ratio

    def sdf(self, w: np.ndarray, v: np.ndarray, u: np.ndarray, margin: float = 0.3) -> np.ndarray:
        """Signed distance on the whole grid ``(Z, Y, X)``, clamped: ``margin`` wherever the point is
        known to be farther than ``margin`` (see :meth:`sdf_block`)."""
        out = np.full((w.shape[0], v.shape[1], u.shape[2]), margin, dtype=np.float32)
        blk = self.sdf_block(w, v, u, margin)
        if blk is not None:
            out[blk[0]] = np.minimum(blk[1], margin)
        return out


def smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum (smooth union of two signed distance functions), blend width ``k``."""
    if k <= 0:
        return np.minimum(a, b)
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


@dataclass(frozen=True)
class Part:
    """One primitive of a structure: added (smooth union) or carved out (``subtract=True``)."""

    shape: Ellipsoid
    subtract: bool = False


def union_sdf(
    parts: Sequence[Part], w: np.ndarray, v: np.ndarray, u: np.ndarray, k: float, margin: float = 0.3
) -> np.ndarray:
    """Signed distance ``(Z, Y, X)`` of the smooth union (blend ``k``) of the added parts minus the
    carved parts, clamped at ``margin`` (values >= ``margin`` mean "far"); ``margin`` > ``k``."""
    d = np.full((w.shape[0], v.shape[1], u.shape[2]), margin, dtype=np.float32)
    for p in sorted(parts, key=lambda p: p.subtract):
        blk = p.shape.sdf_block(w, v, u, margin)
        if blk is None:
            continue
        sl, val = blk
        d[sl] = np.maximum(d[sl], -val) if p.subtract else np.minimum(smooth_min(d[sl], val, k), margin)
    return d


@dataclass(frozen=True)
class Physis:
    """Growth plate of a long bone: a wavy band across ``bone`` through ``center`` ``(y, x)``,
    direction ``angle`` (0 = along x), thickness, wave amplitude and wavelength (normalised units)."""

    bone: str
    center: tuple[float, float]
    angle: float = 0.0
    thickness: float = 0.035
    amplitude: float = 0.015
    wavelength: float = 0.25

    def mask(self, v: np.ndarray, u: np.ndarray) -> np.ndarray:
        """In-plane band mask, shape of ``v``/``u`` broadcast (``(1, Y, X)``)."""
        cy, cx = self.center
        c, s = math.cos(self.angle), math.sin(self.angle)
        along = (u - cx) * c + (v - cy) * s
        across = -(u - cx) * s + (v - cy) * c
        wave = self.amplitude * np.sin(2 * np.pi * along / self.wavelength)
        return np.abs(across - wave) < self.thickness / 2


@dataclass
class Anatomy:
    """Everything the renderer needs for one case, in the normalised frame ``(z, y, x)``."""

    bones: dict[str, list[Part]]
    body: list[Part]
    fat_thickness: float
    cortex: float
    fat_pads: list[Ellipsoid] = field(default_factory=list)
    tendons: list[Ellipsoid] = field(default_factory=list)
    joints: list[tuple[str, str]] = field(default_factory=list)
    physes: list[Physis] = field(default_factory=list)
    cartilage: float = 0.045


def _j(rng: np.random.Generator, scale: float) -> float:
    """A random jitter, uniform in ``[-scale, scale]``."""
    return float(rng.uniform(-scale, scale))


def _e(
    rng: np.random.Generator, c, r, a: float = 0.0, pos: float = 0.02, size: float = 0.08, rot: float = 0.0
) -> Ellipsoid:
    """An ellipsoid with random jitter: centre +-``pos``, radii x (1 +- ``size``), angle +-``rot``."""
    return Ellipsoid(
        tuple(float(ci) + _j(rng, pos) for ci in c),
        tuple(float(ri) * (1.0 + _j(rng, size)) for ri in r),
        a + _j(rng, rot),
    )


def _rotated(parts: list[Part], pivot: tuple[float, float], angle: float) -> list[Part]:
    """Rotate parts in-plane about ``pivot`` ``(y, x)`` by ``angle`` (e.g. joint flexion)."""
    c, s = math.cos(angle), math.sin(angle)
    out = []
    for p in parts:
        z, y, x = p.shape.center
        dy, dx = y - pivot[0], x - pivot[1]
        nx, ny = c * dx - s * dy, s * dx + c * dy
        e = Ellipsoid((z, pivot[0] + ny, pivot[1] + nx), p.shape.radii, p.shape.angle + angle)
        out.append(Part(e, p.subtract))
    return out


# ----------------------------------------------------------------------------------------------
# Anatomy of the three joints (x: anterior -> posterior for ankle/knee, medial -> lateral for the
# shoulder; y: superior -> inferior; z: through-plane)
# ----------------------------------------------------------------------------------------------
def _ankle(rng: np.random.Generator) -> Anatomy:
    """Sagittal ankle: tibia above the talus, calcaneus below and posterior, Achilles tendon and
    Kager's fat pad behind, foot extending anteriorly, medial malleolus in medial slices."""
    g = 0.03 + _j(rng, 0.01)  # joint gap
    tibia = [
        Part(_e(rng, (0, -1.35, 0.06), (0.7, 0.95, 0.23))),
        Part(_e(rng, (0, -0.34, 0.04), (0.95, 0.2, 0.32))),
        Part(_e(rng, (-0.75, -0.12, 0.0), (0.25, 0.14, 0.13))),  # medial malleolus
    ]
    ty = -0.14 + g + 0.15
    talus = [
        Part(_e(rng, (0, ty, 0.04), (0.9, 0.15, 0.29))),
        Part(_e(rng, (0, ty + 0.06, -0.33), (0.65, 0.12, 0.19), 0.35, rot=0.1)),  # neck and head
    ]
    cy = ty + 0.15 + g + 0.19
    calcaneus = [
        Part(_e(rng, (0, cy, 0.18), (0.75, 0.19, 0.42), -0.12, rot=0.08)),
        Part(_e(rng, (0, cy + 0.04, 0.5), (0.65, 0.2, 0.16))),  # tuber
        Part(_e(rng, (0, cy + 0.02, -0.27), (0.55, 0.13, 0.18), -0.15)),  # anterior process
    ]
    body = [
        Part(_e(rng, (0, -0.9, 0.1), (1.8, 1.35, 0.58))),
        Part(_e(rng, (0, 0.42, -0.45), (1.8, 0.36, 1.15), pos=0.03)),
        Part(_e(rng, (0, 0.36, 0.3), (1.8, 0.38, 0.48))),
    ]
    tendons = [
        _e(rng, (0, -0.55, 0.58), (0.35, 0.85, 0.045)),  # Achilles
        _e(rng, (0, 0.7, -0.15), (0.8, 0.025, 0.5)),  # plantar fascia
        _e(rng, (-0.45, -0.4, 0.33), (0.12, 0.5, 0.04)),  # flexor tendon
        _e(rng, (0.3, -0.5, -0.33), (0.12, 0.5, 0.035)),  # extensor tendon
    ]
    fat_pads = [
        _e(rng, (0, -0.35, 0.4), (0.6, 0.3, 0.12)),  # Kager
        _e(rng, (0, 0.66, 0.3), (1.2, 0.1, 0.3)),  # heel pad
        _e(rng, (0, -0.05, -0.4), (0.6, 0.12, 0.09)),  # anterior fat
    ]
    physes = [Physis("tibia", (-0.42 + _j(rng, 0.03), 0.05), _j(rng, 0.1))]
    return Anatomy(
        bones={"calcaneus": calcaneus, "talus": talus, "tibia": tibia},
        body=body,
        fat_thickness=0.065 + _j(rng, 0.015),
        cortex=0.055 + _j(rng, 0.008),
        fat_pads=fat_pads,
        tendons=tendons,
        joints=[("tibia", "talus"), ("talus", "calcaneus")],
        physes=physes,
    )


def _knee(rng: np.random.Generator) -> Anatomy:
    """Sagittal knee: femur above, tibia below, patella anterior with its tendons and Hoffa's fat
    pad, fibular head lateral-posterior beside the tibia (lateral slices only), menisci."""
    j = 0.1 + _j(rng, 0.05)  # joint line
    g = 0.035 + _j(rng, 0.01)
    femur = [
        Part(_e(rng, (0, j - 1.35, 0.08), (0.4, 0.95, 0.24))),
        Part(_e(rng, (0, j - g / 2 - 0.29, 0.08), (1.0, 0.29, 0.4))),  # condyles
        Part(_e(rng, (0, j - 0.55, 0.07), (0.8, 0.22, 0.33))),  # metaphysis
        Part(_e(rng, (0, j - 0.1, 0.27), (0.22, 0.17, 0.22)), subtract=True),  # intercondylar notch
    ]
    tibia = [
        Part(_e(rng, (0, j + g / 2 + 0.12, 0.06), (1.0, 0.12, 0.42))),  # plateau
        Part(_e(rng, (0, j + g / 2 + 0.3, 0.07), (0.8, 0.26, 0.34))),  # metaphysis
        Part(_e(rng, (0, j + 1.4, 0.1), (0.38, 1.0, 0.22))),
        Part(_e(rng, (0, j + 0.45, -0.22), (0.3, 0.13, 0.11))),  # tuberosity
    ]
    flex = _j(rng, 0.12)
    tibia = _rotated(tibia, (j, 0.08), flex)
    fz = 0.7 + _j(rng, 0.05)
    fibula = _rotated(
        [
            Part(_e(rng, (fz, j + 0.52, 0.38), (0.4, 0.19, 0.19))),  # head: about a third of the plateau
            Part(_e(rng, (fz, j + 1.4, 0.4), (0.15, 0.9, 0.07))),
        ],
        (j, 0.08),
        flex,
    )
    # about a third of the condyles' depth thick, as in a child's knee (thinner, it is learned late)
    patella = [Part(_e(rng, (0, j - 0.45, -0.47), (0.6, 0.25, 0.14), -0.25, rot=0.1))]
    body = [Part(_e(rng, (0, 0.0, 0.02), (1.8, 3.0, 0.8), pos=0.04))]
    tendons = [
        _e(rng, (0, j + 0.1, -0.41), (0.45, 0.36, 0.035), -0.17),  # patellar tendon
        _e(rng, (0, j - 0.98, -0.39), (0.5, 0.34, 0.04), 0.26),  # quadriceps tendon
        _e(rng, (0, j, -0.26), (0.9, 0.03, 0.08)),  # anterior meniscus horn
        _e(rng, (0, j, 0.42), (0.9, 0.03, 0.08)),  # posterior meniscus horn
    ]
    fat_pads = [
        _e(rng, (0, j + 0.03, -0.34), (0.6, 0.15, 0.09)),  # Hoffa
        _e(rng, (0, j - 0.25, 0.58), (0.9, 0.35, 0.12)),  # popliteal fat
        _e(rng, (0, j - 0.8, -0.32), (0.6, 0.22, 0.07)),  # suprapatellar fat
    ]
    physes = [
        Physis("femur", (j - 0.36 + _j(rng, 0.03), 0.08), _j(rng, 0.1)),
        Physis("tibia", (j + 0.3 + _j(rng, 0.03), 0.08), flex + _j(rng, 0.1)),
    ]
    return Anatomy(
        bones={"femur": femur, "fibula": fibula, "patella": patella, "tibia": tibia},
        body=body,
        fat_thickness=0.08 + _j(rng, 0.02),
        cortex=0.05 + _j(rng, 0.008),
        fat_pads=fat_pads,
        tendons=tendons,
        joints=[("femur", "tibia"), ("femur", "patella")],
        physes=physes,
    )


def _shoulder(rng: np.random.Generator) -> Anatomy:
    """Coronal shoulder: humeral head lateral to the glenoid of the scapula, acromion above the
    head with the supraspinatus tendon between, scapular neck and blade medially, coracoid in
    anterior slices; torso medially, arm and deltoid laterally, air in the upper lateral corner."""
    g = 0.04 + _j(rng, 0.01)
    hx = 0.38 + _j(rng, 0.04)
    humerus = [
        Part(_e(rng, (0, -0.05, hx), (0.95, 0.32, 0.3))),  # head
        Part(_e(rng, (0, 1.0, hx + 0.1), (0.55, 1.05, 0.19), _j(rng, 0.05))),  # neck and shaft
        Part(_e(rng, (0, -0.12, hx + 0.27), (0.6, 0.18, 0.1))),  # greater tuberosity
    ]
    gx = hx - 0.3 - g - 0.1
    scapula = [
        Part(_e(rng, (0, -0.03, gx), (0.75, 0.26, 0.1))),  # glenoid
        Part(_e(rng, (0, 0.1, gx - 0.22), (0.55, 0.16, 0.18))),  # neck
        Part(_e(rng, (0.1, 0.5, gx - 0.65), (0.5, 0.62, 0.1), 0.55, rot=0.1)),  # blade
        Part(_e(rng, (0.4, -0.55, hx - 0.05), (0.5, 0.075, 0.36), -0.1, rot=0.05)),  # acromion
        Part(_e(rng, (-0.6, -0.32, gx - 0.1), (0.3, 0.08, 0.17))),  # coracoid
    ]
    body = [
        Part(_e(rng, (0, 0.55, -1.3), (1.8, 1.7, 1.15), pos=0.04)),  # torso
        Part(_e(rng, (0, 0.95, hx + 0.05), (1.8, 1.2, 0.5))),  # arm
        Part(_e(rng, (0, -0.08, hx - 0.05), (1.8, 0.6, 0.6))),  # deltoid
    ]
    tendons = [
        _e(rng, (0.1, -0.43, hx - 0.02), (0.6, 0.04, 0.28), -0.1),  # supraspinatus
        _e(rng, (-0.5, 0.3, hx - 0.2), (0.25, 0.45, 0.035)),  # biceps long head
    ]
    fat_pads = [
        _e(rng, (0, -0.47, hx + 0.27), (0.8, 0.04, 0.2), 0.3),  # subdeltoid fat
        _e(rng, (0, 0.45, -0.1), (0.7, 0.25, 0.1)),  # axillary fat
    ]
    physes = [Physis("humerus", (0.12 + _j(rng, 0.03), hx + 0.05), -0.35 + _j(rng, 0.1), amplitude=0.02)]
    return Anatomy(
        bones={"humerus": humerus, "scapula": scapula},
        body=body,
        fat_thickness=0.07 + _j(rng, 0.02),
        cortex=0.05 + _j(rng, 0.008),
        fat_pads=fat_pads,
        tendons=tendons,
        joints=[("humerus", "scapula")],
        physes=physes,
    )


# ----------------------------------------------------------------------------------------------
# Domains
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SynthDomain:
    """One synthetic domain: labels (in label-id order), geometry and MR appearance.

    ``contrast`` holds the mean relative intensity of each tissue in :data:`TISSUES` order;
    ``scale`` converts to scanner units; ``noise`` is the Rician noise sigma relative to fat;
    ``bias`` the peak log-amplitude of the multiplicative bias field; ``spacing`` is ``(x, y, z)``
    in mm and ``default_shape`` ``(Z, Y, X)`` voxels."""

    name: str
    dataset_name: str
    labels: tuple[str, ...]
    plane: str
    weighting: str
    spacing: tuple[float, float, float]
    default_shape: tuple[int, int, int]
    contrast: tuple[float, ...]
    scale: float
    noise: float
    bias: float
    builder: Callable[[np.random.Generator], Anatomy]

    def label_ids(self) -> dict[str, int]:
        """nnU-Net ``labels`` entry: background 0, then the structures in declared order."""
        return {"background": 0, **{n: i + 1 for i, n in enumerate(self.labels)}}


#                    air    fat   muscle cortex marrow physis cartil tendon
_T1 = (0.0, 1.0, 0.36, 0.07, 0.78, 0.42, 0.5, 0.06)
_PD = (0.0, 0.82, 0.45, 0.09, 0.66, 0.72, 0.7, 0.07)
_T2 = (0.0, 0.7, 0.24, 0.05, 0.5, 0.75, 0.85, 0.05)

DOMAINS: tuple[SynthDomain, ...] = (
    SynthDomain(
        "ankle",
        "SynthAnkle",
        ("calcaneus", "talus", "tibia"),
        "sagittal",
        "T1-weighted",
        (0.8, 0.8, 3.0),
        (14, 64, 64),
        _T1,
        1000.0,
        0.05,
        0.25,
        _ankle,
    ),
    SynthDomain(
        "knee",
        "SynthKnee",
        ("femur", "fibula", "patella", "tibia"),
        "sagittal",
        "PD-weighted",
        (0.7, 0.7, 3.5),
        (16, 64, 64),
        _PD,
        350.0,
        0.07,
        0.35,
        _knee,
    ),
    SynthDomain(
        "shoulder",
        "SynthShoulder",
        ("humerus", "scapula"),
        "coronal",
        "T2-weighted",
        (0.9, 0.9, 4.0),
        (12, 64, 64),
        _T2,
        2200.0,
        0.09,
        0.45,
        _shoulder,
    ),
)


def get_domain(domain: SynthDomain | str) -> SynthDomain:
    """Return a :class:`SynthDomain` given itself or its name."""
    if isinstance(domain, SynthDomain):
        return domain
    for d in DOMAINS:
        if d.name == domain:
            return d
    names = [d.name for d in DOMAINS]
    raise InputDataError(f"Unknown synthetic domain {domain!r}." + did_you_mean(str(domain), names))


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------
def _axis(n: int, f: int) -> np.ndarray:
    """Sub-sample positions of ``n`` voxels x ``f`` sub-samples over ``[-1, 1]``, voxel-major."""
    i = np.arange(n)[:, None]
    j = np.arange(f)[None, :]
    return (-1.0 + (2.0 * i + (2.0 * j + 1.0) / f) / n).reshape(-1)


def _grf(rng: np.random.Generator, shape: tuple[int, ...], sigma: Sequence[float]) -> np.ndarray:
    """Smooth Gaussian random field with zero mean and unit standard deviation."""
    f = gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (f - f.mean()) / max(float(f.std()), 1e-8)


def _subsamples_first(a: np.ndarray, shape: tuple[int, int, int], f: tuple[int, int, int]) -> np.ndarray:
    """Regroup a super-sampled array ``(Z*fz, Y*fy, X*fx)`` as ``(fz*fy*fx, Z, Y, X)``: sub-samples first."""
    z, y, x = shape
    b = a.reshape(z, f[0], y, f[1], x, f[2]).transpose(1, 3, 5, 0, 2, 4)
    return np.ascontiguousarray(b).reshape(f[0] * f[1] * f[2], z, y, x)


def _validate_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    try:
        shp = tuple(int(s) for s in shape)
    except (TypeError, ValueError) as e:
        raise InputDataError(f"shape must be three integers (Z, Y, X), found {shape!r}.") from e
    if len(shp) != 3 or any(s < m for s, m in zip(shp, MIN_SHAPE)) or any(s > 1024 for s in shp):
        raise InputDataError(
            f"shape must be three integers (Z, Y, X) with Z >= {MIN_SHAPE[0]}, Y, X >= {MIN_SHAPE[1]} and "
            f"all <= 1024, found {shape!r}. Example: --shape 14 64 64."
        )
    return shp  # type: ignore[return-value]


def _render(
    anat: Anatomy, dom: SynthDomain, rng: np.random.Generator, shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Render one case: returns (image ``(Z, Y, X)`` float32 in scanner units, label ``(Z, Y, X)`` uint8)."""
    Z, Y, X = shape
    f = SUPERSAMPLING
    # global pose of the joint (scale, in-plane rotation, translation): move the grid inversely
    s = 1.0 + _j(rng, 0.07)
    th = _j(rng, math.radians(8))
    ty, tx, tz = _j(rng, 0.06), _j(rng, 0.06), _j(rng, 0.05)
    w = ((_axis(Z, f[0]) - tz) / s)[:, None, None]
    v0 = _axis(Y, f[1])[None, :, None] - ty
    u0 = _axis(X, f[2])[None, None, :] - tx
    c, sn = math.cos(th), math.sin(th)
    u = (c * u0 + sn * v0) / s
    v = (-sn * u0 + c * v0) / s
    w, v, u = (a.astype(np.float32) for a in (w, v, u))

    names = list(dom.labels)
    sdfs = [union_sdf(anat.bones[n], w, v, u, k=0.08) for n in names]
    dmin = sdfs[0].copy()
    bone = (dmin < 0).astype(np.uint8)
    for i in range(1, len(sdfs)):
        closer = (sdfs[i] < dmin) & (sdfs[i] < 0)  # overlaps go to the structure we are deeper in
        bone[closer] = i + 1
        np.minimum(dmin, sdfs[i], out=dmin)

    body = union_sdf(anat.body, w, v, u, k=0.15)
    tissue = np.where(body < -anat.fat_thickness, np.uint8(MUSCLE), np.uint8(FAT))
    tissue[body >= 0] = AIR
    for t, shapes in ((FAT, anat.fat_pads), (TENDON, anat.tendons)):
        for e in shapes:
            blk = e.sdf_block(w, v, u, 0.0)
            if blk is not None:
                sub = tissue[blk[0]]
                sub[(blk[1] < 0) & (sub != AIR)] = t
    idx = {n: i for i, n in enumerate(names)}
    for a, b in anat.joints:
        near = sdfs[idx[a]] < anat.cartilage
        near &= sdfs[idx[b]] < anat.cartilage
        tissue[near] = CARTILAGE
    isbone = bone > 0
    tissue[isbone] = CORTEX
    marrow = dmin < -anat.cortex
    tissue[marrow] = MARROW
    for p in anat.physes:
        zs = np.nonzero((bone == idx[p.bone] + 1).any(axis=(1, 2)))[0]
        if zs.size:
            sl = slice(zs[0], zs[-1] + 1)
            sub = tissue[sl]
            sub[marrow[sl] & (bone[sl] == idx[p.bone] + 1) & p.mask(v, u)] = PHYSIS

    # partial volume: fraction of each tissue / structure among each voxel's sub-samples
    nsub = f[0] * f[1] * f[2]
    sub_t = _subsamples_first(tissue, shape, f)
    frac = {t: (sub_t == t).sum(axis=0, dtype=np.uint8) / nsub for t in range(len(TISSUES))}
    sub_b = _subsamples_first(bone, shape, f)
    counts = np.stack([(sub_b == k).sum(axis=0, dtype=np.uint8) for k in range(len(names) + 1)])
    label = counts.argmax(axis=0).astype(np.uint8)  # majority of sub-samples; ties -> lower id

    # textures (base resolution; through-plane correlation is weak because slices are thick)
    sig_hi = (0.3, 0.8, 0.8)
    sig_lo = (0.8, 4.0, 4.0)
    hi, lo, hi2, lo2 = (_grf(rng, shape, sg) for sg in (sig_hi, sig_lo, sig_hi, sig_lo))
    septa = np.exp(-((_grf(rng, shape, (0.6, 4.0, 1.5)) / 0.15) ** 2))  # zero-crossings -> thin lines
    ctr = np.array(dom.contrast, dtype=np.float64) * (1.0 + rng.uniform(-0.06, 0.06, len(TISSUES)))
    tex = {
        AIR: 1.0,
        FAT: 1.0 + 0.05 * lo + 0.03 * hi,
        MUSCLE: 1.0 + 0.08 * lo2 + 0.06 * hi,
        CORTEX: 1.0 + 0.2 * hi2,
        MARROW: 1.0 + 0.16 * lo2 + 0.14 * hi2,
        PHYSIS: 1.0 + 0.08 * hi,
        CARTILAGE: 1.0 + 0.06 * hi,
        TENDON: 1.0 + 0.2 * hi,
    }
    img = np.zeros(shape, dtype=np.float64)
    for t in range(len(TISSUES)):
        img += frac[t] * ctr[t] * tex[t]
    # intermuscular fat septa replace part of the muscle
    img += frac[MUSCLE] * septa * 0.8 * (ctr[FAT] * tex[FAT] - ctr[MUSCLE] * tex[MUSCLE])

    # smooth multiplicative bias field: random quadratic polynomial in (z, y, x)
    zz, yy, xx = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    terms = [zz, yy, xx, yy * xx, yy**2, xx**2, zz * yy, zz * xx]
    poly = sum(rng.normal() * t for t in terms)
    poly = poly / max(float(np.abs(poly).max()), 1e-8)
    img *= np.exp(dom.bias * poly)

    # Rician noise: magnitude of a complex signal with Gaussian noise in both channels
    sigma = dom.noise * ctr[FAT]
    n1 = rng.standard_normal(shape)
    n2 = rng.standard_normal(shape)
    img = np.sqrt((img + sigma * n1) ** 2 + (sigma * n2) ** 2)
    img *= dom.scale * (1.0 + _j(rng, 0.1))
    return img.astype(np.float32), label


def generate_case(
    domain: SynthDomain | str,
    rng: np.random.Generator,
    shape: Sequence[int] | None = None,
    max_tries: int = 8,
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Generate one case of ``domain``.

    Returns ``(image, label, spacing)``: image ``(Z, Y, X)`` float32 (scanner units), label
    ``(Z, Y, X)`` uint8 with ids as in ``domain.label_ids()`` and every structure present, spacing
    ``(x, y, z)`` in mm (SimpleITK order). A draw in which a structure falls outside the volume
    (possible only with very few slices) is redrawn from the same stream, so results stay
    deterministic; after ``max_tries`` draws :class:`InputDataError` is raised."""
    dom = get_domain(domain)
    shp = _validate_shape(dom.default_shape if shape is None else shape)
    for _ in range(max_tries):
        anat = dom.builder(rng)
        img, lab = _render(anat, dom, rng, shp)
        present = np.bincount(lab.reshape(-1), minlength=len(dom.labels) + 1)[1:] > 0
        if present.all():
            return img, lab, dom.spacing
    missing = [n for n, p in zip(dom.labels, present) if not p]
    raise InputDataError(
        f"Synthetic {dom.name}: structures {missing} fell outside a volume of shape {shp} in {max_tries} "
        "draws. Use more slices or a larger in-plane size (e.g. --shape 12 64 64)."
    )


# ----------------------------------------------------------------------------------------------
# Threshold baseline
# ----------------------------------------------------------------------------------------------
def best_threshold(
    images: np.ndarray | Sequence[np.ndarray],
    labels: np.ndarray | Sequence[np.ndarray],
    normalize: bool = False,
) -> tuple[float, float, str]:
    """Best single-threshold segmentation of "any structure" (label > 0) vs background.

    All voxels of all cases are pooled; the prediction is ``image > t`` or ``image < t``; every
    threshold between two distinct intensities is tried. With ``normalize`` each case is z-scored
    first (as nnU-Net does for MRI). Returns ``(dice, threshold, direction)``, direction ``'>'`` or
    ``'<'``. Arrays of any (matching) shape, e.g. ``(Z, Y, X)``."""
    if isinstance(images, np.ndarray):
        images = [images]
    if isinstance(labels, np.ndarray):
        labels = [labels]
    if len(images) != len(labels) or not images:
        raise InputDataError(
            f"best_threshold: need equally many images and labels (>0), found "
            f"{len(images)} and {len(labels)}."
        )
    vals, fgs = [], []
    for i, (im, lb) in enumerate(zip(images, labels)):
        im, lb = np.asarray(im, dtype=np.float64), np.asarray(lb)
        if im.shape != lb.shape:
            raise InputDataError(
                f"best_threshold: case {i}: image shape {im.shape} differs from label shape {lb.shape}."
            )
        if normalize:
            im = (im - im.mean()) / max(float(im.std()), 1e-8)
        vals.append(im.reshape(-1))
        fgs.append(lb.reshape(-1) > 0)
    val = np.concatenate(vals)
    fg = np.concatenate(fgs)
    n_fg = int(fg.sum())
    if n_fg == 0:
        raise InputDataError("best_threshold: the labels contain no foreground; Dice is undefined.")
    order = np.argsort(val, kind="stable")
    sv, sf = val[order], fg[order]
    # Candidate predictions are "the k smallest" / "the n-k largest", only where sv[k-1] < sv[k].
    n = sv.size
    cum = np.concatenate([[0], np.cumsum(sf)])  # foreground among the k smallest, k = 0..n
    ks = np.concatenate([[0], np.nonzero(sv[1:] > sv[:-1])[0] + 1, [n]])
    k = ks.astype(np.float64)
    tp_low = cum[ks]
    dice_low = 2 * tp_low / (k + n_fg)  # predict the k smallest
    dice_high = 2 * (n_fg - tp_low) / ((n - k) + n_fg)  # predict the n-k largest
    il, ih = int(np.argmax(dice_low)), int(np.argmax(dice_high))

    def thr(i: int) -> float:
        kk = ks[i]
        if kk == 0:
            return float(sv[0]) - 1.0
        if kk == n:
            return float(sv[-1]) + 1.0
        return float(0.5 * (sv[kk - 1] + sv[kk]))

    if dice_high[ih] >= dice_low[il]:
        return float(dice_high[ih]), thr(ih), ">"
    return float(dice_low[il]), thr(il), "<"


def best_threshold_dice(
    images: np.ndarray | Sequence[np.ndarray],
    labels: np.ndarray | Sequence[np.ndarray],
    normalize: bool = False,
) -> float:
    """Dice of the best single intensity threshold (either direction) for foreground = any label > 0
    vs background, pooled over all cases; see :func:`best_threshold`."""
    return best_threshold(images, labels, normalize=normalize)[0]


# ----------------------------------------------------------------------------------------------
# Writing nnU-Net raw datasets
# ----------------------------------------------------------------------------------------------
def _write(arr: np.ndarray, spacing: tuple[float, float, float], path: Path) -> None:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(tuple(float(s) for s in spacing))
    sitk.WriteImage(img, str(path), True)


def _dataset_json(
    dom: SynthDomain, cases: int, test_cases: int, seed: int, shape: tuple[int, int, int]
) -> dict[str, Any]:
    return {
        "channel_names": {"0": "MRI"},
        "labels": dom.label_ids(),
        "numTraining": cases,
        "file_ending": ".nii.gz",
        "name": dom.dataset_name,
        "description": (
            f"Synthetic {dom.weighting} {dom.plane} MR-like {dom.name} volumes with bone labels "
            f"({', '.join(dom.labels)}), written by nnunetv2_mtmd.conversion.synthetic (seed {seed}). "
            "Not real anatomy; for tests and demos of multi-domain segmentation."
        ),
        "reference": "nnunetv2-mtmd synthetic generator (after the joints of Boutillon et al. 2021/2022)",
        "licence": "CC0",
        "synthetic": {
            "generator_version": GENERATOR_VERSION,
            "seed": seed,
            "domain": dom.name,
            "shape_zyx": list(shape),
            "spacing_xyz": list(dom.spacing),
            "numTest": test_cases,
        },
    }


def write_synthetic_datasets(
    out_dir: str | Path,
    cases: int = 10,
    test_cases: int = 0,
    seed: int = 0,
    shape: Sequence[int] | None = None,
    ids: Sequence[int] = DEFAULT_IDS,
    overwrite: bool = False,
) -> list[Path]:
    """Write the three synthetic raw datasets ``Dataset<id>_Synth{Ankle,Knee,Shoulder}`` into ``out_dir``.

    Each holds ``imagesTr/caseNNN_0000.nii.gz`` (float32), ``labelsTr/caseNNN.nii.gz`` (uint8) and
    dataset.json; with ``test_cases > 0`` also ``imagesTs/`` and ``labelsTs/`` (ground truth of the
    test cases, ignored by nnU-Net). ``shape`` ``(Z, Y, X)`` overrides every domain's default shape.
    Each dataset is written all-or-nothing; existing folders are refused unless ``overwrite``.
    Returns the dataset folders in domain order."""
    out_dir = Path(out_dir)
    if not isinstance(cases, (int, np.integer)) or isinstance(cases, bool) or cases < 1:
        raise InputDataError(f"cases must be an integer >= 1, found {cases!r}.")
    if not isinstance(test_cases, (int, np.integer)) or isinstance(test_cases, bool) or test_cases < 0:
        raise InputDataError(f"test_cases must be an integer >= 0, found {test_cases!r}.")
    if cases + test_cases > 1000:
        raise InputDataError(
            f"cases + test_cases must be <= 1000 (case ids case000..case999), found {cases + test_cases}."
        )
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise InputDataError(f"seed must be a non-negative integer, found {seed!r}.")
    cases, test_cases, seed = int(cases), int(test_cases), int(seed)
    try:
        ids = [int(i) for i in ids]
    except (TypeError, ValueError) as e:
        raise InputDataError(f"ids must be {len(DOMAINS)} integers, found {ids!r}.") from e
    if len(ids) != len(DOMAINS) or len(set(ids)) != len(ids) or any(not 1 <= i <= 999 for i in ids):
        raise InputDataError(
            f"ids must be {len(DOMAINS)} distinct dataset ids in 1..999 (one per domain: "
            f"{', '.join(d.name for d in DOMAINS)}), found {ids}."
        )
    shp = None if shape is None else _validate_shape(shape)

    targets = [out_dir / f"Dataset{i:03d}_{d.dataset_name}" for i, d in zip(ids, DOMAINS)]
    for i, t in zip(ids, targets):  # check everything before writing anything
        others = [p for p in dataset_id_in_use(i, [out_dir]) if p.name != t.name]
        if others:
            raise OutputExistsError(
                f"Dataset id {i} is already used by {others[0]} in {out_dir}; nnU-Net needs unique ids. "
                "Choose other ids with --ids or remove that folder."
            )
        if t.exists() and not overwrite:
            raise OutputExistsError(f"Output folder {t} already exists. Remove it or pass --overwrite.")

    written = []
    for di, (dom, target) in enumerate(zip(DOMAINS, targets)):
        dshape = shp or dom.default_shape
        with atomic_output_dir(target, overwrite=overwrite) as tmp:
            for sub in ("imagesTr", "labelsTr") + (("imagesTs", "labelsTs") if test_cases else ()):
                (tmp / sub).mkdir()
            for ci in tqdm(range(cases + test_cases), desc=f"synthetic {dom.name}", unit="case"):
                rng = np.random.default_rng([seed, di, ci])
                img, lab, spacing = generate_case(dom, rng, dshape)
                split = "Tr" if ci < cases else "Ts"
                case = f"case{ci:03d}"
                _write(img, spacing, tmp / f"images{split}" / f"{case}_0000.nii.gz")
                _write(lab, spacing, tmp / f"labels{split}" / f"{case}.nii.gz")
            save_json(_dataset_json(dom, cases, test_cases, seed, dshape), tmp / "dataset.json")
        logger.info(
            "wrote %s (%d training, %d test cases, shape %s, spacing %s)",
            target,
            cases,
            test_cases,
            dshape,
            dom.spacing,
        )
        written.append(target)
    return written


def threshold_report(datasets: Sequence[str | Path]) -> dict[str, dict[str, float | str]]:
    """Best-threshold Dice of written raw datasets (training cases), raw and per-case z-scored."""
    out = {}
    for ds in datasets:
        ds = Path(ds)
        with open(ds / "dataset.json") as f:
            ending = json.load(f)["file_ending"]
        imgs, labs = [], []
        for lp in sorted((ds / "labelsTr").glob(f"*{ending}")):
            case = lp.name[: -len(ending)]
            imgs.append(sitk.GetArrayFromImage(sitk.ReadImage(str(ds / "imagesTr" / f"{case}_0000{ending}"))))
            labs.append(sitk.GetArrayFromImage(sitk.ReadImage(str(lp))))
        d, t, direction = best_threshold(imgs, labs)
        out[ds.name] = {
            "dice": d,
            "threshold": t,
            "direction": direction,
            "dice_zscored": best_threshold_dice(imgs, labs, normalize=True),
        }
    return out
