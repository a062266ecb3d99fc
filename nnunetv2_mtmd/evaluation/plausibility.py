"""Shape plausibility of predicted label maps: how far each predicted structure lies from the shapes the
MJAP label autoencoder learned (issue 24, part 3).

The frozen autoencoder of an MJAP model (Boutillon et al. 2022, Sec. 2.c: trained to reconstruct the
training label maps through a small code) maps a plausible mask to almost itself and an implausible one
(specks, holes, a swapped or a missing part) towards the nearest shape it knows
(``tests/training/test_autoencoder_phase.py``). The **plausibility** of a predicted structure is the Dice
between the prediction and its reconstruction, pooled over the case's slices that hold any structure of
its domain (2D autoencoder; a 3D one sees the whole volume): 1 = a shape the prior reproduces exactly,
lower = further from the learned shapes. It needs no reference, so it can flag doubtful predictions of
unlabelled cases; whether low scores find the bad predictions is measured, not assumed
(docs/plausibility.md).

The prediction is brought into the geometry the autoencoder was trained in, as nnU-Net's preprocessing
does for segmentations: axes transposed by the plans' ``transpose_forward``, resampled to the
configuration's spacing with its segmentation resampling function (the crop to the image's nonzero
region is left out: it only removes background).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnunetv2_mtmd.architectures.label_autoencoder import LabelAutoencoder
from nnunetv2_mtmd.domains import DomainSpec
from nnunetv2_mtmd.errors import InputDataError

logger = logging.getLogger(__name__)

PLAUSIBILITY_COLUMNS: tuple[str, ...] = ("case", "domain", "structure", "plausibility", "predicted_voxels",
                                         "maps")


def plausibility_scores(ae: LabelAutoencoder, labels: np.ndarray, domain: int, spec: DomainSpec,
                        device: torch.device | str = "cpu") -> dict[str, dict[str, float]]:
    """Per structure of domain ``domain``: ``{"plausibility": Dice(prediction, reconstruction),
    "predicted_voxels": n, "maps": m}`` for one case.

    ``labels``: the case's label map in the autoencoder's geometry, unified ids, ``(Z, X, Y)`` for a 2D
    autoencoder (slices along axis 0, as nnU-Net's 2D configuration cuts them) or ``(X, Y, Z)`` for a 3D
    one. Only the maps (slices, or the volume) holding any structure of the domain are reconstructed;
    a structure absent from the prediction and its reconstruction is NaN (nothing to judge), one
    predicted nowhere but reconstructed is 0."""
    from nnunetv2_mtmd.training.autoencoder_eval import padded_stack, reconstruct

    dom = spec.domains[domain]
    ids = [lab.unified_id for lab in dom.labels]
    labels = np.asarray(labels)
    dim = len(ae.total_stride)
    if labels.ndim != 3:
        raise InputDataError(f"Plausibility needs a 3D label array (2D images as one slice), found shape "
                             f"{labels.shape}.")
    own = np.isin(labels, ids)
    foreign = int((labels != 0).sum() - own.sum())
    if foreign:
        logger.debug("%d voxels of labels of another domain ignored (set to background)", foreign)
    labels = np.where(own, labels, 0).astype(np.int64)
    maps = [m for m in (labels if dim == 2 else [labels]) if m.any()]
    out: dict[str, dict[str, float]] = {}
    if not maps:
        return {lab.name: {"plausibility": float("nan"), "predicted_voxels": 0, "maps": 0} for lab in dom.labels}
    stack = padded_stack(maps, ae.total_stride)
    rec = reconstruct(ae, stack, domain, device)
    pred = stack[:, 0]
    for lab in dom.labels:
        p, r = pred == lab.unified_id, rec == lab.unified_id
        denom = int(p.sum() + r.sum())
        out[lab.name] = {"plausibility": 2.0 * int((p & r).sum()) / denom if denom else float("nan"),
                         "predicted_voxels": int(p.sum()), "maps": len(maps)}
    return out


def to_autoencoder_geometry(seg: np.ndarray, spacing: Sequence[float], plans_manager: Any,
                            configuration_manager: Any) -> np.ndarray:
    """A label map ``(Z, Y, X)`` with ``spacing`` (z, y, x) as read by nnU-Net's reader, transposed and
    resampled as nnU-Net's preprocessing does for segmentations (no crop): ``(Z', X', Y')`` int."""
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

    tf = list(plans_manager.transpose_forward)
    seg = np.asarray(seg)[None].transpose([0, *[i + 1 for i in tf]])
    spacing = [float(spacing[i]) for i in tf]
    target = list(configuration_manager.spacing)
    if len(target) < len(spacing):  # 2D configuration: the slice axis keeps its spacing (as nnU-Net)
        target = [spacing[0], *target]
    new_shape = compute_new_shape(seg.shape[1:], spacing, target)
    out = configuration_manager.resampling_fn_seg(seg, new_shape, spacing, target)
    return np.asarray(out[0]).round().astype(np.int64)


def load_model_autoencoder(dataset: str | int, configuration: str, fold: int | str, trainer: str,
                           plans: str = "nnUNetPlans", autoencoder: Path | None = None,
                           device: torch.device | str = "cpu") -> tuple[LabelAutoencoder, Any, Any, DomainSpec, Path]:
    """The frozen autoencoder a trained MJAP model used (``label_autoencoder.pth`` of its fold folder, or
    ``autoencoder``), rebuilt from the dataset's plans; with the plans and configuration managers and the
    domain spec. Returns ``(ae, plans_manager, configuration_manager, spec, file)``."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunetv2_mtmd.io import env_folder, find_dataset, load_json
    from nnunetv2_mtmd.training.autoencoder_cache import AE_RECORD_FILE
    from nnunetv2_mtmd.training.autoencoder_job import job_from_plans
    from nnunetv2_mtmd.training.autoencoder_phase import AE_FILE, load_state

    results = find_dataset(dataset, env_folder("nnUNet_results"))
    fold_dir = results / f"{trainer}__{plans}__{configuration}" / f"fold_{fold}"
    file = Path(autoencoder) if autoencoder is not None else fold_dir / AE_FILE
    if not file.is_file():
        raise InputDataError(
            f"No label autoencoder at {file}: plausibility needs a model trained with MJAP (e.g. -tr "
            "nnUNetTrainerMTMD or nnUNetTrainerMTMD_DSL_MJAP), whose fold folder holds label_autoencoder.pth, "
            "or --autoencoder FILE (e.g. from $nnUNet_results/<Dataset>/mtmd_label_autoencoders/).")
    record = file.parent / AE_RECORD_FILE
    variant = load_json(record).get("variant", "multi_domain") if record.is_file() else "multi_domain"
    job = job_from_plans(results.name, configuration, fold, plans, variant=variant)
    ae = job.build()
    try:
        load_state(file, ae, None, torch.device(device))
    except RuntimeError as e:  # a state dict of another architecture
        raise InputDataError(f"{file} does not fit the autoencoder the plans {plans!r} of {results.name} build "
                             f"({variant}): {str(e).splitlines()[0]}. Give the autoencoder of this model "
                             "(its fold folder's label_autoencoder.pth).") from None
    ae.eval()
    for p in ae.parameters():
        p.requires_grad_(False)
    pm = PlansManager(load_json(find_dataset(results.name, env_folder("nnUNet_preprocessed")) / f"{plans}.json"))
    return ae, pm, pm.get_configuration(configuration), job.domain_spec, file


