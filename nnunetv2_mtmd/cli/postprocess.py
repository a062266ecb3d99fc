"""``nnUNetv2_mtmd_postprocess``: the paper's post-processing of predicted label maps."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from nnunetv2_mtmd.cli.common import HelpFormatter, run
from nnunetv2_mtmd.domains import DomainSpec
from nnunetv2_mtmd.errors import InputDataError
from nnunetv2_mtmd.evaluation.postprocess import CLOSING_RADIUS, CONNECTIVITY, postprocess_folder
from nnunetv2_mtmd.io import find_dataset_json, load_json

logger = logging.getLogger("nnunetv2_mtmd.postprocess")

DESCRIPTION = """\
Post-process predicted label maps of a merged multi-domain dataset as in the paper: per case and
structure of the case's domain, keep the largest 3D connected component (26-connectivity), then a
3D morphological closing with a 5x5x5 ball in voxels (whatever the spacing). The closing only fills
voxels that are background in the input, so structures never overwrite each other; a background
voxel claimed by two structures stays background. Labels of other domains are removed. Geometry and pixel type are
copied; JSON files of the input folder are copied too."""


def _main(argv: Sequence[str] | None) -> int:
    p = argparse.ArgumentParser(
        prog="nnUNetv2_mtmd_postprocess", description=DESCRIPTION, formatter_class=HelpFormatter
    )
    p.add_argument("-i", dest="input", required=True, type=Path, help="folder with predicted label files")
    p.add_argument("-o", dest="output", required=True, type=Path, help="output folder (must not exist)")
    p.add_argument(
        "-d",
        dest="dataset",
        required=True,
        help="merged dataset id, name or path to its dataset.json (gives domains and file ending)",
    )
    p.add_argument("-np", dest="num_processes", type=int, default=2, help="number of worker processes")
    p.add_argument(
        "--closing-radius",
        type=int,
        default=CLOSING_RADIUS,
        help="ball radius of the closing in voxels (2 = the paper's 5x5x5 ball; 0 = no closing)",
    )
    p.add_argument(
        "--connectivity",
        type=int,
        choices=(6, 26),
        default=CONNECTIVITY,
        help="connectivity of the largest-component step",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = p.parse_args(argv)
    if args.num_processes < 1:
        raise InputDataError(f"-np must be >= 1, found {args.num_processes}.")
    if args.closing_radius < 0:
        raise InputDataError(f"--closing-radius must be >= 0, found {args.closing_radius}.")

    dj_path = find_dataset_json(args.dataset)
    spec = DomainSpec.from_dataset_json(dj_path)
    ending = load_json(dj_path).get("file_ending", ".nii.gz")
    cases = postprocess_folder(
        args.input,
        args.output,
        spec,
        ending,
        num_processes=args.num_processes,
        closing_radius=args.closing_radius,
        connectivity=args.connectivity,
        overwrite=args.overwrite,
    )
    logger.info("Post-processed %d cases into %s", len(cases), args.output)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
