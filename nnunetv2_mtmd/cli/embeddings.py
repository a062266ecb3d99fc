"""``nnUNetv2_mtmd_embeddings``: multi-scale embeddings of a trained model, intra/inter-domain cosine
similarity per stage (the paper's Table 5) and t-SNE pictures per stage.

See :mod:`nnunetv2_mtmd.evaluation.embeddings` for the exact procedure."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from nnunetv2_mtmd.cli.common import HelpFormatter, run

logger = logging.getLogger("nnunetv2_mtmd.embeddings")

DESCRIPTION = """\
Multi-scale embeddings of a trained multi-domain 2D model (Boutillon et al. 2022, Table 5 and the
t-SNE figures). For the training and validation cases of one fold (from the preprocessed data and
splits_final.json; fold 'all': every case is a training case), every slice with at least one
structure is brought to the plans' patch size (zero padding; a crop centred on the structures where
the slice is larger) and passed through the network (eval mode); each encoder and decoder stage
output is global-average-pooled and L2-normalised. Per stage (enc0 = full resolution .. bottleneck,
then dec0 = lowest resolution .. full resolution):
  - intra-domain / inter-domain cosine similarity, mean +- std over pairs of distinct slices of the
    same / of different domains (at most --max_pairs pairs per group, sampled with --seed);
  - a t-SNE picture (PCA to 50 dimensions, perplexity 30 or (n-1)/3 if smaller), coloured by
    domain, 'o' = training, 'x' = validation slice.
Writes OUT/similarity.csv, OUT/similarity.md, OUT/embeddings.npz (per-stage arrays, domain, split,
case_id, slice_index), OUT/tsne_<stage>.png and OUT/settings.json, all-or-nothing.

example: nnUNetv2_mtmd_embeddings -d 950 -c 2d -tr nnUNetTrainerMTMD -f 0 -o emb_fold0
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnUNetv2_mtmd_embeddings", description=DESCRIPTION, formatter_class=HelpFormatter
    )
    p.add_argument(
        "-d", dest="dataset", required=True, default=argparse.SUPPRESS, help="dataset id (950) or name (Dataset950_X)"
    )
    p.add_argument("-c", dest="configuration", default="2d", help="configuration (a 2D one)")
    p.add_argument("-tr", dest="trainer", default="nnUNetTrainerMTMD", help="trainer the model was trained with")
    p.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier")
    p.add_argument("-f", dest="fold", required=True, default=argparse.SUPPRESS, help="fold (0, 1, ... or 'all')")
    p.add_argument(
        "-chk", dest="checkpoint", default="checkpoint_final.pth",
        help="checkpoint file in the fold folder (e.g. checkpoint_best.pth)",
    )
    p.add_argument("-o", dest="output", required=True, type=Path, default=argparse.SUPPRESS,
                   help="output folder (must not exist)")
    p.add_argument("-device", dest="device", default="cpu", choices=["cpu", "cuda"], help="torch device")
    p.add_argument("--batch_size", type=int, default=32, help="slices per forward pass")
    p.add_argument(
        "--max_slices_per_case", type=int, default=8,
        help="at most this many slices with a structure per case, evenly spaced over them (0 = all); "
        "keeps CPU runs short",
    )
    p.add_argument(
        "--max_pairs", type=int, default=20000,
        help="at most this many pairs per group (intra / inter) for the similarity statistics; more are "
        "subsampled uniformly without replacement",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the pair sampling, PCA and t-SNE")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bars")
    return p


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from nnunetv2_mtmd.evaluation.embeddings import run_embeddings

    res = run_embeddings(
        args.dataset,
        args.configuration,
        args.trainer,
        args.fold,
        args.output,
        plans=args.plans,
        checkpoint_name=args.checkpoint,
        device=args.device,
        batch_size=args.batch_size,
        max_slices_per_case=args.max_slices_per_case,
        max_pairs=args.max_pairs,
        seed=args.seed,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    n_val = sum(r.split == "val" for r in res.records)
    print(f"Embedded {len(res.records)} slices ({len(res.records) - n_val} training, {n_val} validation) "
          f"at {len(res.stage_names)} stages.")
    print((res.output / "similarity.md").read_text())
    print(f"Wrote {res.output} (times in s: {res.seconds})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
