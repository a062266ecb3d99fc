"""Map unified-label predictions back to each domain's original label ids (``nnUNetv2_mtmd_export_labels``).

A multi-domain model predicts in the merged dataset's unified label space (background 0, then every
domain's labels). This module maps every prediction ``PRED/<case><ending>`` back to the label ids of
its domain's source dataset and writes it to ``OUT/<domain>/<case without domain prefix><ending>``
(one subfolder per domain; uint8, or uint16 beyond 255; geometry of the prediction).
nnU-Net's own files in ``PRED`` (``plans.json``, ``dataset.json``, ``predict_from_raw_data_args.json``,
``.npz`` / ``.pkl`` probabilities) are ignored: only files with the dataset's file ending are read.

The domain of a case is determined in this order (the first rule that applies wins):

1. **case-id prefix**: the case id starts with ``<domain>_`` for a known domain (the merged training
   data, and inputs prepared with ``nnUNetv2_mtmd_prepare_input --prefix``);
2. **domain**: the domain given by the user (``--domain NAME`` or code) for all remaining cases;
3. **code channel**: with ``input_folder`` (the folder written by ``nnUNetv2_mtmd_prepare_input``), the
   spatial maximum of ``<input>/<case>_{C:04d}<ending>``, rounded, is the domain code.

A case no rule resolves is an error. A prediction that contains labels of another domain (or labels
outside the unified space) is an error naming the case, the offending labels and the domain's labels:
usually the case was assigned to the wrong domain. The output is written all-or-nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunetv2_mtmd.conversion.merge import remap_labels
from nnunetv2_mtmd.conversion.prepare_input import load_merged_dataset, paths_overlap, resolve_domain
from nnunetv2_mtmd.domains import Domain, DomainSpec
from nnunetv2_mtmd.errors import InputDataError
from nnunetv2_mtmd.io import atomic_output_dir, label_array, read_image, safe_child

logger = logging.getLogger(__name__)


def domain_from_code_channel(code_file: Path, spec: DomainSpec) -> Domain:
    """Domain whose code is the (rounded) spatial maximum of a code-channel image."""
    if not code_file.is_file():
        raise InputDataError(
            f"Code channel {code_file} does not exist: the --input folder must be the folder written by "
            "nnUNetv2_mtmd_prepare_input for these predictions."
        )
    arr = sitk.GetArrayFromImage(read_image(code_file))
    value = float(np.max(arr)) if arr.size else float("nan")
    code = int(round(value)) if np.isfinite(value) else -1
    if not np.isfinite(value) or abs(value - code) > 1e-3 or not 1 <= code <= spec.num_domains:
        raise InputDataError(
            f"Code channel {code_file} has maximum {value}, which is not a domain code of this dataset "
            f"({', '.join(f'{d.code}={d.name}' for d in spec.domains)}). Is it really the last channel "
            "written by nnUNetv2_mtmd_prepare_input?"
        )
    return spec.by_code(code)


def domain_of_prediction(
    case_id: str,
    spec: DomainSpec,
    file_ending: str,
    domain: Domain | None = None,
    input_folder: Path | None = None,
) -> Domain:
    """Domain of one predicted case: its case-id prefix, else ``domain``, else the code channel in
    ``input_folder``."""
    prefix = case_id.split("_", 1)[0]
    if "_" in case_id and prefix in spec.names:
        found = spec.by_name(prefix)
        if domain is not None and domain.name != found.name:
            logger.warning(
                "Case '%s': its prefix names domain '%s', which takes precedence over --domain %s.",
                case_id,
                found.name,
                domain.name,
            )
        return found
    if domain is not None:
        return domain
    if input_folder is not None:
        return domain_from_code_channel(
            Path(input_folder) / f"{case_id}_{spec.code_channel:04d}{file_ending}", spec
        )
    raise InputDataError(
        f"Cannot tell the domain of prediction '{case_id}{file_ending}': its case id does not start with "
        f"'<domain>_' (domains: {', '.join(spec.names)}). Pass --domain NAME, or --input with the folder "
        "written by nnUNetv2_mtmd_prepare_input (its code channel tells the domain)."
    )


def _describe_labels(ids: list[int], spec: DomainSpec) -> str:
    names = {v: k for k, v in spec.label_names().items()}
    return ", ".join(f"{i} ({names.get(i, 'not a label of this dataset')})" for i in ids)


def _check_folders(pred_folder: Path, output_folder: Path, input_folder: Path | None) -> None:
    """The prediction (and ``--input``) folders exist and the output folder lies outside the predictions."""
    if not pred_folder.is_dir():
        raise InputDataError(f"Prediction folder {pred_folder} does not exist.")
    if paths_overlap(pred_folder, output_folder):
        raise InputDataError(
            f"Output folder {output_folder} and prediction folder {pred_folder} overlap; write to a separate "
            "folder."
        )
    if input_folder is not None and not Path(input_folder).is_dir():
        raise InputDataError(f"Input folder {input_folder} (--input) does not exist.")


def _assign_domains(
    preds: list[Path], spec: DomainSpec, fe: str, user_domain: Domain | None, input_folder: Path | None
) -> dict[Path, tuple[str, Domain, str]]:
    """``{prediction: (case id, domain, output file name)}``; two cases with one output file are an error."""
    # resolve every domain first, so that a case no rule resolves fails before anything is read
    assigned = {}
    for p in preds:
        case = p.name[: -len(fe)]
        dom = domain_of_prediction(case, spec, fe, user_domain, input_folder)
        out_name = (case[len(dom.name) + 1 :] if case.startswith(f"{dom.name}_") else case) + fe
        assigned[p] = (case, dom, out_name)
    targets: dict[tuple[str, str], str] = {}
    for case, dom, out_name in assigned.values():
        key = (dom.name, out_name)
        if key in targets:
            raise InputDataError(
                f"Predictions '{targets[key]}' and '{case}' would both be written to {dom.name}/{out_name}; "
                "rename one of them."
            )
        targets[key] = case
    return assigned


def _to_original_labels(p: Path, case: str, dom: Domain, spec: DomainSpec) -> sitk.Image:
    """Prediction ``p`` (case ``case`` of domain ``dom``) in the domain's original label ids."""
    img = read_image(p)
    arr = label_array(img, p)
    mapping = dom.unified_to_original()
    orig, unknown = remap_labels(arr, mapping)
    if unknown:
        raise InputDataError(
            f"Prediction {p} (case '{case}', domain '{dom.name}') contains label(s) "
            f"{_describe_labels(unknown, spec)} that do not belong to domain '{dom.name}' (its "
            f"labels: {_describe_labels([0, *dom.unified_ids], spec)}). Check the case's domain "
            "(case-id prefix, --domain or code channel) and that the prediction comes from this "
            "dataset's model."
        )
    max_id = max(lab.original_id for lab in dom.labels)
    out = sitk.GetImageFromArray(orig.astype(np.uint8 if max_id <= 255 else np.uint16))
    out.CopyInformation(img)
    return out


