"""``nnUNetv2_mtmd_evaluate``: the paper's per-structure metrics of a prediction folder."""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from nnunetv2_mtmd.cli.common import HelpFormatter, run
from nnunetv2_mtmd.domains import DomainSpec
from nnunetv2_mtmd.errors import InputDataError
from nnunetv2_mtmd.evaluation.evaluate import evaluate_folders
from nnunetv2_mtmd.io import find_dataset_json, load_json

logger = logging.getLogger("nnunetv2_mtmd.evaluate")

DESCRIPTION = """\
Evaluate predicted label maps against reference label maps of a merged multi-domain dataset, per
case and structure of the case's domain: 3D Dice, sensitivity, specificity, MSSD (symmetric
Hausdorff, mm), HD95 (mm), ASSD (mm), RAVD (%), and the 2D Dice of every slice where reference or
prediction has the structure.

Writes DIR/metrics.csv (one row per case and structure), DIR/slices.csv (2D slice Dice, input of
nnUNetv2_mtmd_compare), DIR/summary.md (mean ± std per domain and structure, like the paper's
Table 2), DIR/summary.json and DIR/boxplot_<metric>.png.

Empty masks: both empty -> Dice 1, distances 0; one side empty -> Dice 0 and undefined distances
(NaN in metrics.csv, counted as "undef." in summary.md, never averaged). See summary.md."""


def _main(argv: Sequence[str] | None) -> int:
    p = argparse.ArgumentParser(
        prog="nnUNetv2_mtmd_evaluate", description=DESCRIPTION, formatter_class=HelpFormatter
    )
    p.add_argument("-ref", required=True, type=Path, help="folder with reference label files (e.g. labelsTr)")
    p.add_argument("-pred", required=True, type=Path, help="folder with predicted label files")
    p.add_argument(
        "-d",
        dest="dataset",
        required=True,
        help="merged dataset id, name or path to its dataset.json (gives domains and file ending)",
    )
    p.add_argument("-o", dest="output", required=True, type=Path, help="output folder (must not exist)")
    p.add_argument("-np", dest="num_processes", type=int, default=2, help="number of worker processes")
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="evaluate only the predicted cases when some reference cases have no prediction "
        "(they are listed in summary.md); without it that is an error",
    )
    p.add_argument(
        "--slice-axis",
        type=int,
        default=0,
        help="array axis of the 2D slices for the slice Dice (0 = z of a SimpleITK (z, y, x) array, "
        "the slices of nnU-Net's 2D configuration when its transpose is [0, 1, 2])",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the box-plot PNGs")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = p.parse_args(argv)
    if args.num_processes < 1:
        raise InputDataError(f"-np must be >= 1, found {args.num_processes}.")

    dj_path = find_dataset_json(args.dataset)
    spec = DomainSpec.from_dataset_json(dj_path)
    ending = load_json(dj_path).get("file_ending", ".nii.gz")
    t0 = time.perf_counter()
    summary = evaluate_folders(
        args.ref,
        args.pred,
        spec,
        ending,
        args.output,
        num_processes=args.num_processes,
        allow_missing=args.allow_missing,
        slice_axis=args.slice_axis,
        overwrite=args.overwrite,
        plots=not args.no_plots,
    )
    logger.info(
        "Evaluated %d cases in %.1f s; results in %s (see summary.md)",
        summary["n_cases"],
        time.perf_counter() - t0,
        args.output,
    )
    for dname, entry in summary["domains"].items():
        dice = entry["mean"]["dice"]
        logger.info("  %s: mean Dice %.3f over %d cases", dname, dice["mean"], entry["n_cases"])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
