"""The paper's post-processing of predicted label maps (Boutillon et al. 2022, Sec. "Post-processing").

Per case and per structure of the case's domain:

1. keep the largest 3D connected component (connectivity **26**: faces, edges and corners,
   ``scipy.ndimage.generate_binary_structure(3, 3)``); removed islands become background. Ties in
   size keep the component whose first voxel comes first in C (raster) order. A structure made of
   ``k`` separate parts keeps its ``k`` largest components (see below);
2. 3D morphological closing of the kept components with a **5x5x5 ball in voxels** (radius 2:
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

**Structures made of several parts.** The paper's bones (ankle, knee, shoulder) are one object
each, so "the largest component" is right for all of them. Other datasets label bilateral anatomy
with one label (both femurs as ``femur``, both iliac bones as ``ilium`` in the pelvis dataset of
the study); keeping one component there deletes the other side. :func:`expected_components` counts
the parts of every structure in reference label maps (training labels): per case the components
holding at least ``min_fraction`` (10 %) of the largest one's voxels, so that annotation specks do
not count, then the lower median over the cases of the structure's domain that contain it. The
post-processing keeps that many components (1 for every structure of the paper's datasets, so it
is the paper's post-processing there).

Arrays are ``(Z, Y, X)`` label maps as returned by ``SimpleITK.GetArrayFromImage``; 2D maps
``(Y, X)`` work too (8-connectivity and a 5x5 disk).
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import shutil
import statistics
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from tqdm import tqdm

from nnunetv2_mtmd.domains import DomainSpec
from nnunetv2_mtmd.errors import InputDataError, did_you_mean
from nnunetv2_mtmd.evaluation.metrics import bounding_box, present_labels
from nnunetv2_mtmd.io import atomic_output_dir, label_array, read_image

logger = logging.getLogger(__name__)

CLOSING_RADIUS = 2  # 5x5x5 ball
CONNECTIVITY = 26
MIN_COMPONENT_FRACTION = 0.1  # parts smaller than this fraction of the largest are specks, not parts


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


def _components(mask: np.ndarray, connectivity: int) -> tuple[tuple[slice, ...] | None, np.ndarray, np.ndarray]:
    """(bounding box, component labels inside it, component sizes indexed by label - 1)."""
    if mask.ndim == 2 and connectivity == 26:
        connectivity = 8
    struct = _connectivity_structure(mask.ndim, connectivity)
    box = bounding_box(mask)
    if box is None:
        return None, np.zeros((0,), np.int32), np.zeros((0,), np.int64)
    lab, _ = ndimage.label(mask[box], structure=struct)
    return box, lab, np.bincount(lab.ravel())[1:]


def largest_components(mask: np.ndarray, k: int = 1, connectivity: int = CONNECTIVITY) -> np.ndarray:
    """The ``k`` largest connected components of a boolean mask (same shape; empty stays empty).

    ``connectivity``: 26 or 6 in 3D (8 or 4 in 2D); ties in size keep the lower component label
    (the component whose first voxel comes first in C order)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, found {k}")
    mask = np.asarray(mask, dtype=bool)
    box, lab, sizes = _components(mask, connectivity)
    out = np.zeros_like(mask)
    if box is None:
        return out
    if len(sizes) <= k:
        out[box] = mask[box]
        return out
    keep = np.argsort(-sizes, kind="stable")[:k] + 1
    out[box] = np.isin(lab, keep)
    return out


def largest_component(mask: np.ndarray, connectivity: int = CONNECTIVITY) -> np.ndarray:
    """The largest connected component of a boolean mask (:func:`largest_components` with ``k = 1``)."""
    return largest_components(mask, 1, connectivity)


def count_components(
    mask: np.ndarray, connectivity: int = CONNECTIVITY, min_fraction: float = MIN_COMPONENT_FRACTION
) -> int:
    """Number of connected components with at least ``min_fraction`` of the largest one's voxels
    (0 for an empty mask)."""
    _, _, sizes = _components(np.asarray(mask, dtype=bool), connectivity)
    if len(sizes) == 0:
        return 0
    return int((sizes >= min_fraction * sizes.max()).sum())


def expected_components(
    label_files: Sequence[Path],
    spec: DomainSpec,
    file_ending: str,
    connectivity: int = CONNECTIVITY,
    min_fraction: float = MIN_COMPONENT_FRACTION,
) -> dict[int, int]:
    """How many parts each structure has, from reference label maps (module docstring).

    ``label_files``: ``<case><file_ending>`` label maps of the merged dataset (unified ids, the case id
    names the domain). Returns ``{unified label id: k}`` for every structure of ``spec``: the lower
    median over the cases of its domain that contain it of :func:`count_components`; 1 for a
    structure no case contains."""
    counts: dict[int, list[int]] = {lab: [] for d in spec.domains for lab in d.unified_ids}
    for _, lab, mask in _own_structure_masks(label_files, spec, file_ending):
        n = count_components(mask, connectivity, min_fraction)
        if n:
            counts[lab].append(n)
    return {lab: max(1, int(statistics.median_low(v))) if v else 1 for lab, v in counts.items()}


