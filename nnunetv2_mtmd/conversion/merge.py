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

from nnunetv2_mtmd.domains import (
    CODE_CHANNEL_NAME,
    MTMD_KEY,
    Domain,
    DomainLabel,
    DomainSpec,
    sanitize_domain_name,
    validate_domain_name,
)
from nnunetv2_mtmd.errors import DomainSpecError, InputDataError, OutputExistsError
from nnunetv2_mtmd.io import (
    atomic_output_dir,
    constant_like,
    dataset_id_in_use,
    describe_geometry,
    env_folder,
    find_dataset,
    label_array,
    list_cases,
    load_json,
    read_image,
    safe_child,
    same_geometry,
    save_json,
)

logger = logging.getLogger(__name__)

#: File endings the merge can copy byte-for-byte and read with SimpleITK (single-file formats only;
#: ``.mhd`` is excluded because its header names a separate ``.raw`` file).
SUPPORTED_FILE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".gipl")
DEFAULT_NAME = "MultiDomain"
_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
#: Fallback of nnU-Net's channel-name -> normalization table (used only if nnunetv2 moved it).
_FALLBACK_SCHEMES = {
    "ct": "CTNormalization",
    "nonorm": "NoNormalization",
    "zscore": "ZScoreNormalization",
    "rescale_to_0_1": "RescaleTo01Normalization",
    "rgb_to_0_1": "RGBTo01Normalization",
}


# ------------------------------------------------------------------------------------ sources
@dataclass
class SourceDataset:
    """One ordinary nnU-Net raw dataset to be merged (one domain)."""

    folder: Path
    dataset_json: dict[str, Any]
    channel_names: list[str]
    file_ending: str
    #: foreground labels, original id -> name, sorted by id
    labels: dict[int, str]
    train_cases: dict[str, list[Path]]
    train_labels: dict[str, Path]
    test_cases: dict[str, list[Path]] = field(default_factory=dict)
    test_labels: dict[str, Path] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.folder.name


def normalization_scheme(channel_name: str) -> str:
    """Name of the nnU-Net normalization class that a channel name selects (case-insensitive)."""
    try:
        from nnunetv2.preprocessing.normalization.map_channel_name_to_normalization import (
            get_normalization_scheme,
        )

        return get_normalization_scheme(channel_name).__name__
    except ImportError:  # pragma: no cover - depends on the nnunetv2 version
        return _FALLBACK_SCHEMES.get(channel_name.casefold(), "ZScoreNormalization")


def parse_source_labels(labels: Any, where: str) -> dict[int, str]:
    """Foreground labels of an ordinary dataset.json ``labels`` entry as ``{original id: name}``.

    Region-based labels (lists of ids) and nnU-Net's ``ignore`` label are refused."""
    if not isinstance(labels, dict) or not labels:
        raise InputDataError(f"{where}['labels'] is missing or not a JSON object {{name: id}}.")
    out: dict[int, str] = {}
    has_background = False
    for name, val in labels.items():
        lw = f"{where}['labels']['{name}']"
        if isinstance(val, (list, tuple)):
            raise InputDataError(
                f"{lw} is {val}: region-based labels are not supported by nnUNetv2_mtmd_merge. Convert the "
                "source to plain labels (one integer id per structure) before merging."
            )
        if name == "ignore":
            raise InputDataError(
                f"{lw}: nnU-Net's ignore label is not supported by nnUNetv2_mtmd_merge (partial annotation "
                "cannot be carried into the unified label space). Remove it from the source dataset."
            )
        if isinstance(val, bool) or not isinstance(val, int) or val < 0:
            raise InputDataError(f"{lw} must be a non-negative integer label id, found {val!r}.")
        if val == 0:
            has_background = True
            continue
        if val in out:
            raise InputDataError(
                f"{lw}: label id {val} is also used by '{out[val]}'; label ids must be unique."
            )
        out[val] = str(name)
    if not has_background:
        raise InputDataError(f"{where}['labels'] has no background entry with id 0 (e.g. \"background\": 0).")
    if not out:
        raise InputDataError(f"{where}['labels'] declares no foreground label; a domain needs at least one.")
    return dict(sorted(out.items()))


def _channel_names(dj: dict[str, Any], where: str) -> list[str]:
    chans = dj.get("channel_names", dj.get("modality"))
    if not isinstance(chans, dict) or not chans:
        raise InputDataError(f'{where}: missing or empty \'channel_names\' (e.g. {{"0": "MRI"}}).')
    try:
        keys = sorted(int(k) for k in chans)
    except ValueError as e:
        raise InputDataError(
            f"{where}['channel_names'] keys must be '0', '1', ..., found {list(chans)}."
        ) from e
    if keys != list(range(len(keys))):
        raise InputDataError(
            f"{where}['channel_names'] keys must be '0'..'{len(keys) - 1}', found {list(chans)}."
        )
    return [str(chans[str(k)]) for k in keys]


