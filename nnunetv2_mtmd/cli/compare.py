"""``nnUNetv2_mtmd_compare``: Kolmogorov-Smirnov comparison of slice Dice between evaluation folders."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from nnunetv2_mtmd.cli.common import HelpFormatter, run
from nnunetv2_mtmd.evaluation.compare import compare_folders

logger = logging.getLogger("nnunetv2_mtmd.compare")

DESCRIPTION = """\
Compare two or more nnUNetv2_mtmd_evaluate output folders by their 2D slice Dice, like the paper's
Table 4: per method (folder) and domain, and pooled over domains, the mean and the 16th/84th
percentiles of the slice Dice, and the two-sample Kolmogorov-Smirnov test (scipy.stats.ks_2samp)
against the FIRST folder. Writes OUT/compare.md, OUT/compare.csv and OUT/compare.json. When every
folder also has metrics.csv for the same cases, adds the per-case paired comparison (case Dice =
mean over the case's structures; mean difference, cases better / worse, two-sided Wilcoxon
signed-rank test: one sample per case, since a case's slices are not independent) to compare.md,
compare.json ("paired") and OUT/paired.csv."""


def _main(argv: Sequence[str] | None) -> int:
    p = argparse.ArgumentParser(
        prog="nnUNetv2_mtmd_compare", description=DESCRIPTION, formatter_class=HelpFormatter
    )
    p.add_argument(
        "folders",
        nargs="+",
        type=Path,
        metavar="DIR",
        help="evaluation folders (with slices.csv); the first is the reference",
    )
    p.add_argument("-o", dest="output", required=True, type=Path, help="output folder (must not exist)")
    p.add_argument(
        "--names", nargs="+", default=None, help="method names, one per folder (default: folder names)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = p.parse_args(argv)
    rows = compare_folders(args.folders, args.output, names=args.names, overwrite=args.overwrite)
    for r in rows:
        if r["group"] == "pooled":
            logger.info(
                "%s: pooled slice Dice %.3f [%.3f, %.3f], KS D %s",
                r["method"],
                r["mean"],
                r["p16"],
                r["p84"],
                "-"
                if r["ks_statistic"] != r["ks_statistic"]
                else f"{r['ks_statistic']:.3f} (p={r['ks_pvalue']:.3g})",
            )
    logger.info("Wrote %s", args.output / "compare.md")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