def score_folder(pred_dir: Path, out_dir: Path, ae: LabelAutoencoder, plans_manager: Any, configuration_manager: Any,
                 spec: DomainSpec, file_ending: str, domain: str | None = None, metrics_csv: Path | None = None,
                 lowest: int = 10, device: torch.device | str = "cpu", overwrite: bool = False) -> dict[str, Any]:
    """Plausibility of every ``<case><file_ending>`` prediction of ``pred_dir`` (unified labels) into
    ``out_dir``: ``plausibility.csv`` (:data:`PLAUSIBILITY_COLUMNS`) and ``plausibility.json`` (per domain
    and structure the mean, the ``lowest`` rows and, with ``metrics_csv`` (``nnUNetv2_mtmd_evaluate``'s
    metrics.csv of the same predictions), each row's Dice and the Spearman correlation between
    plausibility and Dice, pooled and per domain). The domain of a case is its case-id prefix, or
    ``domain`` for every case. All or nothing."""
    import json

    from scipy.stats import spearmanr

    from nnunetv2_mtmd.evaluation.evaluate import _json_safe, read_csv, write_csv
    from nnunetv2_mtmd.io import atomic_output_dir

    pred_dir = Path(pred_dir)
    files = sorted(f for f in pred_dir.iterdir() if f.name.endswith(file_ending)) if pred_dir.is_dir() else []
    if not files:
        raise InputDataError(f"No '*{file_ending}' predictions in {pred_dir}.")
    names = [d.name for d in spec.domains]
    if domain is not None and domain not in names:
        raise InputDataError(f"--domain {domain!r} is not a domain of the dataset ({', '.join(names)}).")
    rw = plans_manager.image_reader_writer_class()
    rows = []
    for f in files:
        case = f.name[: -len(file_ending)]
        dom = spec.domains[names.index(domain)] if domain is not None else spec.domain_of_case(case)
        seg, props = rw.read_seg(str(f))
        labels = to_autoencoder_geometry(seg[0], props["spacing"], plans_manager, configuration_manager)
        for name, v in plausibility_scores(ae, labels, dom.index, spec, device).items():
            rows.append({"case": case, "domain": dom.name, "structure": name, **v})
    dice = None
    if metrics_csv is not None:
        ev = {(r["case"], r["structure"]): float(r["dice"]) for r in read_csv(Path(metrics_csv))}
        missing = [(r["case"], r["structure"]) for r in rows if (r["case"], r["structure"]) not in ev]
        if missing:
            raise InputDataError(f"{metrics_csv} has no Dice for {len(missing)} predicted structures, e.g. "
                                 f"{missing[0]}: give the metrics.csv of nnUNetv2_mtmd_evaluate on these predictions.")
        dice = [ev[(r["case"], r["structure"])] for r in rows]
        for r, d in zip(rows, dice):
            r["dice"] = d

    def spearman(sel: list[int]) -> dict[str, Any]:
        ok = [i for i in sel if rows[i]["plausibility"] == rows[i]["plausibility"] and dice[i] == dice[i]]
        if len(ok) < 3:
            return {"rho": float("nan"), "p": float("nan"), "n": len(ok)}
        rho, p = spearmanr([rows[i]["plausibility"] for i in ok], [dice[i] for i in ok])
        return {"rho": float(rho), "p": float(p), "n": len(ok)}

    summary: dict[str, Any] = {"predictions": str(pred_dir), "cases": len(files), "domains": {}}
    for d in spec.domains:
        drows = [r for r in rows if r["domain"] == d.name]
        if drows:
            summary["domains"][d.name] = {lab.name: float(np.nanmean(vals)) if (vals := [
                r["plausibility"] for r in drows if r["structure"] == lab.name and r["plausibility"] ==
                r["plausibility"]]) else float("nan") for lab in d.labels}
    ranked = sorted((r for r in rows if r["plausibility"] == r["plausibility"]), key=lambda r: r["plausibility"])
    summary["lowest"] = ranked[:lowest]
    if dice is not None:
        summary["spearman"] = {"pooled": spearman(list(range(len(rows)))),
                               **{d: spearman([i for i, r in enumerate(rows) if r["domain"] == d])
                                  for d in summary["domains"]}}
    columns = (*PLAUSIBILITY_COLUMNS, "dice") if dice is not None else PLAUSIBILITY_COLUMNS
    with atomic_output_dir(Path(out_dir), overwrite=overwrite) as tmp:
        write_csv(rows, columns, tmp / "plausibility.csv")
        (tmp / "plausibility.json").write_text(json.dumps(_json_safe(summary), indent=2))
    return summary