def resolve_source(identifier: str | int | Path, root: Path) -> Path:
    """A source dataset folder: a path to a folder, or an id / full name looked up in ``root``."""
    if isinstance(identifier, Path) or (
        isinstance(identifier, str) and ("/" in identifier or os.sep in identifier)
    ):
        p = Path(identifier)
        if not p.is_dir():
            raise InputDataError(f"Source dataset folder {p} does not exist.")
        return p
    return find_dataset(identifier, root)


def read_source(folder: Path) -> SourceDataset:
    """Read and check an ordinary nnU-Net raw dataset folder (dataset.json, imagesTr, labelsTr, imagesTs)."""
    folder = Path(folder)
    dj_path = folder / "dataset.json"
    if not dj_path.is_file():
        raise InputDataError(f"{dj_path} does not exist: {folder} is not an nnU-Net raw dataset folder.")
    dj = load_json(dj_path)
    where = str(dj_path)
    if MTMD_KEY in dj:
        raise InputDataError(
            f"{where} already has a '{MTMD_KEY}' block: {folder.name} is a merged multi-domain dataset. "
            "Merge the original single-domain datasets instead."
        )
    if "dataset" in dj:
        raise InputDataError(
            f"{where} lists its files under 'dataset'; nnUNetv2_mtmd_merge reads only the imagesTr/labelsTr "
            "folder layout. Copy the files into imagesTr/labelsTr first."
        )
    if "regions_class_order" in dj:
        raise InputDataError(
            f"{where} has 'regions_class_order': region-based labels are not supported by "
            "nnUNetv2_mtmd_merge."
        )
    fe = dj.get("file_ending")
    if not isinstance(fe, str) or not fe:
        raise InputDataError(f"{where}: missing 'file_ending' (e.g. \".nii.gz\").")
    if fe not in SUPPORTED_FILE_ENDINGS:
        raise InputDataError(
            f"{where}['file_ending'] is {fe!r}; nnUNetv2_mtmd_merge supports "
            f"{', '.join(SUPPORTED_FILE_ENDINGS)}. "
            "Convert the dataset (e.g. to .nii.gz) first."
        )
    channels = _channel_names(dj, where)
    labels = parse_source_labels(dj.get("labels"), where)
    images_tr = folder / "imagesTr"
    if not images_tr.is_dir():
        raise InputDataError(f"{images_tr} does not exist: every source dataset needs training images.")
    train = list_cases(images_tr, fe, num_channels=len(channels))
    if not train:
        raise InputDataError(
            f"{images_tr} contains no training cases (expected files like <case>_0000{fe}): the source "
            f"dataset {folder.name} is empty."
        )
    labels_tr = folder / "labelsTr"
    train_labels = {}
    for case in train:
        lf = labels_tr / f"{case}{fe}"
        if not lf.is_file():
            raise InputDataError(
                f"Missing label file {lf} for training case '{case}' of {folder.name}. Every case in "
                "imagesTr needs labelsTr/<case><file_ending>; add it or remove the case's images."
            )
        train_labels[case] = lf
    if labels_tr.is_dir():
        orphans = sorted(
            p.name for p in labels_tr.iterdir() if p.name.endswith(fe) and p.name[: -len(fe)] not in train
        )
        if orphans:
            logger.warning(
                "%s: label files without images are ignored: %s", labels_tr, ", ".join(orphans[:5])
            )
    n_declared = dj.get("numTraining")
    if n_declared is not None and n_declared != len(train):
        logger.warning(
            "%s: numTraining is %s but imagesTr holds %d cases; using the files.",
            where,
            n_declared,
            len(train),
        )
    test = list_cases(folder / "imagesTs", fe, num_channels=len(channels))
    test_labels = {
        c: folder / "labelsTs" / f"{c}{fe}" for c in test if (folder / "labelsTs" / f"{c}{fe}").is_file()
    }
    return SourceDataset(folder, dj, channels, fe, labels, train, train_labels, test, test_labels)


