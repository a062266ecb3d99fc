"""``nnUNetv2_mtmd_export_labels``: write unified-label predictions in each domain's original label ids.

See :mod:`nnunetv2_mtmd.conversion.export_labels`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from nnunetv2_mtmd.cli.common import HelpFormatter, run

DESCRIPTION = """\
Map predictions of a multi-domain model (unified label ids of the merged dataset) back to the
original label ids of each case's domain. Output: OUT/<domain>/<case><ending>, one subfolder per
domain, with the '<domain>_' prefix removed from the case id; same geometry, uint8.
Only files with the dataset's file ending are read (nnU-Net's plans.json, dataset.json,
predict_from_raw_data_args.json and probability files are ignored).

The domain of a case is, in this order:
  1. its case-id prefix '<domain>_' when that names a domain of the dataset;
  2. --domain, when given;
  3. the code channel <case>_XXXX<ending> in --input (the nnUNetv2_mtmd_prepare_input output).
A prediction containing labels of another domain is an error.

example: nnUNetv2_mtmd_export_labels -i pred -o pred_original_labels -d 950
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnUNetv2_mtmd_export_labels", description=DESCRIPTION, formatter_class=HelpFormatter
    )
    p.add_argument(
        "-i",
        "--predictions",
        type=Path,
        required=True,
        default=argparse.SUPPRESS,
        help="folder with unified-label predictions (e.g. the -o folder of nnUNetv2_predict)",
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        default=argparse.SUPPRESS,
        help="output folder (created; one subfolder per domain; must not exist unless --overwrite)",
    )
    p.add_argument(
        "-d",
        "--dataset",
        required=True,
        default=argparse.SUPPRESS,
        help="merged dataset: id (950), full name (Dataset950_X) or path to its dataset.json",
    )
    p.add_argument(
        "--domain",
        default=argparse.SUPPRESS,
        help="domain (name or code) of cases whose id has no '<domain>_' prefix; default: none",
    )
    p.add_argument(
        "--input",
        type=Path,
        default=argparse.SUPPRESS,
        help="nnUNetv2_mtmd_prepare_input output folder: the code channel there tells the domain of "
        "cases with neither prefix nor --domain; default: none",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    return p


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from nnunetv2_mtmd.conversion.export_labels import export_labels

    written = export_labels(
        args.predictions,
        args.output,
        args.dataset,
        domain=getattr(args, "domain", None),
        input_folder=getattr(args, "input", None),
        overwrite=args.overwrite,
    )
    print(f"Exported to {args.output}: " + ", ".join(f"{k}: {len(v)} case(s)" for k, v in written.items()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
