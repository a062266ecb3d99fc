"""``nnUNetv2_mtmd_merge``: merge K nnU-Net raw datasets (one per domain) into one multi-domain dataset.

See :mod:`nnunetv2_mtmd.conversion.merge` for the output layout."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from nnunetv2_mtmd.cli.common import HelpFormatter, run

DESCRIPTION = """\
Merge K ordinary nnU-Net raw datasets (one per domain) into one multi-domain raw dataset
nnUNet_raw/DatasetXXX_<name>:
  - case ids become <domain>_<original id>;
  - images are copied unchanged, plus one last channel: the domain code (domain index + 1,
    channel name noNorm, same geometry as the image);
  - labels are remapped into one unified label space: background 0, then each domain's labels
    in domain order, named <domain>_<label>;
  - imagesTs/labelsTs are carried over when the sources have them;
  - dataset.json gets a "mtmd" block describing the domains.
The output is written all-or-nothing; any error leaves nothing behind.

example: nnUNetv2_mtmd_merge -d 901 902 903 --domains lumbar sij pelvis -o 950 -n MSKBonesMR
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnUNetv2_mtmd_merge", description=DESCRIPTION, formatter_class=HelpFormatter
    )
    p.add_argument(
        "-d",
        "--datasets",
        nargs="+",
        required=True,
        default=argparse.SUPPRESS,
        metavar="DATASET",
        help="source datasets, one per domain, in domain order: ids (901), full names "
        "(Dataset901_Lumbar) or folder paths; ids and names are looked up in --source_root",
    )
    p.add_argument(
        "-o",
        "--output_id",
        type=int,
        required=True,
        default=argparse.SUPPRESS,
        metavar="ID",
        help="id XXX of the merged dataset DatasetXXX_<name> (1-999); must be unused in nnUNet_raw "
        "and nnUNet_preprocessed unless --overwrite",
    )
    p.add_argument("-n", "--name", default="MultiDomain", help="name part of DatasetXXX_<name>")
    p.add_argument(
        "--domains",
        nargs="+",
        default=argparse.SUPPRESS,
        metavar="NAME",
        help="domain names, one per dataset (letters, digits, '-'; no '_', spaces or '/'); "
        "default: the source dataset names without 'DatasetXXX_' and other characters "
        "(Dataset901_Lumbar_MR -> LumbarMR)",
    )
    p.add_argument(
        "--channel_names",
        nargs="+",
        default=argparse.SUPPRESS,
        metavar="NAME",
        help="merged input channel names (without the code channel); needed when the sources' "
        "channel names differ (a warning is logged if the sources' names select different nnU-Net "
        "normalizations); default: the sources' names, which must agree",
    )
    p.add_argument(
        "--source_root",
        type=Path,
        default=argparse.SUPPRESS,
        help="folder in which dataset ids / names of -d are looked up; default: $nnUNet_raw",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing raw dataset with the output id (preprocessed data of it becomes stale)",
    )
    p.add_argument(
        "--drop_duplicates",
        action="store_true",
        help="keep only the first copy (sorted case ids) of training cases whose images are exactly "
        "identical within one domain (without it they are kept, with a warning)",
    )
    p.add_argument(
        "--no_duplicate_check",
        action="store_true",
        help="skip the check for exactly duplicated images (without it duplicates are reported as warnings)",
    )
    return p


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from nnunetv2_mtmd.conversion.merge import merge_datasets

    res = merge_datasets(
        args.datasets,
        args.output_id,
        name=args.name,
        domain_names=getattr(args, "domains", None),
        channel_names=getattr(args, "channel_names", None),
        overwrite=args.overwrite,
        source_root=getattr(args, "source_root", None),
        check_duplicates=not args.no_duplicate_check,
        drop_duplicates=args.drop_duplicates,
    )
    print(f"Merged dataset written to {res.folder}")
    print(
        f"  training cases: {res.num_training} ("
        + ", ".join(f"{d.name}: {d.num_cases}" for d in res.spec.domains)
        + ")"
    )
    if res.num_test:
        print(f"  test cases: {res.num_test}")
    print(f"  labels: {res.spec.num_classes} (background + {res.spec.num_classes - 1})")
    print(f"  input channels: {res.spec.code_channel + 1} (last = domain code)")
    if res.dropped_duplicates:
        print(f"  dropped duplicates: {', '.join(res.dropped_duplicates)}")
    print(f"  time: {res.seconds:.1f} s")
    print(
        f"Next: nnUNetv2_plan_and_preprocess -d {args.output_id} -pl nnUNetPlannerMTMD "
        "--verify_dataset_integrity"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
