"""Source datasets, the Individual baselines' splits and their labels in the unified space."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunetv2_mtmd.apps.study.constants import REAL_DOMAIN_NAMES, REALDATA_DIR
from nnunetv2_mtmd.domains import Domain, DomainSpec, sanitize_domain_name, validate_domain_name
from nnunetv2_mtmd.errors import InputDataError

# ---------------------------------------------------------------------------------------- splits
Split = dict[str, list[str]]


def strip_domain_prefix(case_id: str, domain: Domain) -> str:
    """``"lumbar_myoseg_vb3_01"`` -> ``"myoseg_vb3_01"`` for domain ``lumbar`` (the source's case id)."""
    prefix = f"{domain.name}_"
    if not case_id.startswith(prefix) or len(case_id) == len(prefix):
        raise InputDataError(f"Case '{case_id}' is not a case of domain '{domain.name}' (expected '{prefix}<id>').")
    return case_id[len(prefix):]


def individual_splits(merged_splits: Sequence[Mapping[str, Sequence[str]]], spec: DomainSpec) -> dict[str, list[Split]]:
    """The splits of every source dataset that hold out the SAME cases as the merged split.

    Fold ``i`` of domain ``d`` trains on the fold's training cases of ``d`` and validates on its
    validation cases of ``d``, with the ``<domain>_`` prefix removed. Returns ``{domain name: splits}``.
    Raises :class:`InputDataError` if a fold has no training or no validation case of a domain (a
    domain with fewer cases than folds)."""
    out: dict[str, list[Split]] = {d.name: [] for d in spec.domains}
    for i, fold in enumerate(merged_splits):
        for d in spec.domains:
            part = {}
            for key in ("train", "val"):
                ids = [strip_domain_prefix(c, d) for c in fold[key] if spec.domain_of_case(c).name == d.name]
                if not ids:
                    raise InputDataError(
                        f"Fold {i} of the merged split has no {key} case of domain '{d.name}', so its Individual "
                        f"model cannot be {'trained' if key == 'train' else 'validated'}: every domain needs at "
                        f"least {len(merged_splits)} cases for a {len(merged_splits)}-fold split."
                    )
                part[key] = sorted(ids)
            out[d.name].append(part)
    return out


# --------------------------------------------------------------------------------- label remap
def remap_labels(arr: np.ndarray, mapping: Mapping[int, int], where: str = "label map") -> np.ndarray:
    """Map every label id of ``arr`` through ``mapping`` (e.g. original -> unified ids of one domain).

    Ids absent from ``mapping`` raise :class:`InputDataError`. Returns uint8 (uint16 beyond 255)."""
    arr = np.asarray(arr)
    present = np.unique(arr)
    unknown = sorted(int(v) for v in present if int(v) not in mapping)
    if unknown:
        raise InputDataError(
            f"{where} holds label ids {unknown} that the domain does not declare (known: {sorted(mapping)})."
        )
    top = max(max(mapping.values()), 0)
    lut = np.zeros(max(int(present.max()) if present.size else 0, max(mapping)) + 1, dtype=np.int64)
    for k, v in mapping.items():
        lut[int(k)] = int(v)
    return lut[arr.astype(np.int64)].astype(np.uint8 if top <= 255 else np.uint16)


def unify_individual_prediction(src: Path, dst: Path, domain: Domain) -> None:
    """Write an Individual model's prediction ``src`` (original label ids of ``domain``) as ``dst`` in
    the merged dataset's unified label space, same geometry."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(src))
    out = sitk.GetImageFromArray(remap_labels(sitk.GetArrayFromImage(img), domain.original_to_unified(), str(src)))
    out.CopyInformation(img)
    sitk.WriteImage(out, str(dst), True)


# ----------------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class Source:
    """One source dataset (one domain)."""

    folder: Path
    domain: str

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def dataset_id(self) -> int:
        return int(self.name[7:10])


def find_sources(folder: Path, domains: Sequence[str] | None = None) -> list[Source]:
    """The source datasets in ``folder``: every ``DatasetXXX_*`` subfolder with a dataset.json, sorted.

    Domain names: ``domains`` if given, the real datasets' names (lumbar, sij, pelvis) for them,
    else derived from the dataset names."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputDataError(
            f"Source folder {folder} does not exist. The real data is expected in {REALDATA_DIR} (see "
            "dataset_conversion/merge_real_musculoskeletal.py); pass --sources DIR holding DatasetXXX_* raw datasets."
        )
    found = sorted(p for p in folder.iterdir() if p.is_dir() and re.match(r"^Dataset\d{3}_.+", p.name)
                   and (p / "dataset.json").is_file())
    if len(found) < 2:
        raise InputDataError(
            f"{folder} holds {len(found)} nnU-Net raw dataset(s) (DatasetXXX_*/dataset.json); the study needs at "
            "least two source datasets (one per domain)."
        )
    if domains is None:
        domains = [REAL_DOMAIN_NAMES.get(p.name) or sanitize_domain_name(p.name) for p in found]
    elif len(domains) != len(found):
        raise InputDataError(
            f"--domains gives {len(domains)} names for the {len(found)} datasets in {folder} "
            f"({', '.join(p.name for p in found)}); give one per dataset, in this (sorted) order."
        )
    for d in domains:
        validate_domain_name(d, "--domains")
    ids = [int(p.name[7:10]) for p in found]
    if len(set(ids)) != len(ids):
        raise InputDataError(f"Dataset ids in {folder} are not unique: {[p.name for p in found]}.")
    return [Source(p, d) for p, d in zip(found, domains)]
