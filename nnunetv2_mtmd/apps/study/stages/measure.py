"""``--stage measure``: time a few iterations of every trainer to choose the budget."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from nnunetv2_mtmd.apps.study.budget import StudyBudget, estimate_hours
from nnunetv2_mtmd.apps.study.constants import MEASURE_ENV, MEASURE_PLANS_NAME, StudyError
from nnunetv2_mtmd.apps.study.context import StudyContext
from nnunetv2_mtmd.apps.study.plans import write_measure_plans
from nnunetv2_mtmd.apps.study.progress import epoch_times, fold_folder, measured_step_times, train_command
from nnunetv2_mtmd.apps.study.state import hardware_info
from nnunetv2_mtmd.io import atomic_save_json

logger = logging.getLogger(__name__)


class MeasureStage:
    """Trains every model of fold 0 for 2 short epochs into ``DIR/measure`` (not the study's results)."""

    def __init__(self, ctx: StudyContext):
        self.ctx = ctx

    def budget(self) -> StudyBudget:
        """The measure budget: 2 epochs of ``--measure-iterations`` (x K) iterations, the study's plans part."""
        n, b = self.ctx.opts.measure_iterations, self.ctx.budget
        return replace(b, iterations=2 * n, epochs=2, ae_iterations=min(b.ae_iterations, 2 * n))

    def run(self) -> dict[str, Any]:
        """Time every trainer on fold 0: 2 epochs of ``measure_iterations`` (times K for multi-domain)
        iterations each; the study trainers log the median wall-clock and process CPU time of
        ``train_step`` per epoch (data loading excluded), the second epoch is used. No checkpoints, no
        final validation. Writes ``DIR/measure/speed.json`` and logs the expected hours of the budget.

        The measure budget is recorded in its own plans variant (``nnUNetPlans_study_measure``, same
        preprocessed data), so that the study's plans keep the study budget."""
        ctx = self.ctx
        mb = self.budget()
        results = ctx.dir / "measure" / "nnUNet_results"
        out: dict[str, Any] = {"iterations_per_epoch_individual": ctx.opts.measure_iterations,
                               "budget": mb.to_json(), "runs": {}}
        runs = ctx.runs(0)
        datasets = list(dict.fromkeys(d for _, d, _ in runs))
        ctx.runner.note(f"write {MEASURE_PLANS_NAME}.json next to the study plans of {', '.join(datasets)}: the "
                        f"measure budget {mb.to_json()}")
        if not ctx.dry:
            write_measure_plans(ctx.pre, datasets, mb)
        env = {**ctx.env(train=True), MEASURE_ENV: "1", "nnUNet_results": str(results)}
        for scheme, dataset, trainer in runs:
            fd = fold_folder(results, dataset, trainer, 0, MEASURE_PLANS_NAME)
            if fd.exists() and not ctx.dry:
                shutil.rmtree(fd)
            secs = ctx.runner.command(
                f"measure {scheme} {dataset}",
                [*train_command(dataset, 0, trainer, "new", MEASURE_PLANS_NAME), "--disable_checkpointing"],
                f"measure_{scheme}_{dataset}", env)
            if ctx.dry:
                continue
            steps = measured_step_times(fd)
            if not steps:
                raise StudyError(f"No 'Study measure' lines in the training log of {fd}; see DIR/logs.")
            last = steps[-1]
            out["runs"].setdefault(scheme, {})[dataset] = {**last, "epoch_seconds": epoch_times(fd),
                                                          "run_seconds": secs}
            logger.info("[measure] %s on %s: train_step %.2f s wall, %.2f s CPU (load average %.1f)", scheme,
                        dataset, last["wall"], last["cpu"], last["load"])
        if ctx.dry:
            return out
        out.update(self.expected_hours(out["runs"]))
        atomic_save_json(out, ctx.dir / "measure" / "speed.json")
        logger.info("\n".join(self.summary_lines(out)))
        return out

    def expected_hours(self, runs: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, Any]:
        """Seconds per iteration per scheme (mean over its models) and the expected hours of the study
        budget: at the measured load, and alone (CPU time over all cores to CPU time on one core)."""
        ctx = self.ctx
        nproc = os.cpu_count() or 1
        wall = {s: float(np.mean([v["wall"] for v in d.values()])) for s, d in runs.items()}
        cpu = {s: float(np.mean([v["cpu"] for v in d.values()])) for s, d in runs.items()}
        return {
            "seconds_per_iteration_wall": wall,
            "cpu_seconds_per_iteration": cpu,
            "expected_hours_at_measured_load": estimate_hours(ctx.budget, wall, ctx.k, len(ctx.folds)),
            "expected_hours_alone_best": estimate_hours(ctx.budget, {s: c / nproc for s, c in cpu.items()},
                                                        ctx.k, len(ctx.folds)),
            "expected_hours_alone_worst": estimate_hours(ctx.budget, cpu, ctx.k, len(ctx.folds)),
            "hardware": hardware_info(),
        }

    def summary_lines(self, out: Mapping[str, Any]) -> list[str]:
        """The table of seconds per iteration and expected hours that the stage logs."""
        b, n, n_folds = self.ctx.budget, self.ctx.opts.measure_iterations, len(self.ctx.folds)
        wall, cpu = out["seconds_per_iteration_wall"], out["cpu_seconds_per_iteration"]
        lines = [f"train_step time per iteration (batch {b.batch_size}, patch {b.patch_size}^2 at {b.spacing_mm} mm, "
                 f"median of {n} (x K) iterations) and expected training hours of I = {b.iterations} for "
                 f"{n_folds} fold(s):",
                 f"  {'scheme':14s} {'wall s/it':>9s} {'CPU s/it':>9s} {'h (load)':>9s} {'h alone':>15s}"]
        for s in wall:
            lo = out["expected_hours_alone_best"][s]
            hi = out["expected_hours_alone_worst"][s]
            lines.append(f"  {s:14s} {wall[s]:9.2f} {cpu[s]:9.2f} {out['expected_hours_at_measured_load'][s]:9.1f} "
                         f"{lo:6.1f} - {hi:6.1f}")
        tot = {k: out[f"expected_hours_{k}"]["total"] for k in ("at_measured_load", "alone_best", "alone_worst")}
        lines.append(f"  {'total':14s} {'':9s} {'':9s} {tot['at_measured_load']:9.1f} "
                     f"{tot['alone_best']:6.1f} - {tot['alone_worst']:6.1f}")
        lines.append(f"'h (load)': at the load average measured ({hardware_info().get('load_average')} now); "
                     f"'h alone': CPU time / {os.cpu_count() or 1} cores (perfect parallelism) to CPU time on one "
                     "core. Training iterations only: add data loading stalls, per-epoch validation, the final "
                     "validations and the MJAP autoencoder phases.")
        return lines
