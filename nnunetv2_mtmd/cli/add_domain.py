"""``nnUNetv2_mtmd_add_domain``: add a domain (a new ordinary raw dataset) to a trained multi-domain model.

See :mod:`nnunetv2_mtmd.training.add_domain` and docs/add_domain.md."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from nnunetv2_mtmd.cli.common import HelpFormatter, run

DESCRIPTION = """\
Add a domain to a trained multi-domain model: from the model (-d/-tr/-p/-c/-f, in nnUNet_results)
and a new ordinary nnU-Net raw dataset (-i), write
  - nnUNet_raw/DatasetXXX_<name>: the new domain's cases with the domain code channel (K+1) and a
    dataset.json with the K+1 domain block and the model's unified labels extended by the new
    domain's (the old domains' images are not needed);
  - nnUNet_preprocessed/DatasetXXX_<name>/<plans>.json, dataset.json and nnU-Net's fingerprint of
    the new cases: the model's plans with one more DSBN row and head, recording the source
    checkpoint (path, SHA-256).
A spacing that differs from the plans only warns (nnU-Net resamples). Everything is written
all-or-nothing. Then:
  nnUNetv2_preprocess -d XXX -plans_name <plans> -c 2d
  nnUNetv2_train XXX 2d FOLD -tr nnUNetTrainerMTMD_AddDomain -p <plans>
which trains only the new domain's DSBN rows and heads (shared convolutions frozen, AdaBN start);
the old domains' outputs stay bitwise those of the source model.

example: nnUNetv2_mtmd_add_domain -d 950 -tr nnUNetTrainerMTMD_DSL -f all -i 903 --domain pelvis -o 960
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnUNetv2_mtmd_add_domain", description=DESCRIPTION,
                                formatter_class=HelpFormatter)
    p.add_argument("-d", dest="dataset", required=True, default=argparse.SUPPRESS,
                   help="dataset of the trained model: id (950) or name (Dataset950_X), in nnUNet_results")
    p.add_argument("-tr", dest="trainer", default="nnUNetTrainerMTMD", help="trainer the model was trained with")
    p.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier of the model")
    p.add_argument("-c", dest="configuration", default="2d", help="configuration of the model")
    p.add_argument("-f", dest="fold", required=True, default=argparse.SUPPRESS,
                   help="fold of the model whose checkpoint the new model starts from (0, 1, ... or 'all')")
    p.add_argument("-chk", dest="checkpoint", default="checkpoint_final.pth",
                   help="checkpoint file in the fold folder")
    p.add_argument("-i", dest="new_dataset", required=True, default=argparse.SUPPRESS,
                   help="the new domain's ordinary nnU-Net raw dataset: id, name (in nnUNet_raw) or folder path")
    p.add_argument("--domain", default=argparse.SUPPRESS,
                   help="name of the new domain (letters, digits, '-'); default: the new dataset's name "
                   "without 'DatasetXXX_' and other characters")
    p.add_argument("-o", dest="output_id", type=int, required=True, default=argparse.SUPPRESS,
                   help="id XXX of the new K+1 dataset (1-999, unused)")
    p.add_argument("-n", dest="name", default=argparse.SUPPRESS,
                   help="name part of DatasetXXX_<name>; default: <model dataset name>_<domain>")
    p.add_argument("--channel_names", nargs="+", default=argparse.SUPPRESS, metavar="NAME",
                   help="the model's channel names, to accept a new dataset whose channels are named otherwise; "
                   "default: the names must agree")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing raw and preprocessed folders of DatasetXXX_<name>")
    p.add_argument("-np", dest="num_processes", type=int, default=2,
                   help="worker processes of nnU-Net's fingerprint extraction of the new domain's cases")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return p


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from nnunetv2_mtmd.training.add_domain import add_domain

    res = add_domain(
        args.dataset, args.new_dataset, args.output_id, args.fold,
        name=getattr(args, "name", None), domain=getattr(args, "domain", None), trainer=args.trainer,
        plans=args.plans, configuration=args.configuration, checkpoint_name=args.checkpoint,
        channel_names=getattr(args, "channel_names", None), overwrite=args.overwrite,
        progress=not args.no_progress, num_processes=args.num_processes,
    )
    d = res.spec.domains[-1]
    ds_id = res.raw_folder.name[len("Dataset"):len("Dataset") + 3]
    plans_name = res.plans_file.stem
    print(f"Domain '{d.name}' (code {d.code}) added to the {res.spec.num_domains - 1} domains of "
          f"{res.record['source_model_folder']} (fold {res.record['source_fold']}).")
    print(f"  raw dataset: {res.raw_folder} ({res.num_training} training, {res.num_test} test cases)")
    print(f"  plans: {res.plans_file}")
    print(f"  labels: {res.spec.num_classes} (background + {res.spec.num_classes - 1}); new: "
          + ", ".join(f"{d.unified_name(lab)}={lab.unified_id}" for lab in d.labels))
    for w in res.warnings:
        print(f"  warning: {w}")
    print(f"Next: nnUNetv2_preprocess -d {ds_id} -plans_name {plans_name} -c {args.configuration}")
    print(f"      nnUNetv2_train {ds_id} {args.configuration} FOLD -tr nnUNetTrainerMTMD_AddDomain -p {plans_name}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
