"""``nnUNetv2_mtmd_splits``: write a domain-aware ``splits_final.json`` for a merged dataset."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from nnunetv2_mtmd.cli.common import HelpFormatter, run
from nnunetv2_mtmd.training.splits import (
    DEFAULT_SEED,
    SCHEMES,
    describe_splits,
    find_split_target,
    make_splits,
    write_splits,
)

logger = logging.getLogger("nnunetv2_mtmd.splits")

DESCRIPTION = """\
Write nnUNet_preprocessed/DatasetXXX/splits_final.json for a merged multi-domain dataset.

  5fold  5-fold cross-validation stratified by domain (every domain's cases are spread over the
         folds; a domain with fewer than 5 cases is validated in only that many folds).
  loo    the paper's leave-one-out: as many folds as the smallest domain has cases; fold i holds
         out the i-th case (seeded shuffle) of every domain, everything else trains.

Case ids come from the preprocessed case files if the dataset was preprocessed, else from
nnUNet_raw/DatasetXXX/labelsTr. An existing, different splits_final.json is kept unless --overwrite.
Train a fold afterwards with nnUNetv2_train DATASET CONFIG FOLD as usual."""


def _main(argv: Sequence[str] | None) -> int:
    p = argparse.ArgumentParser(
        prog="nnUNetv2_mtmd_splits", description=DESCRIPTION, formatter_class=HelpFormatter
    )
    p.add_argument("-d", dest="dataset", required=True, help="merged dataset id or name, e.g. 950")
    p.add_argument("--scheme", choices=SCHEMES, default="5fold", help="split scheme")
    p.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help="seed of the per-domain shuffle (nnU-Net's default)"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing, different splits_final.json"
    )
    args = p.parse_args(argv)

    target = find_split_target(args.dataset)
    logger.info("%d cases from %s", len(target.case_ids), target.source)
    splits = make_splits(target.case_ids, target.spec, args.scheme, args.seed)
    written = write_splits(splits, target.splits_file, overwrite=args.overwrite)
    logger.info(describe_splits(splits, target.spec))
    if written:
        logger.info(
            "Wrote %d folds (%s, seed %d) to %s", len(splits), args.scheme, args.seed, target.splits_file
        )
    else:
        logger.info(
            "%s already holds exactly these %d folds; left unchanged.", target.splits_file, len(splits)
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
