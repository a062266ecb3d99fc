"""``nnUNetv2_mtmd_demo``: the end-to-end demo on synthetic three-joint data (see nnunetv2_mtmd/apps/demo.py)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from nnunetv2_mtmd.cli.common import HelpFormatter, run


def _main(argv: Sequence[str] | None) -> int:
    from nnunetv2_mtmd.apps.demo import DEFAULT_BASE_FEATURES, DEFAULT_TRAINER, run_demo

    p = argparse.ArgumentParser(
        prog="nnUNetv2_mtmd_demo", formatter_class=HelpFormatter,
        description="End-to-end demo on CPU: synthetic ankle/knee/shoulder MR-like data -> nnUNetv2_mtmd_merge -> "
                    "nnUNetv2_plan_and_preprocess -pl nnUNetPlannerMTMD -> nnUNetv2_train (MTMD) -> "
                    "nnUNetv2_mtmd_prepare_input -> nnUNetv2_predict -> nnUNetv2_mtmd_evaluate. Prints a per-domain, "
                    "per-structure Dice table and writes report.md and examples.png into --out. About 10-15 "
                    "minutes on 2 CPU cores.")
    p.add_argument("--out", default="mtmd_demo_output", help="output folder (holds its own nnUNet_* folders)")
    p.add_argument("--cases", type=int, default=10, help="training cases per domain")
    p.add_argument("--test-cases", type=int, default=4, help="held-out test cases per domain")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the synthetic data and of the training (written into the plans as "
                   "mtmd_training_seed: initialisation, sampling, in-process augmentation)")
    p.add_argument("-tr", default=DEFAULT_TRAINER, help="trainer (any MTMD trainer, e.g. nnUNetTrainerMTMD_DSL_debug)")
    p.add_argument("--batch_size", type=int, default=6, help="batch size written into the plans (multiple of 3)")
    p.add_argument("--base_features", type=int, default=DEFAULT_BASE_FEATURES,
                   help="features of the first network stage written into the plans, doubled per stage up to the "
                        "planned maximum (nnU-Net plans 32)")
    p.add_argument("-np_da", type=int, default=0,
                   help="data augmentation worker processes of the training (nnUNet_n_proc_DA); 0 = augment in "
                        "the training process, which is faster on 2 cores than a worker competing with torch's "
                        "threads")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    a = p.parse_args(argv)
    run_demo(a.out, a.cases, a.test_cases, a.seed, a.tr, a.batch_size, a.np_da, a.overwrite, a.base_features)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
