"""``nnUNetv2_mtmd_add_domain``: a trained K-domain model + a new raw dataset -> the K+1 dataset and plans.

docs/add_domain.md. Given a trained multi-domain model (dataset, trainer, plans, configuration, fold)
and an ordinary nnU-Net raw dataset, :func:`add_domain` writes

* ``nnUNet_raw/DatasetXXX_<name>``: the new domain's cases with their code channel (K+1) and the
  K+1 dataset.json (:mod:`nnunetv2_mtmd.conversion.add_domain`);
* ``nnUNet_preprocessed/DatasetXXX_<name>/{<plans>.json, dataset.json, dataset_fingerprint.json}``
  (the fingerprint is nnU-Net's, of the new domain's cases): the model's own plans
  (same topology, patch size, spacing, normalization, batch size) with one more DSBN row in every
  layer (``norm_op_kwargs['num_domains'] = K+1``) and one more head (``domain_label_ids``), the
  dataset name replaced, and the record :data:`ADD_DOMAIN_KEY` naming the source checkpoint (path and
  SHA-256): ``nnUNetTrainerMTMD_AddDomain`` loads it itself (stock ``-pretrained_weights`` asserts
  that every key but ``.seg_layers.`` matches, which the K+1 network cannot satisfy), and nnU-Net
  copies the plans into the results folder, which thereby records where the old domains came from.

Then ``nnUNetv2_preprocess -d XXX -plans_name <plans> -c <configuration>`` and
``nnUNetv2_train XXX <configuration> FOLD -tr nnUNetTrainerMTMD_AddDomain -p <plans>``.

Both folders are written into temporary folders and renamed into place only when everything
succeeded; a failure leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnunetv2_mtmd.conversion.add_domain import (
    ADD_DOMAIN_KEY,
    RECORD_VERSION,
    NewDomainData,
    check_new_channels,
    extend_domain_spec,
    median_spacing,
    read_record,
    spacing_mismatch,
    write_new_domain_dataset,
)
from nnunetv2_mtmd.conversion.merge import _check_output_name
from nnunetv2_mtmd.conversion.merge_sources import read_source, resolve_source
from nnunetv2_mtmd.domains import DomainSpec, sanitize_domain_name
from nnunetv2_mtmd.errors import DomainSpecError, OutputExistsError
from nnunetv2_mtmd.inference.model import ModelFolderError, load_trained_network, locate_model_folder
from nnunetv2_mtmd.io import dataset_id_in_use, env_folder, environ_set, file_sha256, load_json, save_json

logger = logging.getLogger(__name__)

__all__ = ["ADD_DOMAIN_KEY", "RECORD_VERSION", "AddDomainResult", "add_domain", "extend_plans", "extract_fingerprint",
           "file_sha256", "read_record"]



def extend_plans(plans: dict[str, Any], spec: DomainSpec, dataset_name: str, record: dict[str, Any]) -> dict[str, Any]:
    """The model's ``plans`` for the K+1 dataset ``dataset_name`` (``spec``: its domain block).

    Every configuration whose architecture has ``domain_label_ids`` gets the K+1 ids and, for a
    domain-specific norm, ``num_domains = K+1``; nothing else of the architecture, patch size, spacing,
    normalization or batch size changes. ``record`` is stored under :data:`ADD_DOMAIN_KEY`."""
    out = {**plans, "dataset_name": dataset_name, ADD_DOMAIN_KEY: record}
    configs = {}
    n_changed = 0
    for cname, cfg in plans.get("configurations", {}).items():
        cfg = dict(cfg)
        arch = cfg.get("architecture")
        if isinstance(arch, dict) and "domain_label_ids" in arch.get("arch_kwargs", {}):
            ak = dict(arch["arch_kwargs"])
            ak["domain_label_ids"] = spec.domain_label_ids
            nkw = ak.get("norm_op_kwargs")
            if isinstance(nkw, dict) and "num_domains" in nkw:
                ak["norm_op_kwargs"] = {**nkw, "num_domains": spec.num_domains}
            cfg["architecture"] = {**arch, "arch_kwargs": ak}
            n_changed += 1
        configs[cname] = cfg
    if not n_changed:
        raise DomainSpecError(
            "The model's plans have no configuration with a multi-domain architecture (arch_kwargs without "
            "'domain_label_ids'): they were not made by nnUNetPlannerMTMD."
        )
    out["configurations"] = configs
    return out


@dataclass
class AddDomainResult:
    """What :func:`add_domain` wrote."""

    raw_folder: Path
    preprocessed_folder: Path
    plans_file: Path
    spec: DomainSpec
    record: dict[str, Any]
    num_training: int
    num_test: int
    warnings: list[str] = field(default_factory=list)


def _check_source_network(loc: Any, spec: DomainSpec) -> None:
    """The model's network must have domain-specific norms with K rows and one head per domain."""
    from nnunetv2_mtmd.training.domain_transfer import domain_norms

    network, _, _, _ = load_trained_network(loc, "cpu")
    norms = domain_norms(network)
    if getattr(network, "head_mode", None) != "domain" or not norms:
        raise ModelFolderError(
            f"The model {loc.training_output_dir} has {'one shared head' if norms else 'shared norm layers'}: "
            "adding a domain needs domain-specific norms and one head per domain (a DSL-type scheme, e.g. "
            "nnUNetTrainerMTMD or nnUNetTrainerMTMD_DSL, not a Shared scheme)."
        )
    k = {m.num_domains for m in norms.values()}
    if k != {spec.num_domains}:
        raise ModelFolderError(f"The model's norm layers have {sorted(k)} domain rows, its dataset.json "
                               f"{spec.num_domains} domains.")