def merged_channel_names(
    sources: Sequence[SourceDataset], channel_names: Sequence[str] | None = None
) -> list[str]:
    """The merged image channel names (without the code channel).

    Channel counts must agree. Without ``channel_names`` the names must agree too; with it they may
    differ, and differing nnU-Net normalization schemes are logged as a warning."""
    listing = "; ".join(f"{s.name}: {len(s.channel_names)} ({', '.join(s.channel_names)})" for s in sources)
    if len({len(s.channel_names) for s in sources}) > 1:
        raise InputDataError(
            f"The source datasets have different numbers of input channels ({listing}). All domains must "
            "provide the same channels in the same order; add or drop channels in the sources first."
        )
    n = len(sources[0].channel_names)
    if channel_names is None:
        if len({tuple(s.channel_names) for s in sources}) > 1:
            raise InputDataError(
                f"The source datasets' channel_names differ ({listing}). If they are the same kind of input, "
                f"set the merged names explicitly with --channel_names NAME [NAME ...] "
                f"(e.g. --channel_names {' '.join(sources[0].channel_names)})."
            )
        return list(sources[0].channel_names)
    channel_names = [str(c) for c in channel_names]
    if len(channel_names) != n:
        raise InputDataError(
            f"--channel_names gives {len(channel_names)} names ({', '.join(channel_names)}) but the "
            f"sources have {n} channel(s) ({listing})."
        )
    for ch, chosen in enumerate(channel_names):
        schemes = {s.name: normalization_scheme(s.channel_names[ch]) for s in sources}
        target = normalization_scheme(chosen)
        if len(set(schemes.values()) | {target}) > 1:
            logger.warning(
                "Channel %d: the sources' names select different nnU-Net normalizations (%s); the merged "
                "dataset uses '%s' -> %s for all of them.",
                ch,
                ", ".join(
                    f"{k}: '{s.channel_names[ch]}' -> {v}" for (k, v), s in zip(schemes.items(), sources)
                ),
                chosen,
                target,
            )
    return channel_names


def default_domain_names(sources: Sequence[SourceDataset]) -> list[str]:
    """Domain names derived from the source dataset names (``Dataset901_Lumbar_MR`` -> ``LumbarMR``)."""
    return [sanitize_domain_name(s.name) for s in sources]


