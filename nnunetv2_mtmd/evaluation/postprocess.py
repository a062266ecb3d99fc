"""The paper's post-processing of predicted label maps (Boutillon et al. 2022, Sec. "Post-processing").

Per case and per structure of the case's domain:

1. keep the largest 3D connected component (connectivity **26**: faces, edges and corners,
   ``scipy.ndimage.generate_binary_structure(3, 3)``); removed islands become background. Ties in
   size keep the component whose first voxel comes first in C (raster) order;
2. 3D morphological closing of that component with a **5x5x5 ball in voxels** (radius 2:
   offsets with ``dz^2 + dy^2 + dx^2 <= 4``), regardless of the voxel spacing, as in the paper. With
   anisotropic data the ball is anisotropic in mm (e.g. 2 x 2 x 5.2 mm voxels: +-4 mm in-plane,
   +-10.4 mm across slices). The closing is computed on the component alone, padded with
   background, so it is exact (no image-border effects) and never removes a voxel;
3. the closing may only ADD voxels that are background in the input (labels of other domains count
   as background, voxels of removed islands do not and stay background), so a voxel predicted as
   one structure never becomes another. A background voxel claimed by the closings of two or more
   structures stays background (deterministic and independent of label order).

Labels that are not structures of the case's domain (the ``<domain>_`` prefix of the case id) are
set to background: only the structures of the case's domain appear in the output. The output has
the input's geometry (spacing, origin, direction) and pixel type.

Arrays are ``(Z, Y, X)`` label maps as returned by ``SimpleITK.GetArrayFromImage``; 2D maps
``(Y, X)`` work too (8-connectivity and a 5x5 disk).
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from tqdm import tqdm

from nnunetv2_mtmd.domains import DomainSpec
from nnunetv2_mtmd.errors import InputDataError
from nnunetv2_mtmd.evaluation.metrics import bounding_box, present_labels
from nnunetv2_mtmd.io import atomic_output_dir, label_array, read_image

logger = logging.getLogger(__name__)

CLOSING_RADIUS = 2  # 5x5x5 ball
CONNECTIVITY = 26


def ball(radius: int, ndim: int = 3) -> np.ndarray:
    """Boolean ball of ``radius`` voxels (``2 * radius + 1`` wide): offsets with squared norm <= radius^2."""
    if radius < 0:
        raise ValueError(f"radius must be >= 0, found {radius}")
    grids = np.ogrid[tuple(slice(-radius, radius + 1) for _ in range(ndim))]
    return sum(g.astype(np.int64) ** 2 for g in grids) <= radius**2


def _connectivity_structure(ndim: int, connectivity: int) -> np.ndarray:
    full = 3**ndim - 1
    faces = 2 * ndim
    if connectivity == full:
        return ndimage.generate_binary_structure(ndim, ndim)
    if connectivity == faces:
        return ndimage.generate_binary_structure(ndim, 1)
    raise ValueError(f"connectivity must be {faces} or {full} for {ndim}D data, found {connectivity}")


def largest_component(mask: np.ndarray, connectivity: int = CONNECTIVITY) -> np.ndarray:
    """The largest connected component of a boolean mask (same shape; empty stays empty).

    ``connectivity``: 26 or 6 in 3D (8 or 4 in 2D); ties keep the lowest component label."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim == 2 and connectivity == 26:
        connectivity = 8
    struct = _connectivity_structure(mask.ndim, connectivity)
    box = bounding_box(mask)
    out = np.zeros_like(mask)
    if box is None:
        return out
    lab, n = ndimage.label(mask[box], structure=struct)
    if n <= 1:
        out[box] = mask[box]
        return out
    sizes = np.bincount(lab.ravel())[1:]
    out[box] = lab == (int(np.argmax(sizes)) + 1)
    return out


def closing_exact(mask: np.ndarray, radius: int = CLOSING_RADIUS) -> np.ndarray:
    """Binary closing with :func:`ball` as if the image continued with background forever.

    Computed on the mask's bounding box padded by ``radius + 1``, so the result contains ``mask``."""
    mask = np.asarray(mask, dtype=bool)
    box = bounding_box(mask)
    out = mask.copy()
    if box is None or radius == 0:
        return out
    pad = radius + 1
    crop = np.pad(mask[box], pad)
    se = ball(radius, mask.ndim)
    closed = ndimage.binary_erosion(ndimage.binary_dilation(crop, se), se, border_value=0)
    inner = tuple(slice(pad, -pad) for _ in range(mask.ndim))
    out[box] |= closed[inner]
    return out


def postprocess_labels(
    seg: np.ndarray,
    label_ids: Sequence[int],
    closing_radius: int = CLOSING_RADIUS,
    connectivity: int = CONNECTIVITY,
) -> np.ndarray:
    """Largest component + closing per label, without overlaps (module docstring, steps 1-3).

    ``seg``: integer label map ``(Z, Y, X)``; ``label_ids``: the labels to keep (the case's domain's
    unified ids); every other nonzero value becomes 0. Returns a new array of ``seg``'s dtype."""
    seg = np.asarray(seg)
    label_ids = [int(v) for v in label_ids]
    if any(v <= 0 for v in label_ids):
        raise ValueError(f"label ids must be positive, found {label_ids}")
    base = np.zeros_like(seg)
    components: dict[int, np.ndarray] = {}
    for lab in label_ids:
        comp = largest_component(seg == lab, connectivity)
        if comp.any():
            base[comp] = lab
            components[lab] = comp
    closings = {lab: closing_exact(comp, closing_radius) for lab, comp in components.items()}
    return merge_closings(base, closings, fillable=~np.isin(seg, label_ids))