def _own_structure_masks(
    label_files: Sequence[Path], spec: DomainSpec, file_ending: str
) -> Iterator[tuple[str, int, np.ndarray]]:
    """``(case, unified label id, boolean mask)`` of every structure of each case's own domain (the
    case id names the domain), read from ``<case><file_ending>`` label maps of the merged dataset."""
    for f in tqdm(list(label_files), desc="reading reference structures", disable=len(label_files) < 20):
        f = Path(f)
        if not f.name.endswith(file_ending):
            raise InputDataError(f"{f} does not end with the dataset's file ending {file_ending!r}.")
        case = f.name[: -len(file_ending)]
        arr = label_array(read_image(f), f)
        for lab in spec.domain_of_case(case).unified_ids:
            yield case, lab, arr == lab


def parts_beyond_kept(
    label_files: Sequence[Path],
    spec: DomainSpec,
    file_ending: str,
    keep: Mapping[int, int],
    connectivity: int = CONNECTIVITY,
) -> tuple[int, list[dict]]:
    """Reference structures that the post-processing would cut if the prediction were perfect.

    Post-processing keeps the ``keep[label]`` largest components of each structure (default 1); a
    reference structure with more components (specks included: every component counts here, unlike
    :func:`expected_components`) loses voxels to it, and a perfect prediction would lose them too.
    Such structures explain post-processing that makes a scheme worse, and distances (MSSD) that no
    scheme can get right. ``label_files``: ``<case><file_ending>`` label maps of the merged dataset.

    Returns ``(number of structures present in the files, rows)`` with one row per cut structure:
    ``case``, ``label`` (unified id), ``name`` (``<domain>_<structure>``), ``components``, ``kept``,
    ``voxels`` (of the structure) and ``voxels_removed`` (outside its ``kept`` largest components)."""
    names = {lab: name for name, lab in structure_names(spec).items()}
    n_present, rows = 0, []
    for case, lab, mask in _own_structure_masks(label_files, spec, file_ending):
        _, _, sizes = _components(mask, connectivity)
        if len(sizes) == 0:
            continue
        n_present += 1
        k = int(keep.get(lab, 1))
        if len(sizes) > k:
            kept = int(np.sort(sizes)[::-1][:k].sum())
            rows.append({"case": case, "label": int(lab), "name": names[lab], "components": int(len(sizes)),
                         "kept": k, "voxels": int(sizes.sum()), "voxels_removed": int(sizes.sum()) - kept})
    return n_present, rows


def structure_names(spec: DomainSpec) -> dict[str, int]:
    """Unified label name (``<domain>_<structure>``, as in the merged dataset.json) -> unified id."""
    return {d.unified_name(lab): lab.unified_id for d in spec.domains for lab in d.labels}


def read_components(path: Path, spec: DomainSpec) -> dict[int, int]:
    """``{unified label id: k}`` from a JSON object whose keys are unified label ids or label names
    (``"7"`` or ``"pelvis_femur"``, as in the merged dataset.json) and values integers >= 1."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputDataError(f"Cannot read the components file {path}: {e}.") from e
    if not isinstance(data, dict):
        raise InputDataError(f"{path} must hold a JSON object {{label id or name: number of parts}}, "
                             f"found {type(data).__name__}.")
    by_name = structure_names(spec)
    out: dict[int, int] = {}
    for key, k in data.items():
        if key in by_name:
            lab = by_name[key]
        elif str(key).isdigit() and int(key) in by_name.values():
            lab = int(key)
        else:
            raise InputDataError(f"{path}: {key!r} is not a structure of the dataset (label names: "
                                 f"{', '.join(by_name)}; or their ids)." + did_you_mean(str(key), by_name))
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise InputDataError(f"{path}: the number of parts of {key!r} must be an integer >= 1, found {k!r}.")
        out[lab] = k
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
    components: Mapping[int, int] | None = None,
) -> np.ndarray:
    """Largest component(s) + closing per label, without overlaps (module docstring, steps 1-3).

    ``seg``: integer label map ``(Z, Y, X)``; ``label_ids``: the labels to keep (the case's domain's
    unified ids); every other nonzero value becomes 0; ``components``: label -> number of parts to
    keep (default 1, the paper's largest component). Returns a new array of ``seg``'s dtype."""
    seg = np.asarray(seg)
    label_ids = [int(v) for v in label_ids]
    if any(v <= 0 for v in label_ids):
        raise ValueError(f"label ids must be positive, found {label_ids}")
    base = np.zeros_like(seg)
    parts = dict(components or {})
    kept: dict[int, np.ndarray] = {}
    for lab in label_ids:
        comp = largest_components(seg == lab, parts.get(lab, 1), connectivity)
        if comp.any():
            base[comp] = lab
            kept[lab] = comp
    closings = {lab: closing_exact(comp, closing_radius) for lab, comp in kept.items()}
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
def _postprocess_file(task: tuple[Path, Path, list[int], int, int, dict[int, int]]) -> tuple[str, int]:
    src, dst, label_ids, radius, connectivity, components = task
    img = read_image(src)
    arr = label_array(img, src)
    stray = sorted(present_labels(arr) - set(label_ids) - {0})
    out = postprocess_labels(arr, label_ids, radius, connectivity, components)
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
    components: Mapping[int, int] | None = None,
) -> list[str]:
    """Post-process every ``<case><file_ending>`` label file of ``pred_dir`` into ``out_dir``.

    ``components``: unified label id -> number of parts to keep (:func:`expected_components`);
    structures not in it keep their largest component.
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
        comp = {int(k): int(v) for k, v in (components or {}).items()}
        tasks = [(f, tmp / f.name, labs, closing_radius, connectivity, comp) for f, labs in zip(files, label_sets)]
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
            "components_kept": {
name: comp.get(lab, 1) for name, lab in structure_names(spec).items()},
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
