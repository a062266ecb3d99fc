"""The data half of ``nnUNetv2_mtmd_add_domain``: the K+1 merged raw dataset (docs/add_domain.md).

A trained multi-domain model knows K domains (the domain block of its dataset.json). Adding a new
ordinary nnU-Net raw dataset as domain K+1 writes a merged raw dataset that holds

* the NEW domain's cases only (the old domains' images are not needed: their shared convolutions,
  DSBN rows and heads come from the trained model), as :mod:`nnunetv2_mtmd.conversion.merge` writes
  them: case ids ``<domain>_<case>``, channel files copied byte for byte, the code channel (value
  K+1) added, labels remapped into the unified space;
* a dataset.json with the model's channel names, the unified labels of the model extended by the
  new domain's (ids ``L+1 ..`` in the order of their original ids, named ``<domain>_<label>``) and
  the K+1 domain block. The old domains keep name, code, source dataset and unified ids; their
  ``num_cases`` / ``num_test_cases`` are 0 because this dataset holds none of their cases (the
  block counts what the dataset holds). ``mtmd_add_domain`` records the model the old domains come
  from.

The model side (locating the trained model, its plans, the checkpoint) lives in
:mod:`nnunetv2_mtmd.training.add_domain`, which calls :func:`write_new_domain_dataset`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from nnunetv2_mtmd.conversion.merge import _CaseWriter, _label_dtype, _merged_dataset_json
from nnunetv2_mtmd.conversion.merge_sources import SourceDataset, normalization_scheme
from nnunetv2_mtmd.domains import Domain, DomainLabel, DomainSpec, validate_domain_name
from nnunetv2_mtmd.errors import DomainSpecError, InputDataError
from nnunetv2_mtmd.io import read_image, save_json

logger = logging.getLogger(__name__)

__all__ = [
    "ADD_DOMAIN_KEY",
    "RECORD_VERSION",
    "SPACING_RTOL",
    "NewDomainData",
    "check_new_channels",
    "extend_domain_spec",
    "median_spacing",
    "read_record",
    "spacing_mismatch",
    "write_new_domain_dataset",
]

#: Key of the provenance record in the new dataset.json and in the new plans.
ADD_DOMAIN_KEY = "mtmd_add_domain"
#: Version of the record written under ADD_DOMAIN_KEY.
RECORD_VERSION = 1
#: Relative spacing difference between the new domain's median spacing and the plans' target spacing
#: above which a warning is logged (nnU-Net resamples every case to the plans' spacing anyway, so it
#: is only a warning: a large factor means strong resampling of the new domain's images).
SPACING_RTOL = 0.25


def extend_domain_spec(old: DomainSpec, source: SourceDataset, name: str) -> DomainSpec:
    """The K+1 domain block: the model's K domains, then ``name`` with the labels of ``source``.

    The old domains keep name, code, source dataset and unified ids (num_cases 0: the new dataset
    holds none of their cases); the new domain gets code K+1 and unified ids ``L+1 ..`` (``L`` the
    model's number of foreground labels) in the order of its original ids. Raises
    :class:`DomainSpecError` when ``name`` is not a valid domain name or the model already has it."""
    validate_domain_name(name, "new domain name (--domain)")
    if name in old.names:
        raise DomainSpecError(
            f"The model already has a domain '{name}' (its domains: {', '.join(old.names)}). Choose another "
            "name with --domain; adding a domain updates only the NEW domain's layers, so an existing domain "
            "cannot be extended this way."
        )
    first = old.num_classes  # background + L labels: the next unified id is L + 1
    labels = tuple(DomainLabel(lname, oid, first + i) for i, (oid, lname) in enumerate(source.labels.items()))
    kept = tuple(Domain(d.name, d.code, d.source_dataset, d.labels, 0, 0) for d in old.domains)
    new = Domain(name, old.num_domains + 1, source.name, labels, len(source.train_cases), len(source.test_cases))
    return DomainSpec((*kept, new), code_channel=old.code_channel)


def check_new_channels(
    model_channels: Sequence[str], source: SourceDataset, channel_names: Sequence[str] | None, where: str
) -> None:
    """Check that the new dataset's image channels fit the model's (``model_channels``: its channel
    names without the code channel; ``where``: the model's dataset.json, for messages).

    The count must match. The names must match too, unless ``channel_names`` is given (then it must be
    the model's names: the model's plans fix the normalization of each channel); a source channel
    whose name selects another nnU-Net normalization than the model's only warns."""
    src_where = source.folder / "dataset.json"
    if len(source.channel_names) != len(model_channels):
        raise InputDataError(
            f"{src_where} has {len(source.channel_names)} image channel(s) {source.channel_names}, the model "
            f"({where}) expects {len(model_channels)}: {list(model_channels)} (plus its domain code channel). "
            "The new domain must have the model's image channels; convert the dataset first."
        )
    if channel_names is not None:
        if list(channel_names) != list(model_channels):
            raise InputDataError(
                f"--channel_names {list(channel_names)} must be the model's channel names {list(model_channels)} "
                f"({where}): the model's plans fix how each channel is normalized."
            )
    elif list(source.channel_names) != list(model_channels):
        raise InputDataError(
            f"The channel names of {src_where} {source.channel_names} differ from the model's {list(model_channels)} "
            f"({where}). If they mean the same images, pass --channel_names {' '.join(model_channels)}."
        )
    for i, (s, m) in enumerate(zip(source.channel_names, model_channels)):
        if normalization_scheme(s) != normalization_scheme(m):
            logger.warning(
                "Channel %d: '%s' of %s would be normalized with %s, the model normalizes '%s' with %s; the "
                "model's normalization is used.", i, s, source.name, normalization_scheme(s), m,
                normalization_scheme(m),
            )


def median_spacing(source: SourceDataset) -> list[float]:
    """Median voxel spacing of the source's training images in nnU-Net's axis order (z, y, x for 3D
    files: SimpleITK's spacing reversed), read from channel 0's header."""
    sp = [list(reversed(read_image(files[0]).GetSpacing())) for files in source.train_cases.values()]
    return np.median(np.asarray(sp, dtype=float), 0).tolist()


def spacing_mismatch(
    new_spacing: Sequence[float], plans: dict[str, Any], configuration: str, rtol: float = SPACING_RTOL
) -> str | None:
    """A warning text when ``new_spacing`` (nnU-Net axis order, untransposed) differs from the target
    spacing of ``configuration`` in ``plans`` by more than ``rtol`` in some axis; None otherwise.

    The plans' spacing is in transposed order and has 2 entries for a 2D configuration (the last two
    axes after ``transpose_forward``), so the new spacing is transposed and compared on those axes."""
    target = [float(s) for s in plans["configurations"][configuration]["spacing"]]
    transposed = [float(new_spacing[i]) for i in plans.get("transpose_forward", range(len(new_spacing)))]
    compared = transposed[-len(target):]
    rel = [abs(a - b) / b for a, b in zip(compared, target) if b > 0]
    if rel and max(rel) > rtol:
        return (
            f"The new domain's median spacing {[round(s, 4) for s in compared]} (the plans' axes) differs from "
            f"the plans' {configuration} spacing {target} by up to {max(rel):.0%}; nnU-Net resamples every case "
            "to the plans' spacing, so the new domain's images are resampled by that factor."
        )
    return None


@dataclass
class NewDomainData:
    """What :func:`write_new_domain_dataset` wrote into its folder."""

    spec: DomainSpec
    dataset_json: dict[str, Any]
    num_training: int
    num_test: int


def write_new_domain_dataset(
    folder: Path,
    source: SourceDataset,
    spec: DomainSpec,
    model_dataset_json: dict[str, Any],
    name: str,
    provenance: dict[str, Any],
    progress: bool = False,
) -> NewDomainData:
    """Write the new domain's cases and the K+1 dataset.json into the (empty, temporary) ``folder``.

    ``spec``: from :func:`extend_domain_spec` (last domain = the new one); ``model_dataset_json``: the
    trained model's dataset.json (channel names, file ending, reader/writer); ``provenance``: written
    under :data:`ADD_DOMAIN_KEY`."""
    fe = model_dataset_json["file_ending"]
    if source.file_ending != fe:
        raise InputDataError(
            f"{source.folder / 'dataset.json'} has file_ending '{source.file_ending}', the model's dataset uses "
            f"'{fe}'. Convert the new dataset to {fe} (stock nnUNetv2_predict lists one file ending per model)."
        )
    rw = model_dataset_json.get("overwrite_image_reader_writer")
    if source.dataset_json.get("overwrite_image_reader_writer") not in (None, rw):
        raise InputDataError(
            f"{source.folder / 'dataset.json'} sets overwrite_image_reader_writer "
            f"{source.dataset_json.get('overwrite_image_reader_writer')!r}, the model's dataset {rw!r}."
        )
    k = spec.num_domains - 1
    chans = [model_dataset_json["channel_names"][str(i)] for i in range(spec.code_channel)]
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir()
    writer = _CaseWriter(folder, fe, len(chans), _label_dtype(spec.num_classes - 1), check_duplicates=True,
                         drop_duplicates=False, n_train=[0] * (k + 1), n_test=[0] * (k + 1))
    n_total = len(source.train_cases) + len(source.test_cases)
    bar = tqdm(total=n_total, desc=f"add domain -> {folder.name}", unit="case", disable=not progress)
    writer.write_source(k, source, spec.domains[k], bar)
    bar.close()
    dj = _merged_dataset_json(spec, chans, fe, name, writer.n_train[k], rw)
    dj["description"] = (
        f"Multi-domain dataset written by nnunetv2-mtmd (nnUNetv2_mtmd_add_domain): domain "
        f"'{spec.domains[k].name}' (code {k + 1}) = {source.name} added to the {k} domains of the model "
        f"{provenance.get('source_model_folder', '?')} ({', '.join(spec.names[:k])}); it holds only the new "
        f"domain's cases. The last channel ({len(chans)}) is the domain code."
    )
    dj[ADD_DOMAIN_KEY] = provenance
    save_json(dj, folder / "dataset.json")
    DomainSpec.from_dataset_json(folder / "dataset.json")  # re-parse what was written
    return NewDomainData(spec, dj, writer.n_train[k], writer.n_test[k])


def read_record(plans: dict[str, Any], spec: DomainSpec, where: str = "plans") -> dict[str, Any]:
    """The :data:`ADD_DOMAIN_KEY` record of plans written by :func:`add_domain`, checked against the
    dataset's domain block ``spec`` (the new domain is the last one)."""
    rec = plans.get(ADD_DOMAIN_KEY)
    if not isinstance(rec, dict):
        raise DomainSpecError(
            f"{where} has no '{ADD_DOMAIN_KEY}' record: nnUNetTrainerMTMD_AddDomain trains datasets written by "
            "nnUNetv2_mtmd_add_domain (which records the source model in the plans). Run it first, or train "
            "this dataset with another trainer."
        )
    for key, typ in (("format_version", int), ("source_checkpoint", str), ("source_checkpoint_sha256", str),
                     ("source_domains", list), ("new_domain", str)):
        if not isinstance(rec.get(key), typ):
            raise DomainSpecError(f"{where}['{ADD_DOMAIN_KEY}']['{key}']: expected {typ.__name__}, found "
                                  f"{rec.get(key)!r}. Re-run nnUNetv2_mtmd_add_domain.")
    expected = [*rec["source_domains"], rec["new_domain"]]
    if spec.names != expected:
        raise DomainSpecError(
            f"{where}['{ADD_DOMAIN_KEY}'] describes domains {expected} (source + new), the dataset.json has "
            f"{spec.names}. The plans belong to another dataset; re-run nnUNetv2_mtmd_add_domain."
        )
    return rec
