"""Merge K ordinary nnU-Net raw datasets (one per domain) into one multi-domain raw dataset.

This is ``nnUNetv2_mtmd_merge`` (docs/design.md, "Unified label space", "The domain block",
"Domain code channel"). Given sources such as::

    nnUNet_raw/Dataset901_LumbarVertebraeMR/{dataset.json, imagesTr/, labelsTr/[, imagesTs/, labelsTs/]}
    nnUNet_raw/Dataset902_SacroiliacMR/...

``merge_datasets([901, 902], output_id=950, name="MSKBonesMR", domain_names=["lumbar", "sij"])``
writes ``nnUNet_raw/Dataset950_MSKBonesMR`` with

* **case ids** ``<domain>_<original case id>`` (e.g. ``lumbar_myoseg_vb3_01``);
* **images** byte-for-byte copies of the source channel files (voxels and geometry unchanged), plus
  one more channel, the **domain code**: file ``<case>_{C:04d}<ending>`` (``C`` = number of source
  channels), a float32 image with the geometry of channel 0 whose every voxel equals the domain code
  (domain index + 1), channel name ``noNorm``;
* **labels** remapped into one unified label space: background 0, then every domain's labels in
  domain order and, inside a domain, in order of their original ids; unified names are
  ``<domain>_<label>`` (written as uint8, or uint16 beyond 255 labels, geometry of the source label);
* ``imagesTs`` (and ``labelsTs``, remapped) carried over the same way when a source has them;
* ``dataset.json`` with ``channel_names`` (the sources' names + ``noNorm``), the unified ``labels``,
  ``numTraining``, ``file_ending``, ``name``, a ``description`` listing the sources and the domain block
  ``"mtmd"`` (see :mod:`nnunetv2_mtmd.domains`: per domain its name, source dataset, code, unified and
  original label ids, number of training and test cases).

Checks (each failure raises an :class:`~nnunetv2_mtmd.errors.MTMDError` naming the dataset, file or key):
sources must agree on channel count, channel names (or ``channel_names`` is given; then differing
nnU-Net normalization schemes only warn) and file ending; every training case needs a label file; all
channels of a case and its label share one voxel grid; label images hold integers that dataset.json
declares; region-based or ignore-label sources are refused. The output is written into a temporary
folder that replaces ``DatasetXXX_<name>`` only when everything succeeded, so a failure leaves
nothing behind. An existing dataset with the output id (in nnUNet_raw or nnUNet_preprocessed) is
refused unless ``overwrite=True``.

Exact duplicate images (identical voxel arrays) inside a domain are reported with a warning; with
``drop_duplicates=True`` only the first copy (in sorted case-id order) is kept. Duplicates between
domains and between test and training images are reported but never dropped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunetv2_mtmd.conversion.merge_sources import (  # reading and checking the sources; re-exported
    SUPPORTED_FILE_ENDINGS,
    SourceDataset,
    check_domain_names,
    default_domain_names,
    merged_channel_names,
    normalization_scheme,
    parse_source_labels,
    read_source,
    resolve_source,
)
from nnunetv2_mtmd.domains import CODE_CHANNEL_NAME, MTMD_KEY, Domain, DomainLabel, DomainSpec
from nnunetv2_mtmd.errors import InputDataError, OutputExistsError
from nnunetv2_mtmd.io import (
    atomic_output_dir,
    constant_like,
    dataset_id_in_use,
    describe_geometry,
    env_folder,
    label_array,
    read_image,
    safe_child,
    same_geometry,
    save_json,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_NAME",
    "SUPPORTED_FILE_ENDINGS",
    "MergeResult",
    "SourceDataset",
    "build_domain_spec",
    "check_domain_names",
    "default_domain_names",
    "merge_datasets",
    "merged_channel_names",
    "normalization_scheme",
    "parse_source_labels",
    "read_source",
    "remap_labels",
    "resolve_source",
]

DEFAULT_NAME = "MultiDomain"
_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def build_domain_spec(
    sources: Sequence[SourceDataset],
    domain_names: Sequence[str],
    num_channels: int,
    num_cases: Sequence[int] | None = None,
    num_test_cases: Sequence[int] | None = None,
) -> DomainSpec:
    """The domain block of the merged dataset: unified ids 1.. in domain order, then original id order."""
    domains = []
    uid = 1
    for k, (src, dname) in enumerate(zip(sources, domain_names)):
        labs = []
        for oid, lname in src.labels.items():
            labs.append(DomainLabel(name=lname, original_id=oid, unified_id=uid))
            uid += 1
        domains.append(
            Domain(
                name=dname,
                code=k + 1,
                source_dataset=src.name,
                labels=tuple(labs),
                num_cases=int(num_cases[k]) if num_cases is not None else len(src.train_cases),
                num_test_cases=int(num_test_cases[k]) if num_test_cases is not None else len(src.test_cases),
            )
        )
    return DomainSpec(tuple(domains), code_channel=num_channels)


# ------------------------------------------------------------------------------------- labels
def remap_labels(arr: np.ndarray, mapping: dict[int, int]) -> tuple[np.ndarray, list[int]]:
    """Apply ``mapping`` (old id -> new id) with a lookup table.

    Returns ``(remapped, unknown)``: ``unknown`` lists the values of ``arr`` missing from ``mapping``
    (sorted); where it is non-empty, ``remapped`` holds -1 at those voxels."""
    arr = np.asarray(arr, dtype=np.int64)
    if arr.size == 0:
        return arr, []
    offset = min(int(arr.min()), 0)  # negative values index the table from its start
    lut = -np.ones(max(int(arr.max()), max(mapping, default=0)) + 1 - offset, dtype=np.int64)
    for k, v in mapping.items():
        lut[k - offset] = v
    out = lut[arr - offset]
    bad = out < 0
    unknown = [int(v) for v in np.unique(arr[bad])] if bad.any() else []
    return out, unknown


def _label_dtype(max_id: int) -> type:
    return np.uint8 if max_id <= 255 else np.uint16


def _describe(img: sitk.Image) -> str:
    return f"{describe_geometry(img)}, direction {tuple(round(d, 3) for d in img.GetDirection())}"


def _read_case(files: list[Path], case: str, src_name: str) -> list[sitk.Image]:
    imgs = [read_image(f) for f in files]
    for f, im in zip(files, imgs):
        if im.GetNumberOfComponentsPerPixel() != 1:
            raise InputDataError(
                f"Image {f} has {im.GetNumberOfComponentsPerPixel()} components per voxel; nnU-Net channels "
                "must be scalar images (one file per channel)."
            )
    for f, im in zip(files[1:], imgs[1:]):
        if not same_geometry(imgs[0], im):
            raise InputDataError(
                f"Case '{case}' of {src_name}: channels {files[0].name} and {f.name} have different geometry "
                f"({files[0].name}: {_describe(imgs[0])}; {f.name}: {_describe(im)}). All channels of a case "
                "must share one voxel grid; resample them onto channel 0's grid."
            )
    return imgs


def _read_label(
    label_file: Path, ref: sitk.Image, ref_file: Path, src: SourceDataset, mapping: dict[int, int]
) -> tuple[sitk.Image, np.ndarray]:
    lab = read_image(label_file)
    if not same_geometry(ref, lab):
        raise InputDataError(
            f"Image {ref_file} and its label {label_file} have different geometry (image: {_describe(ref)}; "
            f"label: {_describe(lab)}). Labels must lie on the image's voxel grid; resample the label with "
            "nearest-neighbour interpolation onto the image."
        )
    arr = label_array(lab, label_file)
    remapped, unknown = remap_labels(arr, mapping)
    if unknown:
        declared = ", ".join(f"{k}={v}" for k, v in {0: "background", **src.labels}.items())
        raise InputDataError(
            f"Label file {label_file} contains value(s) {unknown} that {src.folder / 'dataset.json'} does "
            f"not declare (declared: {declared}). Add them to 'labels' in dataset.json or fix the label "
            "file."
        )
    return lab, remapped


def _digest(imgs: Sequence[sitk.Image]) -> str:
    h = hashlib.sha1()
    for im in imgs:
        a = sitk.GetArrayViewFromImage(im)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


@dataclass
class MergeResult:
    """What :func:`merge_datasets` wrote."""

    folder: Path
    spec: DomainSpec
    num_training: int
    num_test: int
    dropped_duplicates: list[str]
    seconds: float


# -------------------------------------------------------------------------------------- merge
def _check_output_name(output_id: Any, name: Any) -> int:
    """The output dataset id as an int, after checking it and the name part of ``DatasetXXX_<name>``."""
    if (
        isinstance(output_id, bool)
        or not isinstance(output_id, (int, np.integer))
        or not 1 <= int(output_id) <= 999
    ):
        raise InputDataError(f"Output dataset id must be an integer 1..999, found {output_id!r}.")
    output_id = int(output_id)
    if not isinstance(name, str) or not _DATASET_NAME.match(name):
        raise InputDataError(
            f"Output dataset name {name!r} (-n) is not usable in 'Dataset{output_id:03d}_<name>': use 1-64 "
            "letters, digits, '_' or '-', starting with a letter or digit (no spaces or path separators)."
        )
    return output_id


def _resolve_source_folders(sources: Sequence[str | int | Path], source_root: Path) -> list[Path]:
    """The source dataset folders, each given once."""
    folders = [resolve_source(s, source_root) for s in sources]
    resolved = [f.resolve() for f in folders]
    dup_src = sorted({str(f) for f in resolved if resolved.count(f) > 1})
    if dup_src:
        raise InputDataError(f"Source dataset(s) given more than once: {', '.join(dup_src)}.")
    return folders


def _check_output_id(
    output_id: int,
    raw_root: Path,
    preprocessed_root: Path | None,
    overwrite: bool,
    source_folders: Sequence[Path],
) -> tuple[list[Path], list[Path]]:
    """Datasets that already use ``output_id`` ``(in raw_root, in preprocessed_root)``.

    Existing datasets are refused unless ``overwrite``; a source is never replaced."""
    in_raw = dataset_id_in_use(output_id, [raw_root])
    in_pre = dataset_id_in_use(output_id, [preprocessed_root]) if preprocessed_root else []
    if (in_raw or in_pre) and not overwrite:
        raise OutputExistsError(
            f"Dataset id {output_id} is already used by {', '.join(str(p) for p in in_raw + in_pre)}. "
            "Choose another output id (-o) or pass --overwrite to replace the raw dataset."
        )
    resolved = [f.resolve() for f in source_folders]
    clash = [p for p in in_raw if p.resolve() in resolved]
    if clash:
        raise InputDataError(
            f"Output id {output_id} is the id of source dataset {clash[0]}; choose a different output id "
            "(-o)."
        )
    return in_raw, in_pre


def _common_file_format(srcs: Sequence[SourceDataset]) -> tuple[str, Any]:
    """``(file ending, overwrite_image_reader_writer or None)`` shared by all sources."""
    endings = {s.file_ending for s in srcs}
    if len(endings) > 1:
        raise InputDataError(
            "The source datasets use different file endings ("
            + "; ".join(f"{s.name}: {s.file_ending}" for s in srcs)
            + "). Convert them to one format first."
        )
    rw = {s.name: s.dataset_json.get("overwrite_image_reader_writer") for s in srcs}
    if len(set(rw.values())) > 1:
        raise InputDataError(
            f"The source datasets set different 'overwrite_image_reader_writer' values: {rw}."
        )
    return srcs[0].file_ending, rw[srcs[0].name]


@dataclass
class _CaseWriter:
    """Writes the merged cases into the temporary output folder ``tmp`` and counts them per domain."""

    tmp: Path
    file_ending: str
    num_channels: int
    label_dtype: type
    check_duplicates: bool
    drop_duplicates: bool
    n_train: list[int]
    n_test: list[int]
    dropped: list[str] = field(default_factory=list)
    #: image digest -> (merged case id, domain, split)
    seen: dict[str, tuple[str, str, str]] = field(default_factory=dict)

    def write_source(self, k: int, src: SourceDataset, dom: Domain, bar: tqdm) -> None:
        """All training and test cases of source ``k`` (domain ``dom``)."""
        mapping = dom.original_to_unified()
        for split in ("Tr", "Ts"):
            cases = src.train_cases if split == "Tr" else src.test_cases
            labs = src.train_labels if split == "Tr" else src.test_labels
            if cases:
                (self.tmp / f"images{split}").mkdir(exist_ok=True)
            if labs:
                (self.tmp / f"labels{split}").mkdir(exist_ok=True)
            for case, files in cases.items():
                bar.update(1)
                if not self.write_case(src, dom, split, case, files, labs.get(case), mapping):
                    continue
                if split == "Tr":
                    self.n_train[k] += 1
                else:
                    self.n_test[k] += 1

    def write_case(
        self,
        src: SourceDataset,
        dom: Domain,
        split: str,
        case: str,
        files: list[Path],
        label_file: Path | None,
        mapping: dict[int, int],
    ) -> bool:
        """Copy one case's channels, add its code channel and write its remapped label (if any).

        Returns False when the case was dropped as a duplicate."""
        new_id = dom.case_id(case)
        imgs = _read_case(files, case, src.name)
        lab_out = None
        if label_file is not None:
            lab_img, remapped = _read_label(label_file, imgs[0], files[0], src, mapping)
            lab_out = sitk.GetImageFromArray(remapped.astype(self.label_dtype))
            lab_out.CopyInformation(lab_img)
        if self.check_duplicates and self._drop_as_duplicate(imgs, src, dom, split, case, new_id):
            return False
        fe, n_ch = self.file_ending, self.num_channels
        for ch, f in enumerate(files):
            shutil.copyfile(f, safe_child(self.tmp / f"images{split}", f"{new_id}_{ch:04d}{fe}"))
        sitk.WriteImage(
            constant_like(imgs[0], float(dom.code)),
            str(safe_child(self.tmp / f"images{split}", f"{new_id}_{n_ch:04d}{fe}")),
            True,
        )
        if lab_out is not None:
            sitk.WriteImage(lab_out, str(safe_child(self.tmp / f"labels{split}", f"{new_id}{fe}")), True)
        return True

    def _drop_as_duplicate(
        self, imgs: list[sitk.Image], src: SourceDataset, dom: Domain, split: str, case: str, new_id: str
    ) -> bool:
        """Warn about an exact duplicate of an earlier image; True if it is to be dropped."""
        dig = _digest(imgs)
        if dig not in self.seen:
            self.seen[dig] = (new_id, dom.name, split)
            return False
        o_id, o_dom, o_split = self.seen[dig]
        droppable = o_dom == dom.name and split == "Tr" and o_split == "Tr"
        if droppable and self.drop_duplicates:
            logger.warning(
                "Case '%s' of %s has exactly the same image as merged case '%s'; "
                "dropped (drop duplicates).",
                case,
                src.name,
                o_id,
            )
            self.dropped.append(new_id)
            return True
        logger.warning(
            "Case '%s' (%s, images%s) has exactly the same image as merged case '%s' "
            "(images%s).%s",
            case,
            src.name,
            split,
            o_id,
            o_split,
            " Pass --drop_duplicates to keep only the first copy." if droppable else "",
        )
        return False


def _with_case_counts(spec: DomainSpec, n_train: Sequence[int], n_test: Sequence[int]) -> DomainSpec:
    """``spec`` with the numbers of training and test cases actually written."""
    return dataclasses.replace(
        spec,
        domains=tuple(
            dataclasses.replace(d, num_cases=n_train[k], num_test_cases=n_test[k])
            for k, d in enumerate(spec.domains)
        ),
    )


def _merged_dataset_json(
    spec: DomainSpec, chans: Sequence[str], fe: str, name: str, num_training: int, reader_writer: Any
) -> dict[str, Any]:
    """dataset.json of the merged dataset (domain block included)."""
    n_ch = len(chans)
    dj: dict[str, Any] = {
        "channel_names": {**{str(i): c for i, c in enumerate(chans)}, str(n_ch): CODE_CHANNEL_NAME},
        "labels": spec.label_names(),
        "numTraining": num_training,
        "file_ending": fe,
        "name": name,
        "description": "Multi-domain dataset merged by nnunetv2-mtmd (nnUNetv2_mtmd_merge) from: "
        + "; ".join(f"{d.name} (code {d.code}) = {d.source_dataset}" for d in spec.domains)
        + f". The last channel ({n_ch}) is the domain code.",
    }
    if reader_writer is not None:
        dj["overwrite_image_reader_writer"] = reader_writer
    dj[MTMD_KEY] = spec.to_json()
    return dj


def _write_merged_dataset(
    tmp: Path,
    final_name: str,
    srcs: Sequence[SourceDataset],
    spec: DomainSpec,
    chans: Sequence[str],
    fe: str,
    name: str,
    reader_writer: Any,
    check_duplicates: bool,
    drop_duplicates: bool,
    progress: bool,
) -> tuple[DomainSpec, _CaseWriter]:
    """Write every case and dataset.json into the temporary folder ``tmp``.

    Returns the domain spec with the case counts as written, and the writer (counts, dropped cases)."""
    for sub in ("imagesTr", "labelsTr"):
        (tmp / sub).mkdir()
    writer = _CaseWriter(
        tmp,
        fe,
        len(chans),
        _label_dtype(spec.num_classes - 1),
        check_duplicates,
        drop_duplicates,
        n_train=[0] * len(srcs),
        n_test=[0] * len(srcs),
    )
    n_total = sum(len(s.train_cases) + len(s.test_cases) for s in srcs)
    bar = tqdm(total=n_total, desc=f"merge -> {final_name}", unit="case", disable=not progress)
    for k, (src, dom) in enumerate(zip(srcs, spec.domains)):
        writer.write_source(k, src, dom, bar)
    bar.close()
    spec = _with_case_counts(spec, writer.n_train, writer.n_test)
    dj = _merged_dataset_json(spec, chans, fe, name, sum(writer.n_train), reader_writer)
    save_json(dj, tmp / "dataset.json")
    DomainSpec.from_dataset_json(tmp / "dataset.json")  # re-parse what was written
    return spec, writer


def _replace_existing(in_raw: Sequence[Path], in_pre: Sequence[Path], final: Path, output_id: int) -> None:
    """After an ``overwrite`` merge: remove other raw datasets with the id, warn about stale preprocessed data."""
    for p in in_raw:
        if p.resolve() != final.resolve() and p.exists():
            logger.warning("Removing %s (replaced by %s, --overwrite).", p, final.name)
            shutil.rmtree(p)
    for p in in_pre:
        logger.warning("%s is now stale: re-run nnUNetv2_plan_and_preprocess -d %d.", p, output_id)


def merge_datasets(
    sources: Sequence[str | int | Path],
    output_id: int,
    name: str = DEFAULT_NAME,
    domain_names: Sequence[str] | None = None,
    channel_names: Sequence[str] | None = None,
    overwrite: bool = False,
    raw_root: Path | None = None,
    source_root: Path | None = None,
    preprocessed_root: Path | None = None,
    check_duplicates: bool = True,
    drop_duplicates: bool = False,
    progress: bool = True,
) -> MergeResult:
    """Merge ordinary nnU-Net raw datasets (one per domain) into ``raw_root/DatasetXXX_<name>``.

    Args:
        sources: source datasets as ids (``901``), full names (``Dataset901_Lumbar``) or folder paths.
        output_id: id ``XXX`` of the merged dataset (1-999).
        name: name part of ``DatasetXXX_<name>``.
        domain_names: one per source; default: the sanitized source dataset names.
        channel_names: merged image channel names (without the code channel); default: the sources'
            names, which must then agree.
        overwrite: replace an existing raw dataset with this id (else it is an error).
        raw_root: where the merged dataset is written; default ``$nnUNet_raw``.
        source_root: where ids / names in ``sources`` are looked up; default ``raw_root``.
        preprocessed_root: checked for an existing dataset with this id; default ``$nnUNet_preprocessed``.
        check_duplicates: warn about exact duplicate images.
        drop_duplicates: keep only the first copy of an exact duplicate image inside one domain.
        progress: show a tqdm progress bar.

    Returns:
        A :class:`MergeResult` (folder, domain spec, case counts, dropped duplicates, seconds).
    """
    t0 = time.perf_counter()
    output_id = _check_output_name(output_id, name)
    if not sources:
        raise InputDataError("No source datasets given (-d): give one nnU-Net raw dataset per domain.")
    raw_root = Path(raw_root) if raw_root is not None else env_folder("nnUNet_raw")
    source_root = Path(source_root) if source_root is not None else raw_root
    if preprocessed_root is None and os.environ.get("nnUNet_preprocessed"):
        preprocessed_root = Path(os.environ["nnUNet_preprocessed"])

    folders = _resolve_source_folders(sources, source_root)
    if domain_names is not None:
        domain_names = check_domain_names(domain_names, len(folders))
    in_raw, in_pre = _check_output_id(output_id, raw_root, preprocessed_root, overwrite, folders)

    srcs = [read_source(f) for f in folders]
    if domain_names is None:
        domain_names = check_domain_names(default_domain_names(srcs), len(srcs))
    fe, reader_writer = _common_file_format(srcs)
    chans = merged_channel_names(srcs, channel_names)
    n_ch = len(chans)
    spec = build_domain_spec(srcs, domain_names, n_ch)

    final = raw_root / f"Dataset{output_id:03d}_{name}"
    with atomic_output_dir(final, overwrite=True) as tmp:
        spec, writer = _write_merged_dataset(
            tmp, final.name, srcs, spec, chans, fe, name, reader_writer, check_duplicates, drop_duplicates,
            progress,
        )
    if overwrite:
        _replace_existing(in_raw, in_pre, final, output_id)
    secs = time.perf_counter() - t0
    n_train, n_test = sum(writer.n_train), sum(writer.n_test)
    logger.info(
        "Wrote %s: %d training cases (%s), %d test cases, %d labels incl. background, %d input channels "
        "(%d image + code), %.1f s.",
        final,
        n_train,
        ", ".join(f"{d.name} {d.num_cases}" for d in spec.domains),
        n_test,
        spec.num_classes,
        n_ch + 1,
        n_ch,
        secs,
    )
    return MergeResult(final, spec, n_train, n_test, writer.dropped, secs)
