"""``nnUNetv2_mtmd_synthetic``: write three synthetic MR-like joint datasets (ankle, knee, shoulder)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from nnunetv2_mtmd.cli.common import HelpFormatter, run
from nnunetv2_mtmd.io import env_folder

DESCRIPTION = """\
Write three small synthetic nnU-Net raw datasets of MR-like bone images, one per domain:
  Dataset911_SynthAnkle     sagittal, T1-like:  calcaneus, talus, tibia
  Dataset912_SynthKnee      sagittal, PD-like:  femur, fibula, patella, tibia
  Dataset913_SynthShoulder  coronal, T2-like:   humerus, scapula
Each has imagesTr/caseNNN_0000.nii.gz (float32), labelsTr/caseNNN.nii.gz (uint8) and dataset.json;
with --test-cases also imagesTs/ and labelsTs/ (ground truth of the test cases, for evaluation).
Volumes are (Z, Y, X) arrays with Z the slice axis; each domain has its own spacing, contrast, noise
and bias field. The same --seed gives identical data.

Example:
  nnUNetv2_mtmd_synthetic -o $nnUNet_raw --cases 10 --test-cases 2
  nnUNetv2_mtmd_merge -d 911 912 913 -o 914
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnUNetv2_mtmd_synthetic", description=DESCRIPTION,
                                formatter_class=HelpFormatter)
    p.add_argument("-o", "--output", default=os.environ.get("nnUNet_raw"),
                   help="folder that receives the three DatasetXXX_* folders; defaults to $nnUNet_raw")
    p.add_argument("--cases", type=int, default=10, help="training cases per domain")
    p.add_argument("--test-cases", type=int, default=0,
                   help="test cases per domain, written to imagesTs/ with their labels in labelsTs/")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same data")
    p.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), default=argparse.SUPPRESS,
                   help="volume size in voxels for every domain, Z = number of slices "
                        "(default: per domain, ankle 14 64 64, knee 16 64 64, shoulder 12 64 64)")
    p.add_argument("--ids", type=int, nargs=3, metavar=("ANKLE", "KNEE", "SHOULDER"),
                   default=[911, 912, 913], help="dataset ids of the ankle, knee and shoulder datasets")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing dataset folders of the same name")
    p.add_argument("--report", action="store_true",
                   help="afterwards print the Dice that the best single intensity threshold reaches per "
                        "dataset (a measure of how far from trivial the data are)")
    return p


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from nnunetv2_mtmd.conversion.synthetic import threshold_report, write_synthetic_datasets

    out = Path(args.output) if args.output else env_folder("nnUNet_raw")
    folders = write_synthetic_datasets(out, cases=args.cases, test_cases=args.test_cases, seed=args.seed,
                                       shape=getattr(args, "shape", None), ids=args.ids,
                                       overwrite=args.overwrite)
    for f in folders:
        print(f)
    if args.report:
        for name, r in threshold_report(folders).items():
            print(f"{name}: best threshold Dice {r['dice']:.3f} (image {r['direction']} "
                  f"{r['threshold']:.4g}), after per-case z-scoring {r['dice_zscored']:.3f}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
