"""The source datasets of a merge: reading and checking them (part of ``nnUNetv2_mtmd_merge``).

Each source is an ordinary single-domain nnU-Net raw dataset. :func:`read_source` reads its
dataset.json and case lists and refuses what the merge cannot carry over (merged datasets, the
``dataset`` file list, region-based or ignore labels, unsupported file endings, missing label files);
:func:`merged_channel_names` and :func:`check_domain_names` check that the sources fit together and
that the domain names are usable. The merge itself is :mod:`nnunetv2_mtmd.conversion.merge`, which
re-exports every public name defined here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnunetv2_mtmd.domains import MTMD_KEY, sanitize_domain_name, validate_domain_name
from nnunetv2_mtmd.errors import DomainSpecError, InputDataError
from nnunetv2_mtmd.io import find_dataset, list_cases, load_json

logger = logging.getLogger(__name__)

#: File endings the merge can copy byte-for-byte and read with SimpleITK (single-file formats only;
#: ``.mhd`` is excluded because its header names a separate ``.raw`` file).
SUPPORTED_FILE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".gipl")
#: Fallback of nnU-Net's channel-name -> normalization table (used only if nnunetv2 moved it).
_FALLBACK_SCHEMES = {
    "ct": "CTNormalization",
    "nonorm": "NoNormalization",
    "zscore": "ZScoreNormalization",
    "rescale_to_0_1": "RescaleTo01Normalization",
    "rgb_to_0_1": "RGBTo01Normalization",
}


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
