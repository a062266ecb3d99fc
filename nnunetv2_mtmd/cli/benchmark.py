"""``nnUNetv2_mtmd_benchmark``: speed and memory of the MTMD trainers against stock nnU-Net."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nnunetv2_mtmd.cli.common import HelpFormatter, run
from nnunetv2_mtmd.errors import InputDataError, OutputExistsError

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Measure, in one run and side by side, on a merged synthetic three-joint dataset (written, merged,
planned with nnUNetPlannerMTMD and preprocessed inside a temporary folder):
  - training iteration time (forward, loss, backward, optimizer step; data loading excluded) of
    nnUNetTrainerMTMD_DSL, nnUNetTrainerMTMD_DSL_MSC and nnUNetTrainerMTMD against stock
    nnUNetTrainer with the same plans-derived network size, batch size and patch size;
  - nnUNetv2_predict time on the same cases, MTMD model vs stock model;
  - peak memory of a training iteration, MTMD vs stock;
  - DSL iteration time with K = 2, 5, 10 synthetic domains at equal batch size (K=10 / K=2).
Timings are interleaved between the compared variants, after warm-up; the table shows medians and
the ratios are medians of the per-round ratios (runs of one round are seconds apart). Prints one table;
--json writes {"train_step_ratio": {"DSL", "DSL_MSC", "MTMD"}, "inference_ratio", "memory_ratio",
"k_scaling_ratio", "details": {...raw numbers...}}. The targets of the ratios, the method and
measured numbers: docs/benchmarks.md.

The full run takes about 5 minutes on 2 CPU cores; --quick (tiny shapes, 1-2 repeats) checks that
everything works in about a minute, its numbers are not meaningful.

Example:
  nnUNetv2_mtmd_benchmark --json benchmark.json
  nnUNetv2_mtmd_benchmark -device cuda --repeats 30 --json benchmark_gpu.json
"""


def _default_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except Exception:  # pragma: no cover - torch is a dependency
        return "cpu"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnUNetv2_mtmd_benchmark", description=DESCRIPTION,
                                formatter_class=HelpFormatter)
    p.add_argument("--json", type=Path, default=argparse.SUPPRESS,
                   help="write the result as JSON to this file (default: not written)")
    p.add_argument("-device", "--device", choices=("cpu", "cuda"), default=argparse.SUPPRESS,
                   help="device to measure on (default: cuda if available, else cpu)")
    p.add_argument("--repeats", type=int, default=argparse.SUPPRESS,
                   help="timed training iterations per trainer (default 20; --quick: 2)")
    p.add_argument("--warmup", type=int, default=argparse.SUPPRESS,
                   help="untimed warm-up iterations per trainer (default 3; --quick: 1)")
    p.add_argument("--batch_size", type=int, default=argparse.SUPPRESS,
                   help="training batch size, a multiple of the 3 domains (default: the planned batch size)")
    p.add_argument("--k_batch_size", type=int, default=10,
                   help="batch size of the domain-scaling measurement (a multiple of 2, 5 and 10)")
    p.add_argument("--k_repeats", type=int, default=argparse.SUPPRESS,
                   help="timed iterations per K in the domain-scaling measurement (default 10; --quick: 2)")
    p.add_argument("--predict_repeats", type=int, default=argparse.SUPPRESS,
                   help="timed nnUNetv2_predict runs per model (default 3; --quick: 1)")
    p.add_argument("--threads", type=int, default=argparse.SUPPRESS,
                   help="torch threads for the training measurements (default: 1 on CPU, which other processes "
                        "on a shared machine disturb least; torch's default on CUDA)")
    p.add_argument("--clock", choices=("cpu", "wall"), default=argparse.SUPPRESS,
                   help="timings that give the ratios: CPU time of the process (robust on a busy machine) or "
                        "wall time (default: cpu on CPU, wall on CUDA); both are recorded in the JSON")
    p.add_argument("--disable_tta", action="store_true",
                   help="predict without test-time mirroring (both models; --quick always does)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and batches")
    p.add_argument("--workdir", type=Path, default=argparse.SUPPRESS,
                   help="keep the synthetic datasets, plans, models and nnU-Net's output in this (new or empty) "
                        "folder (default: a temporary folder, deleted afterwards)")
    p.add_argument("--compile", action="store_true",
                   help="also time the training iteration with torch.compile'd networks (stock and every scheme, "
                        "as nnU-Net compiles: the network, not the loss), with compile time and graph counts")
    p.add_argument("--compile_backend", default="inductor",
                   help="torch.compile backend of --compile (inductor: nnU-Net's; aot_eager: quick check)")
    p.add_argument("--quick", action="store_true",
                   help="tiny shapes and 1-2 repeats: a smoke test of the whole benchmark, not a measurement")
    return p


