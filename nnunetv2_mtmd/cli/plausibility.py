"""``nnUNetv2_mtmd_plausibility``: how far each predicted structure lies from the shapes the model's MJAP
label autoencoder learned (a score per case and structure, no reference needed)."""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from nnunetv2_mtmd.cli.common import HelpFormatter, run
from nnunetv2_mtmd.errors import InputDataError

logger = logging.getLogger("nnunetv2_mtmd.plausibility")

DESCRIPTION = """\
Score every prediction of a folder (unified labels, e.g. the output of nnUNetv2_predict with a
multi-domain model) by its shape plausibility: per case and structure, the Dice between the predicted
mask and its reconstruction by the frozen label autoencoder of an MJAP model (the model's
label_autoencoder.pth), pooled over the slices that hold any structure of the case's domain, after
the prediction is transposed and resampled as nnU-Net preprocesses segmentations. 1 = a shape the
prior reproduces; low = far from every shape it learned (specks, holes, a missing or swapped part).

Writes DIR/plausibility.csv (case, domain, structure, plausibility, predicted_voxels, maps[, dice]) and
DIR/plausibility.json (mean per domain and structure, the lowest-scored structures and, with
--metrics, the Spearman correlation between plausibility and the Dice of the same rows). See
docs/plausibility.md."""


def _main(argv: Sequence[str] | None) -> int:
    from nnunetv2_mtmd.evaluation.plausibility import load_model_autoencoder, score_folder

    p = argparse.ArgumentParser(prog="nnUNetv2_mtmd_plausibility", description=DESCRIPTION,
                                formatter_class=HelpFormatter)
    p.add_argument("-i", dest="input", required=True, type=Path, help="folder of predicted label files")
    p.add_argument("-o", dest="output", required=True, type=Path, help="output folder (must not exist)")
    p.add_argument("-d", dest="dataset", required=True, help="merged dataset id or name, e.g. 950")
    p.add_argument("-c", dest="configuration", default="2d", help="configuration of the model")
    p.add_argument("-f", dest="fold", default="0", help="fold of the model whose autoencoder scores")
    p.add_argument("-tr", dest="trainer", default="nnUNetTrainerMTMD", help="trainer of the model (an MJAP scheme)")
    p.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier")
    p.add_argument("--autoencoder", type=Path, default=None,
                   help="label_autoencoder.pth to use instead of the model fold folder's")
    p.add_argument("--domain", default=None,
                   help="domain of every case (default: each case id's domain prefix, as the merge names them)")
    p.add_argument("--metrics", type=Path, default=None,
                   help="metrics.csv of nnUNetv2_mtmd_evaluate on the same predictions: adds each row's Dice and "
                        "the Spearman correlation between plausibility and Dice")
    p.add_argument("--lowest", type=int, default=10, help="how many lowest-scored structures plausibility.json lists")
    p.add_argument("-device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda", "mps"),
                   help="device of the autoencoder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = p.parse_args(argv)
    if args.lowest < 0:
        raise InputDataError(f"--lowest must be >= 0, found {args.lowest}.")
    fold = args.fold if args.fold == "all" else int(args.fold)
    t0 = time.perf_counter()
    ae, pm, cm, spec, file = load_model_autoencoder(args.dataset, args.configuration, fold, args.trainer, args.plans,
                                                    args.autoencoder, args.device)
    dj = pm.plans.get("dataset_name")
    from nnunetv2_mtmd.io import env_folder, find_dataset, load_json

    ending = load_json(find_dataset(dj or args.dataset, env_folder("nnUNet_preprocessed")) / "dataset.json").get(
        "file_ending", ".nii.gz")
    summary = score_folder(args.input, args.output, ae.to(args.device), pm, cm, spec, ending, domain=args.domain,
                           metrics_csv=args.metrics, lowest=args.lowest, device=args.device, overwrite=args.overwrite)
    logger.info("Scored %d cases with %s in %.1f s; results in %s", summary["cases"], file,
                time.perf_counter() - t0, args.output)
    for dom, per in summary["domains"].items():
        logger.info("  %s: %s", dom, ", ".join(f"{s} {v:.3f}" for s, v in per.items()))
    if "spearman" in summary:
        s = summary["spearman"]["pooled"]
        logger.info("  Spearman(plausibility, Dice) pooled: rho %.3f (p %.3g, n %d)", s["rho"], s["p"], s["n"])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
