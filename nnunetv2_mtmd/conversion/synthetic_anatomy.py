"""Anatomy of the synthetic three-joint data (part of :mod:`nnunetv2_mtmd.conversion.synthetic`).

The shapes (ellipsoids with an approximate signed distance, smoothly joined and carved parts, growth
plates) and, built from them with random per-case jitter, the bones, body outline, fat pads and
tendons of the ankle, knee and shoulder, all in the normalised frame ``[-1, 1]`` per axis ``(z, y,
x)``. :mod:`~nnunetv2_mtmd.conversion.synthetic` renders them into images and labels and re-exports
the public names defined here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


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