def _output_folders(output_id: int, name: str, raw_root: Path, pre_root: Path, results_root: Path | None,
                    overwrite: bool) -> tuple[Path, Path]:
    """The raw and preprocessed output folders, after checking that nothing else uses the id."""
    folder_name = f"Dataset{output_id:03d}_{name}"
    finals = (raw_root / folder_name, pre_root / folder_name)
    used = dataset_id_in_use(output_id, [raw_root, pre_root])
    others = [p for p in used if p.name != folder_name]
    if others or (used and not overwrite):
        raise OutputExistsError(
            f"Dataset id {output_id} is already used by {', '.join(str(p) for p in used)}. Choose another output "
            "id (-o)" + ("" if others else " or pass --overwrite to replace it") + "."
        )
    stale = dataset_id_in_use(output_id, [results_root]) if results_root is not None else []
    if stale:
        if not overwrite:
            raise OutputExistsError(f"nnU-Net results of dataset id {output_id} exist ({stale[0]}): they belong to "
                                    "another dataset. Choose another output id (-o) or remove them.")
        logger.warning("%s holds results of the dataset being replaced; they are stale now.", stale[0])
    return finals


def _commit(tmps: Sequence[Path], finals: Sequence[Path]) -> None:
    """Rename every temporary folder over its final folder; a failure undoes the renames done so far."""
    done: list[Path] = []
    try:
        for tmp, final in zip(tmps, finals):
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            done.append(final)
    except BaseException:
        for final in done:
            shutil.rmtree(final, ignore_errors=True)
        raise