def merge_closings(
    base: np.ndarray, closings: Mapping[int, np.ndarray], fillable: np.ndarray | None = None
) -> np.ndarray:
    """Add the closings to ``base`` where it may be filled (step 3 of the module docstring).

    ``base``: label map ``(Z, Y, X)``; ``closings``: label -> boolean mask of ``base``'s shape;
    ``fillable``: voxels that may receive a label (default: ``base == 0``; always restricted to
    background of ``base``). A fillable voxel claimed by exactly one label gets that label; claimed
    by two or more it stays background; other voxels never change. Independent of the order of
    ``closings``."""
    background = base == 0 if fillable is None else (base == 0) & np.asarray(fillable, dtype=bool)
    claims = np.zeros(base.shape, dtype=np.uint8)
    claimer = np.zeros_like(base)
    for lab, closed in closings.items():
        added = np.asarray(closed, dtype=bool) & background
        claims[added] = np.minimum(claims[added], 1) + 1  # 1 = one claim, 2 = contested (saturating)
        claimer[added] = lab
    out = base.copy()
    single = claims == 1
    out[single] = claimer[single]
    return out


# --------------------------------------------------------------------------------------- folders
def _postprocess_file(task: tuple[Path, Path, list[int], int, int]) -> tuple[str, int]:
    src, dst, label_ids, radius, connectivity = task
    img = read_image(src)
    arr = label_array(img, src)
    stray = sorted(present_labels(arr) - set(label_ids) - {0})
    out = postprocess_labels(arr, label_ids, radius, connectivity)
    dtype = sitk.GetArrayViewFromImage(img).dtype
    res = sitk.GetImageFromArray(out.astype(dtype))
    res.CopyInformation(img)
    sitk.WriteImage(res, str(dst), useCompression=True)
    return src.name, len(stray)


def postprocess_folder(
    pred_dir: Path,
    out_dir: Path,
    spec: DomainSpec,
    file_ending: str,
    num_processes: int = 2,
    closing_radius: int = CLOSING_RADIUS,
    connectivity: int = CONNECTIVITY,
    overwrite: bool = False,
) -> list[str]:
    """Post-process every ``<case><file_ending>`` label file of ``pred_dir`` into ``out_dir``.

    Other JSON files of ``pred_dir`` (nnU-Net's dataset.json, plans.json, ...) are copied;
    ``postprocessing_mtmd.json`` records the parameters. All-or-nothing output. Returns the case ids."""
    pred_dir, out_dir = Path(pred_dir), Path(out_dir)
    if not pred_dir.is_dir():
        raise InputDataError(f"Prediction folder {pred_dir} does not exist.")
    if out_dir.resolve() == pred_dir.resolve():
        raise InputDataError(f"Output folder {out_dir} is the input folder; choose another -o.")
    files = sorted(f for f in pred_dir.iterdir() if f.is_file() and f.name.endswith(file_ending))
    if not files:
        raise InputDataError(f"No '*{file_ending}' label files in {pred_dir}.")
    cases = [f.name[: -len(file_ending)] for f in files]
    label_sets = [list(spec.domain_of_case(c).unified_ids) for c in cases]
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        tasks = [(f, tmp / f.name, labs, closing_radius, connectivity) for f, labs in zip(files, label_sets)]
        results = parallel_map(_postprocess_file, tasks, num_processes, "post-processing")
        stray = [name for name, n in results if n]
        if stray:
            logger.warning(
                "%d cases had labels of other domains, set to background: %s",
                len(stray),
                ", ".join(stray[:10]) + (" ..." if len(stray) > 10 else ""),
            )
        for f in sorted(pred_dir.glob("*.json")):
            shutil.copy2(f, tmp / f.name)
        params = {
            "largest_component_connectivity": connectivity,
            "closing_ball_radius_voxels": closing_radius,
            "closing_ball_size_voxels": 2 * closing_radius + 1,
            "contested_voxels": "background",
            "source": str(pred_dir),
        }
        (tmp / "postprocessing_mtmd.json").write_text(json.dumps(params, indent=2))
    return cases


def parallel_map(fn, tasks: list, num_processes: int, desc: str) -> list:
    """``[fn(t) for t in tasks]`` with a progress bar, in a spawn pool when ``num_processes > 1``."""
    if num_processes <= 1 or len(tasks) <= 1:
        return [fn(t) for t in tqdm(tasks, desc=desc)]
    with mp.get_context("spawn").Pool(min(num_processes, len(tasks))) as pool:
        return list(tqdm(pool.imap(fn, tasks), total=len(tasks), desc=desc))