def _settings(args: argparse.Namespace) -> Any:
    """The :class:`~nnunetv2_mtmd.apps.benchmark.BenchmarkSettings` the options ask for (validated)."""
    from nnunetv2_mtmd.apps.benchmark import BenchmarkSettings

    device = args.device or _default_device()
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise InputDataError("-device cuda was given but torch sees no CUDA device; use -device cpu.")
    settings = BenchmarkSettings.quick_settings(device) if args.quick else BenchmarkSettings(device=device)
    for name in ("repeats", "warmup", "k_repeats", "predict_repeats"):
        if getattr(args, name) is not None:
            setattr(settings, name, getattr(args, name))
    settings.batch_size = args.batch_size
    settings.k_batch_size = args.k_batch_size
    settings.seed = args.seed
    settings.disable_tta = settings.disable_tta or args.disable_tta
    settings.threads = args.threads
    settings.clock = args.clock
    settings.compile = args.compile
    settings.compile_backend = args.compile_backend
    settings.validate()
    return settings


def _print_result(result: Any, settings: Any) -> None:
    """The console report: one line on machine and dataset, the table, its footer, the total time."""
    from nnunetv2_mtmd.apps.benchmark import TABLE_FOOTER, format_table, table_rows

    info = result.to_json()["details"]
    print()
    print(f"nnUNetv2_mtmd_benchmark on {info['device']} ({info['device_name']}, {info['cpu_count']} CPUs, "
          f"{info['torch_threads']} torch threads, torch {info['torch_version']}); dataset {info['dataset']}: "
          f"patch {info['patch_size']}, batch {info['batch_size']}, {info['n_stages']} stages, "
          f"{info['num_domains']} domains; medians ({info['clock']} time) of {settings.repeats} iterations after "
          f"{settings.warmup} warm-up"
          + (" [--quick: numbers are not meaningful]" if settings.quick else ""))
    print(format_table(table_rows(result)))
    print(TABLE_FOOTER)
    print(f"total {info['total_s']:.0f} s")


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("json", "device", "repeats", "warmup", "batch_size", "k_repeats", "predict_repeats", "threads",
                 "clock", "workdir"):
        if not hasattr(args, name):
            setattr(args, name, None)
    from nnunetv2_mtmd.apps.benchmark import check_result, run_benchmark, write_json

    if args.workdir is not None and args.workdir.exists() and any(args.workdir.iterdir()):
        raise OutputExistsError(f"--workdir {args.workdir} exists and is not empty; give a new or empty folder.")
    settings = _settings(args)
    if args.workdir is not None:
        workdir = args.workdir.resolve()
        if workdir.exists() and any(workdir.iterdir()):
            raise OutputExistsError(f"--workdir {workdir} exists and is not empty; give a new or empty folder.")
        cleanup = False
    else:
        workdir = Path(tempfile.mkdtemp(prefix="nnunetv2_mtmd_benchmark_"))
        cleanup = True
    try:
        result = run_benchmark(settings, workdir)
    finally:
        if cleanup:
            shutil.rmtree(workdir, ignore_errors=True)
    _print_result(result, settings)
    out = result.to_json()
    problems = check_result(out)
    if args.json is not None:
        write_json(out, args.json)
        print(f"wrote {args.json}")
    if problems:
        print("error: invalid result: " + "; ".join(problems), file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
