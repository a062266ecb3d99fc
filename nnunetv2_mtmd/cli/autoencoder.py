"""``nnUNetv2_mtmd_autoencoder``: train (or load from the fold's cache) the MJAP label autoencoder alone."""

from __future__ import annotations

import argparse
import logging
import multiprocessing
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from nnunetv2_mtmd.cli.common import HelpFormatter, run
from nnunetv2_mtmd.errors import InputDataError
from nnunetv2_mtmd.io import atomic_save_json
from nnunetv2_mtmd.training.autoencoder_job import VARIANTS, AutoencoderSettings, job_from_plans

logger = logging.getLogger("nnunetv2_mtmd.autoencoder")

DESCRIPTION = """\
Train the MJAP label autoencoder of one fold of a merged multi-domain dataset, exactly as the MJAP
trainers (nnUNetTrainerMTMD, nnUNetTrainerMTMD_DSL_MJAP; --variant shared: nnUNetTrainerMTMD_Shared_MJAP)
train it in their first phase, or load it when that fold's cache already holds it:

  $nnUNet_results/<Dataset>/mtmd_label_autoencoders/<plans>__<configuration>/fold_<f>/<variant>-<hash>/

It learns from label crops of the configuration's patch size drawn from the preprocessed
segmentations of the fold's training cases (domain-balanced, mostly centred on a structure, the
trainers' spatial augmentation: fixed orientation when the plans record a study budget that asks for
it, else nnU-Net's), then prints the reconstruction Dice per domain and structure on the fold's
validation cases (pooled over every slice with a structure). Another job training the same
autoencoder is waited for, then reused; a killed run resumes where it stopped."""


def _fold(text: str) -> int | str:
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"fold must be an integer or 'all', got {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    d = AutoencoderSettings()
    p = argparse.ArgumentParser(prog="nnUNetv2_mtmd_autoencoder", description=DESCRIPTION,
                                formatter_class=HelpFormatter)
    p.add_argument("-d", dest="dataset", required=True, help="merged dataset id or name, e.g. 950")
    p.add_argument("-c", dest="configuration", required=True, help="nnU-Net configuration, e.g. 2d")
    p.add_argument("-f", dest="fold", required=True, type=_fold, help="fold of splits_final.json, or 'all'")
    p.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier")
    p.add_argument("--variant", choices=VARIANTS, default="multi_domain",
                   help="multi_domain: DSBN and per-domain input/output layers (DSL schemes); shared: every "
                        "parameter shared (Shared+MJAP)")
    p.add_argument("--augmentation", choices=("plans", "nnunet", "fixed"), default="plans",
                   help="spatial augmentation: as the plans' study budget says (else nnU-Net's), nnU-Net's, or "
                        "fixed orientation (no mirroring, rotations within +-30 degrees)")
    p.add_argument("--iterations", type=int, default=None,
                   help=f"training iterations (default: the study budget's ae_iterations when the plans record "
                        f"one, else {d.iterations}, the MJAP trainers' default)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="label crops per iteration")
    p.add_argument("--features", type=int, default=d.features[0],
                   help="channels of the first stage (doubled per stage, 5 stages)")
    p.add_argument("--json", type=Path, default=None, help="write the reconstruction Dice, iterations and seconds here")
    p.add_argument("-o", dest="output", type=Path, default=None,
                   help="folder for one PNG per domain: label slices beside their reconstructions")
    p.add_argument("-device", default="cuda" if torch.cuda.is_available() else "cpu",
                   choices=("cpu", "cuda", "mps"),
                   help="device (cuda when available, else cpu); on cpu torch uses every core, or "
                        "$MTMD_TORCH_THREADS threads when set")
    return p


def _settings(args: argparse.Namespace, budget_iterations: int) -> AutoencoderSettings:
    if args.iterations is not None and args.iterations < 1:
        raise InputDataError(f"--iterations must be >= 1, found {args.iterations}.")
    if args.features < 1 or args.batch_size < 1:
        raise InputDataError(f"--features and --batch-size must be >= 1, found {args.features} and {args.batch_size}.")
    f = args.features
    return replace(AutoencoderSettings(), iterations=args.iterations or budget_iterations, batch_size=args.batch_size,
                   features=tuple(f * 2 ** i for i in range(5)))


def _print_dice(dice: dict[str, dict[str, float]]) -> None:
    width = max([len(s) for d in dice.values() for s in d] + [9])
    print(f"{'domain':<10} {'structure':<{width}}  Dice")
    for dom, per in dice.items():
        for s, v in per.items():
            print(f"{dom:<10} {s:<{width}}  {v:.4f}")


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.device == "cpu":  # as nnUNetv2_train -device cpu, or $MTMD_TORCH_THREADS as the study trainers
        from nnunetv2_mtmd.training.trainers.study import study_torch_threads

        try:
            threads = study_torch_threads()
        except ValueError as e:
            raise InputDataError(str(e)) from e
        torch.set_num_threads(threads or multiprocessing.cpu_count())
    elif args.device == "cuda" and not torch.cuda.is_available():
        raise InputDataError("-device cuda: no CUDA device is available; use -device cpu.")
    job = job_from_plans(args.dataset, args.configuration, args.fold, args.plans, args.variant,
                         augmentation=args.augmentation)
    job = replace(job, settings=_settings(args, job.settings.iterations))
    from nnunetv2_mtmd.training.autoencoder_cache import train_or_load

    result = train_or_load(job, torch.device(args.device), logger.info)
    _print_dice(result.reconstruction_dice)
    print(f"mean {result.mean_dice:.4f}; {result.iterations} iterations, {result.seconds:.0f} s "
          f"({'reused' if result.reused else 'trained'}); cache {result.cache}")
    if args.json is not None:
        atomic_save_json({"reconstruction_dice": result.reconstruction_dice, "iterations": result.iterations,
                          "seconds": round(result.seconds, 1)}, args.json)
        logger.info("wrote %s", args.json)
    if args.output is not None:
        from nnunetv2_mtmd.training.autoencoder_figures import write_reconstruction_pngs

        for path in write_reconstruction_pngs(result.autoencoder, job, args.output, torch.device(args.device)):
            logger.info("wrote %s", path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())

