"""``nnUNetv2_mtmd_prepare_input``: add the domain code channel to new cases before ``nnUNetv2_predict``.

See :mod:`nnunetv2_mtmd.conversion.prepare_input`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from nnunetv2_mtmd.cli.common import HelpFormatter, run

DESCRIPTION = """\
Turn a folder of new cases of ONE domain (nnU-Net naming: <case>_0000<ending>, ...; the image
channels of the merged dataset, without the code channel) into nnUNetv2_predict input: the channel
files are copied unchanged and <case>_XXXX<ending> is added as the last channel, a constant image
with the domain code and the geometry of the case's channel 0.
Case ids are kept unless --prefix is given (then <domain>_<case>, so that
nnUNetv2_mtmd_export_labels can tell the domain from the file name).
The dataset (-d) is looked up in nnUNet_raw, then nnUNet_preprocessed, then nnUNet_results; a path
to its dataset.json works too.

example: nnUNetv2_mtmd_prepare_input -i new_lumbar -o new_lumbar_prepared -d 950 --domain lumbar
         nnUNetv2_predict -i new_lumbar_prepared -o pred -d 950 -c 2d -f all -tr <trainer>
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnUNetv2_mtmd_prepare_input", description=DESCRIPTION, formatter_class=HelpFormatter
    )
    p.add_argument(
        "-i", "--input", type=Path, required=True, default=argparse.SUPPRESS, help="folder with the new cases"
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        default=argparse.SUPPRESS,
        help="output folder (created; must not exist unless --overwrite)",
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
        required=True,
        default=argparse.SUPPRESS,
        help="domain of all input cases: name (e.g. lumbar) or code (1..K)",
    )
    p.add_argument(
        "--prefix",
        action="store_true",
        help="write case ids as <domain>_<case> (without it the input case ids are kept)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    return p


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from nnunetv2_mtmd.conversion.prepare_input import prepare_input

    written = prepare_input(
        args.input, args.output, args.dataset, args.domain, prefix=args.prefix, overwrite=args.overwrite
    )
    print(f"Prepared {len(written)} case(s) in {args.output}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
