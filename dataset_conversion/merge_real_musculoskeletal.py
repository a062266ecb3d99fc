"""Merge the three real musculoskeletal MR datasets into one multi-domain nnU-Net dataset.

Source layout (``../shared/realdata`` next to the repository, never copied into it)::

    realdata/
      README.md                                 provenance and licences
      Dataset901_LumbarVertebraeMR/             lumbar spine, water-fat MR, 2 mm isotropic
        dataset.json                            channel "MRI"; labels L1..L5 = 1..5
        imagesTr/myoseg_vb3_XX_0000.nii.gz      29 cases (the source repeats one volume as cases 18
        labelsTr/myoseg_vb3_XX.nii.gz           and 19; only 18 is kept)
      Dataset902_SacroiliacMR/                  sacroiliac joints, T1-weighted, 2 x 2 x 3.3 mm
        dataset.json                            channel "T1"; label sij_bone_region = 1
        imagesTr/sij_XXXX_0000.nii.gz           9 cases
        labelsTr/sij_XXXX.nii.gz
      Dataset903_PelvisBoneMR/                  pelvis and hips, T1 TSE coronal, 2 x 2 x 5.2 mm
        dataset.json                            channel "MRI"; labels femur, ilium, spine, sacrum = 1..4
        imagesTr/pelvis_XXX_0000.nii.gz         16 cases
        labelsTr/pelvis_XXX.nii.gz

Images are float32, labels uint8, all ``.nii.gz``; no test sets.

Result (``$nnUNet_raw/Dataset950_MSKBonesMR`` by default): domains ``lumbar`` (code 1), ``sij`` (2),
``pelvis`` (3); 54 training cases (29 + 9 + 16); 11 labels (background, lumbar_L1..lumbar_L5 = 1..5,
sij_sij_bone_region = 6, pelvis_femur..pelvis_sacrum = 7..10); 2 input channels (``MRI`` and the
``noNorm`` domain code). The channel names of the sources differ ("MRI" vs "T1"); both select
nnU-Net's z-score normalization, so the merge names the channel ``MRI`` for all (``--channel_names
MRI``). Exact duplicate images inside a domain are dropped (``--drop_duplicates``), which keeps the
result at 29 lumbar cases even for a copy of the source that still contains both case 18 and 19.

Usage::

    export nnUNet_raw=/path/to/nnUNet_raw
    python dataset_conversion/merge_real_musculoskeletal.py [--realdata DIR] [-o 950] [-n MSKBonesMR]
    nnUNetv2_plan_and_preprocess -d 950 -pl nnUNetPlannerMTMD -c 2d --verify_dataset_integrity
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from nnunetv2_mtmd.cli.common import HelpFormatter
from nnunetv2_mtmd.cli.merge import main as merge_main

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
SOURCES = (
    ("Dataset901_LumbarVertebraeMR", "lumbar"),
    ("Dataset902_SacroiliacMR", "sij"),
    ("Dataset903_PelvisBoneMR", "pelvis"),
)


def merge_args(
    realdata: Path, output_id: int = 950, name: str = "MSKBonesMR", overwrite: bool = False
) -> list[str]:
    """The ``nnUNetv2_mtmd_merge`` arguments that merge the three real datasets found in ``realdata``."""
    args = ["-d", *(str(Path(realdata) / ds) for ds, _ in SOURCES), "--domains", *(d for _, d in SOURCES)]
    args += ["-o", str(output_id), "-n", name, "--channel_names", "MRI", "--drop_duplicates"]
    return args + (["--overwrite"] if overwrite else [])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--realdata", type=Path, default=REALDATA, help="folder holding Dataset901/902/903")
    p.add_argument("-o", "--output_id", type=int, default=950, help="id of the merged dataset")
    p.add_argument("-n", "--name", default="MSKBonesMR", help="name of the merged dataset")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset with this id")
    args = p.parse_args(argv)
    if not args.realdata.is_dir():
        print(f"error: real data folder {args.realdata} does not exist (see --realdata).", file=sys.stderr)
        return 2
    return merge_main(merge_args(args.realdata, args.output_id, args.name, args.overwrite))


if __name__ == "__main__":
    raise SystemExit(main())