def check_domain_names(names: Sequence[str], n_sources: int) -> list[str]:
    """Validate user-given domain names: one per source, unique, safe as file-name prefixes."""
    names = list(names)
    if len(names) != n_sources:
        raise InputDataError(
            f"--domains gives {len(names)} name(s) ({' '.join(map(str, names))}) for {n_sources} source "
            "dataset(s); give exactly one domain name per dataset, in the same order."
        )
    for n in names:
        validate_domain_name(n, "--domains")
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise DomainSpecError(
            f"--domains: the domain name(s) {', '.join(repr(n) for n in dups)} are given more than once; "
            "names must be unique."
        )
    return names


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
    if not sources:
        raise InputDataError("No source datasets given (-d): give one nnU-Net raw dataset per domain.")
    raw_root = Path(raw_root) if raw_root is not None else env_folder("nnUNet_raw")
    source_root = Path(source_root) if source_root is not None else raw_root
    if preprocessed_root is None and os.environ.get("nnUNet_preprocessed"):
        preprocessed_root = Path(os.environ["nnUNet_preprocessed"])

    folders = [resolve_source(s, source_root) for s in sources]
    resolved = [f.resolve() for f in folders]
    dup_src = sorted({str(f) for f in resolved if resolved.count(f) > 1})
    if dup_src:
        raise InputDataError(f"Source dataset(s) given more than once: {', '.join(dup_src)}.")
    if domain_names is not None:
        domain_names = check_domain_names(domain_names, len(folders))

    # output id: refuse existing datasets unless overwrite; never replace a source
    in_raw = dataset_id_in_use(output_id, [raw_root])
    in_pre = dataset_id_in_use(output_id, [preprocessed_root]) if preprocessed_root else []
    if (in_raw or in_pre) and not overwrite:
        raise OutputExistsError(
            f"Dataset id {output_id} is already used by {', '.join(str(p) for p in in_raw + in_pre)}. "
            "Choose another output id (-o) or pass --overwrite to replace the raw dataset."
        )
    clash = [p for p in in_raw if p.resolve() in resolved]
    if clash:
        raise InputDataError(
            f"Output id {output_id} is the id of source dataset {clash[0]}; choose a different output id "
            "(-o)."
        )

    srcs = [read_source(f) for f in folders]
    if domain_names is None:
        domain_names = check_domain_names(default_domain_names(srcs), len(srcs))
    endings = {s.file_ending for s in srcs}
    if len(endings) > 1:
        raise InputDataError(
            "The source datasets use different file endings ("
            + "; ".join(f"{s.name}: {s.file_ending}" for s in srcs)
            + "). Convert them to one format first."
        )
    fe = srcs[0].file_ending
    rw = {s.name: s.dataset_json.get("overwrite_image_reader_writer") for s in srcs}
    if len(set(rw.values())) > 1:
        raise InputDataError(
            f"The source datasets set different 'overwrite_image_reader_writer' values: {rw}."
        )
    chans = merged_channel_names(srcs, channel_names)
    n_ch = len(chans)
    spec = build_domain_spec(srcs, domain_names, n_ch)
    label_dtype = _label_dtype(spec.num_classes - 1)

    final = raw_root / f"Dataset{output_id:03d}_{name}"
    n_total = sum(len(s.train_cases) + len(s.test_cases) for s in srcs)
    n_train = [0] * len(srcs)
    n_test = [0] * len(srcs)
    dropped: list[str] = []
    seen: dict[str, tuple[str, str, str]] = {}  # image digest -> (merged case id, domain, split)
    with atomic_output_dir(final, overwrite=True) as tmp:
        for sub in ("imagesTr", "labelsTr"):
            (tmp / sub).mkdir()
        bar = tqdm(total=n_total, desc=f"merge -> {final.name}", unit="case", disable=not progress)
        for k, (src, dom) in enumerate(zip(srcs, spec.domains)):
            mapping = dom.original_to_unified()
            for split in ("Tr", "Ts"):
                cases = src.train_cases if split == "Tr" else src.test_cases
                labs = src.train_labels if split == "Tr" else src.test_labels
                if cases:
                    (tmp / f"images{split}").mkdir(exist_ok=True)
                if labs:
                    (tmp / f"labels{split}").mkdir(exist_ok=True)
                for case, files in cases.items():
                    bar.update(1)
                    new_id = dom.case_id(case)
                    imgs = _read_case(files, case, src.name)
                    lab_out = None
                    if case in labs:
                        lab_img, remapped = _read_label(labs[case], imgs[0], files[0], src, mapping)
                        lab_out = sitk.GetImageFromArray(remapped.astype(label_dtype))
                        lab_out.CopyInformation(lab_img)
                    if check_duplicates:
                        dig = _digest(imgs)
                        if dig in seen:
                            o_id, o_dom, o_split = seen[dig]
                            droppable = o_dom == dom.name and split == "Tr" and o_split == "Tr"
                            if droppable and drop_duplicates:
                                logger.warning(
                                    "Case '%s' of %s has exactly the same image as merged case '%s'; "
                                    "dropped (drop duplicates).",
                                    case,
                                    src.name,
                                    o_id,
                                )
                                dropped.append(new_id)
                                continue
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
                        else:
                            seen[dig] = (new_id, dom.name, split)
                    for ch, f in enumerate(files):
                        shutil.copyfile(f, safe_child(tmp / f"images{split}", f"{new_id}_{ch:04d}{fe}"))
                    sitk.WriteImage(
                        constant_like(imgs[0], float(dom.code)),
                        str(safe_child(tmp / f"images{split}", f"{new_id}_{n_ch:04d}{fe}")),
                        True,
                    )
                    if lab_out is not None:
                        sitk.WriteImage(
                            lab_out, str(safe_child(tmp / f"labels{split}", f"{new_id}{fe}")), True
                        )
                    if split == "Tr":
                        n_train[k] += 1
                    else:
                        n_test[k] += 1
        bar.close()
        spec = dataclasses.replace(
            spec,
            domains=tuple(
                dataclasses.replace(d, num_cases=n_train[k], num_test_cases=n_test[k])
                for k, d in enumerate(spec.domains)
            ),
        )
        dj: dict[str, Any] = {
            "channel_names": {**{str(i): c for i, c in enumerate(chans)}, str(n_ch): CODE_CHANNEL_NAME},
            "labels": spec.label_names(),
            "numTraining": sum(n_train),
            "file_ending": fe,
            "name": name,
            "description": "Multi-domain dataset merged by nnunetv2-mtmd (nnUNetv2_mtmd_merge) from: "
            + "; ".join(f"{d.name} (code {d.code}) = {d.source_dataset}" for d in spec.domains)
            + f". The last channel ({n_ch}) is the domain code.",
        }
        if rw[srcs[0].name] is not None:
            dj["overwrite_image_reader_writer"] = rw[srcs[0].name]
        dj[MTMD_KEY] = spec.to_json()
        save_json(dj, tmp / "dataset.json")
        DomainSpec.from_dataset_json(tmp / "dataset.json")  # re-parse what was written
    if overwrite:
        for p in in_raw:
            if p.resolve() != final.resolve() and p.exists():
                logger.warning("Removing %s (replaced by %s, --overwrite).", p, final.name)
                shutil.rmtree(p)
        for p in in_pre:
            logger.warning("%s is now stale: re-run nnUNetv2_plan_and_preprocess -d %d.", p, output_id)
    secs = time.perf_counter() - t0
    logger.info(
        "Wrote %s: %d training cases (%s), %d test cases, %d labels incl. background, %d input channels "
        "(%d image + code), %.1f s.",
        final,
        sum(n_train),
        ", ".join(f"{d.name} {d.num_cases}" for d in spec.domains),
        sum(n_test),
        spec.num_classes,
        n_ch + 1,
        n_ch,
        secs,
    )
    return MergeResult(final, spec, sum(n_train), sum(n_test), dropped, secs)
