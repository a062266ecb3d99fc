"""``nnUNetv2_mtmd_study``: the real-data ablation study, end to end and resumable (nnunetv2_mtmd/apps/study/)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from nnunetv2_mtmd.cli.common import HelpFormatter, run

logger = logging.getLogger("nnunetv2_mtmd.apps.study")

DESCRIPTION = """\
Run the ablation study of the multi-domain schemes against stock nnU-Net on K source datasets
(default: the three real MR datasets in ../shared/realdata), with one budget, one split and one
evaluation for every scheme. Everything lives in --workdir (its own nnUNet_raw, nnUNet_preprocessed,
nnUNet_results, state.json, study_log.txt, logs/, evaluation/); running the same command again
continues where it stopped (finished models are skipped, interrupted ones continue with --c).

Stages (--stage): prepare (copy + merge + plan + coarse plans variant + preprocess + splits), train
(nnUNetv2_train per fold and scheme), evaluate (gather held-out predictions, nnUNetv2_mtmd_postprocess,
nnUNetv2_mtmd_evaluate with and without post-processing, nnUNetv2_mtmd_compare,
nnUNetv2_mtmd_embeddings of every multi-domain scheme), report (results.md). 'all' runs them in
order and evaluates + reports after every finished fold. 'measure' times a few iterations of every
trainer (after prepare) and prints the expected hours of the budget. 'status' prints every model's
state and the remaining training time (read-only; works while the study runs; pass --jobs as used).
'archive' (with --archive DIR) writes every finished model's logs, evaluations and records to DIR, which a
new work folder restores from (a study that outlives its work folder; done after every model anyway).

Run order: the main schemes (all but --later) fold by fold, Individual first and the others in the
order of --schemes; then the --later schemes ("if time allows") fold by fold. A fold is evaluated
once its main models are done; a later scheme joins the evaluation when it has finished every
evaluated fold. Every training records a fingerprint of the model code it runs (state.json,
--stage status, the report).

Budget options default to the values recorded in DIR/state.json (first run: the documented default
budget); a run with different values than the recorded ones is refused. See docs/study.md.