def export_labels(
    pred_folder: Path,
    output_folder: Path,
    dataset: str | int | Path,
    domain: str | int | None = None,
    input_folder: Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, list[Path]]:
    """Write every prediction of ``pred_folder`` in its domain's original label ids.

    Args:
        pred_folder: unified-label predictions ``<case><ending>`` (e.g. ``nnUNetv2_predict -o``).
        output_folder: created (all-or-nothing) with one subfolder per domain that has cases.
        dataset: the merged dataset (id, name or path to its dataset.json; see
            :func:`nnunetv2_mtmd.io.find_dataset_json`).
        domain: domain (name or code) of cases whose id carries no domain prefix.
        input_folder: the ``nnUNetv2_mtmd_prepare_input`` output, to read the code channel of cases
            with neither prefix nor ``domain``.
        overwrite: replace an existing ``output_folder``.
        progress: show a tqdm progress bar.

    Returns:
        ``{domain name: [written files]}``.
    """
    spec, dj, dj_path = load_merged_dataset(dataset)
    fe = dj["file_ending"]
    user_domain = (
        resolve_domain(spec, domain, f"--domain (dataset {dj_path.parent.name})")
        if domain is not None
        else None
    )
    pred_folder, output_folder = Path(pred_folder), Path(output_folder)
    _check_folders(pred_folder, output_folder, input_folder)
    preds = sorted(p for p in pred_folder.iterdir() if p.name.endswith(fe) and not p.name.startswith("."))
    if not preds:
        raise InputDataError(
            f"No predictions in {pred_folder}: expected files <case>{fe} (file ending from {dj_path})."
        )
    assigned = _assign_domains(preds, spec, fe, user_domain, input_folder)
    written: dict[str, list[Path]] = {}
    with atomic_output_dir(output_folder, overwrite=overwrite) as tmp:
        for p, (case, dom, out_name) in tqdm(
            assigned.items(), desc="export_labels", unit="case", disable=not progress
        ):
            out = _to_original_labels(p, case, dom, spec)
            sub = safe_child(tmp, dom.name)
            sub.mkdir(exist_ok=True)
            sitk.WriteImage(out, str(safe_child(sub, out_name)), True)
            written.setdefault(dom.name, []).append(output_folder / dom.name / out_name)
    logger.info(
        "Exported %d prediction(s) to %s (%s).",
        len(assigned),
        output_folder,
        ", ".join(f"{k}: {len(v)}" for k, v in written.items()),
    )
    return written