def add_domain(
    dataset: str | int,
    new_dataset: str | int | Path,
    output_id: int,
    fold: int | str,
    name: str | None = None,
    domain: str | None = None,
    trainer: str = "nnUNetTrainerMTMD",
    plans: str = "nnUNetPlans",
    configuration: str = "2d",
    checkpoint_name: str = "checkpoint_final.pth",
    channel_names: Sequence[str] | None = None,
    overwrite: bool = False,
    raw_root: Path | None = None,
    preprocessed_root: Path | None = None,
    results_root: Path | None = None,
    progress: bool = True,
    num_processes: int = 2,
) -> AddDomainResult:
    """Write the K+1 dataset and plans for adding ``new_dataset`` to a trained model (module docstring).

    Args:
        dataset, trainer, plans, configuration, fold, checkpoint_name: the trained model
            (``$nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>/fold_<fold>/<checkpoint_name>``).
        new_dataset: the new ordinary raw dataset: id, full name (looked up in ``raw_root``) or folder.
        output_id, name: the new dataset ``DatasetXXX_<name>``; default name ``<model dataset name>_<domain>``.
        domain: the new domain's name; default the sanitized name of ``new_dataset``.
        channel_names: the model's channel names, to accept a new dataset whose channels are named
            otherwise.
        overwrite: replace existing output folders of this id and name.
        raw_root, preprocessed_root, results_root: default ``$nnUNet_raw``, ``$nnUNet_preprocessed``,
            ``$nnUNet_results``.
        num_processes: worker processes of nnU-Net's fingerprint extraction.
    """
    raw_root = Path(raw_root) if raw_root is not None else env_folder("nnUNet_raw")
    pre_root = Path(preprocessed_root) if preprocessed_root is not None else env_folder("nnUNet_preprocessed")
    res_root = Path(results_root) if results_root is not None else env_folder("nnUNet_results")
    loc = locate_model_folder(dataset, trainer, plans, configuration, fold, checkpoint_name, res_root)
    model_dj = load_json(loc.training_output_dir / "dataset.json")
    old_spec = DomainSpec.from_dataset_json(loc.training_output_dir / "dataset.json")
    old_plans = load_json(loc.training_output_dir / "plans.json")
    if configuration not in old_plans.get("configurations", {}):
        raise ModelFolderError(f"{loc.training_output_dir / 'plans.json'} has no configuration '{configuration}'.")
    source = read_source(resolve_source(new_dataset, raw_root))
    domain = domain if domain is not None else sanitize_domain_name(source.name)
    new_spec = extend_domain_spec(old_spec, source, domain)
    if source.name in {d.source_dataset for d in old_spec.domains}:
        logger.warning("%s is already the source of a domain of the model; it is added again as '%s'.",
                       source.name, domain)
    model_where = str(loc.training_output_dir / "dataset.json")
    check_new_channels([model_dj["channel_names"][str(i)] for i in range(old_spec.code_channel)], source,
                       channel_names, model_where)
    name = name if name is not None else f"{loc.dataset_name.split('_', 1)[1]}_{domain}"
    output_id = _check_output_name(output_id, name)
    raw_final, pre_final = _output_folders(output_id, name, raw_root, pre_root, res_root, overwrite)
    _check_source_network(loc, old_spec)

    warnings = []
    msg = spacing_mismatch(median_spacing(source), old_plans, configuration)
    if msg:
        logger.warning(msg)
        warnings.append(msg)
    record = {
        "format_version": RECORD_VERSION,
        "source_model_folder": str(loc.training_output_dir.resolve()),
        "source_checkpoint": str(loc.checkpoint.resolve()),
        "source_checkpoint_sha256": file_sha256(loc.checkpoint),
        "source_dataset": loc.dataset_name,
        "source_trainer": trainer,
        "source_plans": plans,
        "source_configuration": configuration,
        "source_fold": loc.fold,
        "source_domains": old_spec.names,
        "new_domain": domain,
        "new_source_dataset": source.name,
    }
    final_name = raw_final.name
    new_plans = extend_plans(old_plans, new_spec, final_name, record)
    plans_name = old_plans.get("plans_name", plans)
    # each output is written under its final name inside a temporary parent folder: nnU-Net's fingerprint
    # extractor finds a dataset only by name under $nnUNet_raw / $nnUNet_preprocessed
    parents = [Path(tempfile.mkdtemp(prefix=f".{final_name}.tmp-", dir=_made(r))) for r in (raw_root, pre_root)]
    tmps = [p / final_name for p in parents]
    try:
        tmps[0].mkdir()
        tmps[1].mkdir()
        data: NewDomainData = write_new_domain_dataset(tmps[0], source, new_spec, model_dj, name, record, progress)
        save_json(data.dataset_json, tmps[1] / "dataset.json")
        save_json(new_plans, tmps[1] / f"{plans_name}.json")
        extract_fingerprint(parents[0], parents[1], final_name, num_processes)
        _commit(tmps, (raw_final, pre_final))
    finally:
        for p in parents:
            shutil.rmtree(p, ignore_errors=True)
    logger.info("Wrote %s (%d training, %d test cases of '%s', code %d) and %s (plans %s).", raw_final,
                data.num_training, data.num_test, domain, new_spec.num_domains, pre_final, plans_name)
    return AddDomainResult(raw_final, pre_final, pre_final / f"{plans_name}.json", new_spec, record,
                           data.num_training, data.num_test, warnings)


@contextlib.contextmanager
def _nnunet_roots(raw: Path, preprocessed: Path) -> Iterator[None]:
    """Within the block ``$nnUNet_raw`` and ``$nnUNet_preprocessed`` name these folders (nnunetv2 2.8.1
    reads them from the environment at every use, and its spawned workers inherit them)."""
    with environ_set({"nnUNet_raw": str(raw), "nnUNet_preprocessed": str(preprocessed)}):
        yield


def extract_fingerprint(raw_root: Path, preprocessed_root: Path, dataset_name: str, num_processes: int) -> None:
    """nnU-Net's dataset fingerprint of ``raw_root/dataset_name`` into
    ``preprocessed_root/dataset_name/dataset_fingerprint.json`` (stock ``nnUNetv2_train`` copies it into
    the results folder; the plans are not re-planned from it)."""
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor

    with _nnunet_roots(raw_root, preprocessed_root):
        fpe = DatasetFingerprintExtractor(dataset_name, num_processes=max(1, int(num_processes)))
        fpe.show_progress_bar = False
        fpe.run()


def _made(root: Path) -> Path:
    """``root``, created if missing (nnU-Net's folders may not exist yet)."""
    root.mkdir(parents=True, exist_ok=True)
    return root