Long runs: setsid nohup python -m nnunetv2_mtmd.cli.study --workdir DIR > DIR.out 2>&1 &"""

def _scheme_help() -> str:
    from nnunetv2_mtmd.schemes import INDIVIDUAL, SCHEMES

    return ", ".join(f"{s.name} (stock nnUNetTrainer on each source dataset)" if s.name == INDIVIDUAL else s.name
                     for s in SCHEMES)


def build_parser() -> argparse.ArgumentParser:
    from nnunetv2_mtmd.apps.study import (
        DEFAULT_FOLDS,
        DEFAULT_LATER,
        DEFAULT_SCHEMES,
        MERGED_ID,
        MERGED_NAME,
        STAGES,
        StudyBudget,
    )

    b = StudyBudget()
    p = argparse.ArgumentParser(prog="nnUNetv2_mtmd_study", description=DESCRIPTION, formatter_class=HelpFormatter)
    p.add_argument("--workdir", type=Path, default=None,
                   help="work folder (default: $MTMD_STUDY_DIR, else ~/mtmd_study); never inside the repository")
    p.add_argument("--stage", choices=STAGES, default="all", help="what to run")
    p.add_argument("--sources", type=Path, default=None,
                   help="folder holding the source raw datasets DatasetXXX_* (default: recorded, else "
                        "../shared/realdata next to the repository)")
    p.add_argument("--domains", nargs="+", default=None,
                   help="domain names, one per source dataset in sorted order (default: lumbar sij pelvis for the "
                        "real data, else derived from the dataset names)")
    p.add_argument("--schemes", nargs="+", default=None,
                   help=f"schemes to train, in this order: {_scheme_help()} (default: recorded, else "
                        f"{' '.join(DEFAULT_SCHEMES)})")
    p.add_argument("--later", nargs="*", default=None, metavar="SCHEME",
                   help="schemes of --schemes trained 'if time allows': after every fold of the others; "
                        "--later alone: none (default: recorded, else " + " ".join(DEFAULT_LATER) + ")")
    p.add_argument("--folds", nargs="+", type=int, default=None,
                   help=f"folds of the 5-fold split (default: recorded, else {' '.join(map(str, DEFAULT_FOLDS))})")
    g = p.add_argument_group("budget (identical for every scheme; defaults: recorded values, else these)")
    g.add_argument("--iterations", type=int, default=None,
                   help=f"I: training iterations of one Individual model; multi-domain models get K*I "
                        f"({b.iterations})")
    g.add_argument("--epochs", type=int, default=None, help=f"epochs (I must be a multiple) ({b.epochs})")
    g.add_argument("--val-iterations", type=int, default=None,
                   help=f"pseudo-Dice batches per epoch (x K for multi-domain) ({b.val_iterations})")
    g.add_argument("--ae-iterations", type=int, default=None,
                   help=f"MJAP label-autoencoder iterations ({b.ae_iterations})")
    g.add_argument("--batch-size", type=int, default=None, help=f"batch size of every model ({b.batch_size})")
    g.add_argument("--spacing", type=float, default=None,
                   help=f"2D in-plane target spacing in mm for every dataset ({b.spacing_mm})")
    g.add_argument("--patch-size", type=int, default=None, help=f"square 2D patch size ({b.patch_size})")
    g.add_argument("--max-features", type=int, default=None,
                   help=f"maximum features per network stage ({b.max_features})")
    g.add_argument("--base-features", type=int, default=None,
                   help=f"features of the first network stage, doubled per stage up to --max-features "
                        f"(nnU-Net: 32) ({b.base_features})")
    g.add_argument("--fixed-orientation", action=argparse.BooleanOptionalAction, default=None,
                   help="train every scheme without mirroring (also at inference) and with rotations within +-30 "
                        "degrees instead of nnU-Net's mirroring and +-180 degrees; --no-fixed-orientation: "
                        f"nnU-Net's augmentation ({'on' if b.fixed_orientation else 'off'})")
    p.add_argument("--merged-id", type=int, default=MERGED_ID, help="id of the merged dataset")
    p.add_argument("--merged-name", default=MERGED_NAME, help="name of the merged dataset")
    p.add_argument("-np", dest="num_processes", type=int, default=2,
                   help="worker processes for preprocessing, export and evaluation")
    p.add_argument("--n-proc-da", type=int, default=0,
                   help="data augmentation worker processes during training (nnUNet_n_proc_DA); 0 = augment in the "
                        "training process, faster on a 2-core CPU than a worker competing with torch's threads")
    p.add_argument("-j", "--jobs", type=int, default=1,
                   help="trainings run at once, each with (cores // jobs) torch threads. On a 2-core CPU, 2 jobs of "
                        "1 thread train about 1.4x more iterations per hour than 1 job of 2 threads (docs/study.md)")
    p.add_argument("--report", type=Path, default=None,
                   help="where results.md goes (default DIR/results.md); pictures go to a folder named like it "
                        "without .md (e.g. --report docs/results.md -> docs/results/)")
    p.add_argument("--archive", type=Path, default=None, metavar="DIR",
                   help="study archive (recorded; default: none): every finished model's logs, evaluation and "
                        "records are written to DIR as soon as it finishes, and models DIR holds that the work "
                        "folder lacks are restored first, so a study can continue in a new work folder "
                        "(docs/study.md, 'Archive'). Kilobytes per model, no images or checkpoints")
    p.add_argument("--measure-iterations", type=int, default=10,
                   help="--stage measure: timed iterations per epoch of an Individual model (x K multi-domain)")
    p.add_argument("--skip-verify", action="store_true",
                   help="skip nnU-Net's --verify_dataset_integrity when extracting fingerprints (the merge already "
                        "checks labels and geometry; saves minutes)")
    p.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    return p


_BUDGET_ARGS = {"iterations": "iterations", "epochs": "epochs", "val_iterations": "val_iterations",
                "ae_iterations": "ae_iterations", "batch_size": "batch_size", "spacing": "spacing_mm",
                "patch_size": "patch_size", "max_features": "max_features",
                "base_features": "base_features", "fixed_orientation": "fixed_orientation"}


def _main(argv: Sequence[str] | None) -> int:
    from nnunetv2_mtmd.apps.study import Study, StudyOptions, default_workdir
    from nnunetv2_mtmd.errors import InputDataError

    args = build_parser().parse_args(argv)
    if args.num_processes < 1 or args.n_proc_da < 0 or args.measure_iterations < 1 or args.jobs < 1:
        raise InputDataError("-np, --jobs and --measure-iterations must be >= 1 and --n-proc-da >= 0; found "
                             f"-np {args.num_processes}, --jobs {args.jobs}, --measure-iterations "
                             f"{args.measure_iterations}, --n-proc-da {args.n_proc_da}.")
    workdir = (args.workdir or default_workdir()).expanduser().resolve()
    repo = Path(__file__).resolve().parents[2]
    if workdir == repo or repo in workdir.parents:
        raise InputDataError(f"--workdir {workdir} is inside the repository {repo}; choose a folder outside it "
                             "(e.g. ~/mtmd_study).")
    budget = {key: getattr(args, a) for a, key in _BUDGET_ARGS.items() if getattr(args, a) is not None}
    opts = StudyOptions(workdir=workdir, sources_dir=args.sources, domains=args.domains, schemes=args.schemes,
                        later=args.later, folds=args.folds, budget=budget, merged_id=args.merged_id,
                        merged_name=args.merged_name,
                        num_processes=args.num_processes, n_proc_da=args.n_proc_da, jobs=args.jobs, report=args.report,
                        archive=args.archive,
                        dry_run=args.dry_run, measure_iterations=args.measure_iterations,
                        verify=not args.skip_verify)
    study = Study(opts)
    study.run(args.stage)
    if not args.dry_run:
        logger.info("Study stage '%s' finished; state in %s, log in %s", args.stage, workdir / "state.json",
                    workdir / "study_log.txt")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
