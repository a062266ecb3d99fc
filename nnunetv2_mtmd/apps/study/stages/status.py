"""``--stage status``: every model's state, its model-code fingerprint and the remaining training time,
from the files and ``state.json`` only (no lock, so it works beside a running study)."""

from __future__ import annotations

from typing import Any

import numpy as np

from nnunetv2_mtmd.apps.study.constants import INDIVIDUAL
from nnunetv2_mtmd.apps.study.context import StudyContext
from nnunetv2_mtmd.apps.study.fingerprint import STATE_KEY, fingerprint_cell, model_key
from nnunetv2_mtmd.apps.study.progress import epoch_times, epochs_completed, fold_folder, format_progress
from nnunetv2_mtmd.errors import InputDataError

_STATES = {"done": "done", "validate": "final validation missing", "new": "not started"}


class StatusStage:
    """Reads nnU-Net's files of every requested model; writes nothing."""

    def __init__(self, ctx: StudyContext):
        self.ctx = ctx

    def rows(self) -> list[dict[str, Any]]:
        """One row per model of every requested fold and scheme, in the run order (see :func:`format_progress`)."""
        ctx, b = self.ctx, self.ctx.budget
        fps = ctx.state.data.get(STATE_KEY, {})
        rows = []
        for fold, scheme, dataset, trainer in ctx.train_order(ctx.eval_folds, ctx.all_schemes):
            per_epoch = b.iterations_per_epoch(1 if scheme == INDIVIDUAL else ctx.k)
            fd = fold_folder(ctx.results, dataset, trainer, fold)
            done_ep = epochs_completed(fd, b.epochs)
            times = epoch_times(fd)
            state = _STATES.get(ctx.run_status(dataset, trainer, fold), f"training (epoch {done_ep + 1})")
            rows.append({"fold": fold, "scheme": scheme, "dataset": dataset, "state": state,
                         "epochs_done": done_ep, "epochs": b.epochs,
                         "iterations_left": (b.epochs - done_ep) * per_epoch,
                         "s_per_it": float(np.median(times)) / per_epoch if times else None,
                         "code": fingerprint_cell(fps.get(model_key(fold, scheme, dataset))),
                         "later": scheme in ctx.later})
        return rows

    def run(self) -> None:
        if self.ctx.state.config is None:
            raise InputDataError(f"No study in {self.ctx.dir} yet (no state.json with a configuration); start one "
                                 "with --stage all.")
        # the table is this stage's output (stdout), not a log line
        print(format_progress(self.rows(), self.ctx.opts.jobs))
