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

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter
from tqdm import tqdm

from nnunetv2_mtmd.conversion.synthetic_anatomy import (  # the shapes and the three joints; re-exported
    Anatomy,
    Ellipsoid,
    Part,
    Physis,
    _ankle,
    _j,
    _knee,
    _shoulder,
    smooth_min,
    union_sdf,
)
from nnunetv2_mtmd.conversion.threshold_baseline import (  # how far from trivial the data are; re-exported
    best_threshold,
    best_threshold_dice,
    threshold_report,
)
from nnunetv2_mtmd.errors import InputDataError, OutputExistsError, did_you_mean
from nnunetv2_mtmd.io import atomic_output_dir, dataset_id_in_use, save_json

logger = logging.getLogger(__name__)

__all__ = [
    "AIR",
    "CARTILAGE",
    "CORTEX",
    "DEFAULT_IDS",
    "DOMAINS",
    "FAT",
    "GENERATOR_VERSION",
    "MARROW",
    "MIN_SHAPE",
    "MUSCLE",
    "PHYSIS",
    "SUPERSAMPLING",
    "TENDON",
    "TISSUES",
    "Anatomy",
    "Ellipsoid",
    "Part",
    "Physis",
    "SynthDomain",
    "best_threshold",
    "best_threshold_dice",
    "generate_case",
    "get_domain",
    "smooth_min",
    "threshold_report",
    "union_sdf",
    "write_synthetic_datasets",
]

GENERATOR_VERSION = 1
#: Sub-samples per voxel along (z, y, x) used for partial-volume rendering.
SUPERSAMPLING = (3, 2, 2)
DEFAULT_IDS = (911, 912, 913)
MIN_SHAPE = (4, 24, 24)

# Tissue classes of the renderer (index into a domain's contrast table).
AIR, FAT, MUSCLE, CORTEX, MARROW, PHYSIS, CARTILAGE, TENDON = range(8)
TISSUES = ("air", "fat", "muscle", "cortex", "marrow", "physis", "cartilage", "tendon")


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


def _posed_grid(
    rng: np.random.Generator, shape: tuple[int, int, int], f: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sub-sample coordinates ``(w, v, u)`` (z, y, x; shapes ``(Z*fz, 1, 1)``, ``(1, Y*fy, X*fx)``) in
    the anatomy's normalised frame, for a random global pose of the joint."""
    Z, Y, X = shape
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
    return w, v, u


def _bone_labels(
    anat: Anatomy, names: Sequence[str], w: np.ndarray, v: np.ndarray, u: np.ndarray
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """``(signed distance per bone, minimum over the bones, bone label per sub-sample)``."""
    sdfs = [union_sdf(anat.bones[n], w, v, u, k=0.08) for n in names]
    dmin = sdfs[0].copy()
    bone = (dmin < 0).astype(np.uint8)
    for i in range(1, len(sdfs)):
        closer = (sdfs[i] < dmin) & (sdfs[i] < 0)  # overlaps go to the structure we are deeper in
        bone[closer] = i + 1
        np.minimum(dmin, sdfs[i], out=dmin)
    return sdfs, dmin, bone


def _tissues(
    anat: Anatomy,
    names: Sequence[str],
    sdfs: list[np.ndarray],
    dmin: np.ndarray,
    bone: np.ndarray,
    w: np.ndarray,
    v: np.ndarray,
    u: np.ndarray,
) -> np.ndarray:
    """Tissue class (index into :data:`TISSUES`) of every sub-sample."""
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
    return tissue


def _partial_volume(
    tissue: np.ndarray, bone: np.ndarray, num_labels: int, shape: tuple[int, int, int], f: tuple[int, int, int]
) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """``(fraction of each tissue per voxel, label per voxel)`` from the sub-samples."""
    # partial volume: fraction of each tissue / structure among each voxel's sub-samples
    nsub = f[0] * f[1] * f[2]
    sub_t = _subsamples_first(tissue, shape, f)
    frac = {t: (sub_t == t).sum(axis=0, dtype=np.uint8) / nsub for t in range(len(TISSUES))}
    sub_b = _subsamples_first(bone, shape, f)
    counts = np.stack([(sub_b == k).sum(axis=0, dtype=np.uint8) for k in range(num_labels + 1)])
    label = counts.argmax(axis=0).astype(np.uint8)  # majority of sub-samples; ties -> lower id
    return frac, label


def _textured_image(
    frac: dict[int, np.ndarray], dom: SynthDomain, rng: np.random.Generator, shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """``(image in relative intensities, per-case tissue contrast)``: textured tissues mixed by ``frac``."""
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
    return img, ctr


def _scanner_image(
    img: np.ndarray, ctr: np.ndarray, dom: SynthDomain, rng: np.random.Generator, shape: tuple[int, int, int]
) -> np.ndarray:
    """Bias field, Rician noise and scaling to scanner units applied to ``img`` (float32 result)."""
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
    return img.astype(np.float32)


def _render(
    anat: Anatomy, dom: SynthDomain, rng: np.random.Generator, shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Render one case: returns (image ``(Z, Y, X)`` float32 in scanner units, label ``(Z, Y, X)`` uint8)."""
    f = SUPERSAMPLING
    w, v, u = _posed_grid(rng, shape, f)
    names = list(dom.labels)
    sdfs, dmin, bone = _bone_labels(anat, names, w, v, u)
    tissue = _tissues(anat, names, sdfs, dmin, bone, w, v, u)
    frac, label = _partial_volume(tissue, bone, len(names), shape, f)
    img, ctr = _textured_image(frac, dom, rng, shape)
    return _scanner_image(img, ctr, dom, rng, shape), label


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
