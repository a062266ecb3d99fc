"""``nnUNetv2_mtmd_postprocess``: the paper's post-processing of predicted label maps."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from nnunetv2_mtmd.cli.common import HelpFormatter, run
from nnunetv2_mtmd.domains import DomainSpec
from nnunetv2_mtmd.errors import InputDataError
from nnunetv2_mtmd.evaluation.postprocess import (
    CLOSING_RADIUS,
    CONNECTIVITY,
    expected_components,
    postprocess_folder,
    read_components,
    structure_names,
)
from nnunetv2_mtmd.io import find_dataset_json, load_json

logger = logging.getLogger("nnunetv2_mtmd.postprocess")

DESCRIPTION = """\
Post-process predicted label maps of a merged multi-domain dataset as in the paper: per case and
structure of the case's domain, keep the largest 3D connected component (26-connectivity; a
structure made of k separate parts, such as both femurs under one label, keeps its k largest, see
--components), then a 3D morphological closing with a 5x5x5 ball in voxels (whatever the
spacing). The closing only fills voxels that are background in the input, so structures never
overwrite each other; a background voxel claimed by two structures stays background. Labels of
other domains are removed. Geometry and pixel type are copied; JSON files of the input folder are
copied too."""


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
    p.add_argument(
        "--components",
        default="auto",
        metavar="{auto,1,FILE.json}",
        help="parts kept per structure. 'auto': counted in the reference labels (--components-from; per "
        "case the components of at least 10%% of the largest, lower median over the domain's cases), "
        "which gives 1 (the paper's largest component) for structures that are one object; '1': the "
        "largest component for every structure; FILE.json: {label name or id: k}, others 1",
    )
    p.add_argument(
        "--components-from",
        type=Path,
        default=None,
        help="reference label folder for --components auto (default: labelsTr of the dataset of -d). "
        "Evaluating held-out cases, give the training cases' labels only",
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
    components = resolve_components(args.components, args.components_from, dj_path, spec, ending,
                                    args.connectivity)
    cases = postprocess_folder(
        args.input,
        args.output,
        spec,
        ending,
        num_processes=args.num_processes,
        closing_radius=args.closing_radius,
        connectivity=args.connectivity,
        overwrite=args.overwrite,
        components=components,
    )
    logger.info("Post-processed %d cases into %s", len(cases), args.output)
    return 0


def resolve_components(
    choice: str, reference: Path | None, dataset_json: Path, spec: DomainSpec, ending: str, connectivity: int
) -> dict[int, int]:
    """``--components`` as ``{unified label id: k}`` (see the option's help)."""
    if choice == "1":
        return {}
    if choice != "auto":
        path = Path(choice)
        if not path.is_file():
            raise InputDataError(
                f"--components {choice!r}: expected 'auto', '1' or an existing JSON file {{label name or id: k}}."
            )
        return read_components(path, spec)
    ref = reference if reference is not None else Path(dataset_json).parent / "labelsTr"
    files = sorted(f for f in ref.iterdir() if f.name.endswith(ending)) if ref.is_dir() else []
    if not files:
        raise InputDataError(
            f"--components auto counts each structure's parts in reference labels, but {ref} has no "
            f"'*{ending}' label files. Pass --components-from LABEL_FOLDER, or --components 1 for the "
            "largest component of every structure."
        )
    components = expected_components(files, spec, ending, connectivity)
    several = {name: components[lab] for name, lab in structure_names(spec).items() if components[lab] > 1}
    logger.info(
        "Parts kept per structure (from %d reference label maps in %s): %s", len(files), ref,
        ", ".join(f"{n} {k}" for n, k in several.items()) + ", every other structure 1" if several
        else "1 for every structure",
    )
    return components


def main(argv: Sequence[str] | None = None) -> int:
    return run(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
