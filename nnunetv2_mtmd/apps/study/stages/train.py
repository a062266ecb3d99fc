"""``--stage train``: ``nnUNetv2_train`` of every pending model in the study's run order (the main schemes
fold by fold, then the later ones), resumable, ``--jobs`` at once, the evaluation handed on (evaluate +
report) whenever what it can cover grows (:meth:`StudyContext.evaluation_plan`); a model-code fingerprint
recorded at every start of a training (:mod:`~nnunetv2_mtmd.apps.study.fingerprint`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from nnunetv2_mtmd.apps.study.constants import StudyError
from nnunetv2_mtmd.apps.study.context import StudyContext, job_threads
from nnunetv2_mtmd.apps.study.fingerprint import MIXED, model_fingerprint, model_key, take_fingerprint
from nnunetv2_mtmd.apps.study.plans import record_budget
from nnunetv2_mtmd.apps.study.progress import train_command
from nnunetv2_mtmd.apps.study.state import _now

logger = logging.getLogger(__name__)

#: ``(fold, scheme, dataset, trainer, status)`` of one model to train (status: :func:`training_status`).
Pending = tuple[int, str, str, str, str]

_STARTING = {"new": "starting", "resume": "continuing from a checkpoint (--c)",
             "validate": "running the final validation (--val)"}


class TrainStage:
    """Trains the models of the context's folds and schemes, in the run order (:meth:`StudyContext.train_order`)."""

    def __init__(self, ctx: StudyContext):
        self.ctx = ctx
        #: called (in the worker's thread) after every model that finished: the archive (``--archive``)
        self.on_model_done: Callable[[], None] | None = None

    def pending(self) -> list[Pending]:
        """Every model still to train, in the run order; models already done are marked done in the
        state on the way."""
        ctx = self.ctx
        out = []
        for fold, scheme, dataset, trainer in ctx.train_order():
            status = ctx.run_status(dataset, trainer, fold)
            if status == "done":
                key = model_key(fold, scheme, dataset)
                if not ctx.dry and not ctx.state.is_done(key):
                    ctx.state.mark_done(key)
                logger.info("[train] fold %d %s on %s: done (skipped)", fold, scheme, dataset)
                continue
            out.append((fold, scheme, dataset, trainer, status))
        return out

    def fingerprint(self, key: str, status: str) -> None:
        """Record the model-code fingerprint of the training ``key`` about to run in state ``status``."""
        ctx = self.ctx
        take = take_fingerprint(ctx.env(train=True), status, _now())
        ctx.state.add_fingerprint(key, take, restart=status == "new")
        fp = model_fingerprint(ctx.state.data["fingerprints"][key])
        logger.info("[train] %s: model code %s (sha256 %s of %s; %s)%s", key, take["fingerprint"],
                    take["code_sha256"][:12], take["package"],
                    ", ".join(f"{k} {v}" for k, v in take["versions"].items()),
                    " -- differs from the code it was started with: the model is MIXED" if fp == MIXED else "")
        here = str(Path(__file__).resolve().parents[3])
        if str(Path(take["package"]).resolve()) != here:
            logger.warning("[train] the trainings load nnunetv2_mtmd from %s, the study process from %s (started "
                           "from another folder than the snapshot? docs/study.md, 'Pinning the code')",
                           take["package"], here)

    def train_one(self, fold: int, scheme: str, dataset: str, trainer: str, status: str) -> None:
        """One ``nnUNetv2_train`` (new, ``--c`` or ``--val``); its seconds go to the state."""
        ctx = self.ctx
        key = model_key(fold, scheme, dataset)
        if not ctx.dry:
            logger.info("[train] fold %d %s on %s: %s", fold, scheme, dataset, _STARTING[status])
            self.fingerprint(key, status)
        secs = ctx.runner.command(f"train fold {fold} {scheme} {dataset}",
                                  train_command(dataset, fold, trainer, status),
                                  f"train_fold{fold}_{scheme}_{dataset}", ctx.env(train=True))
        if ctx.dry:
            return
        ctx.state.add_seconds(key, secs)
        if ctx.run_status(dataset, trainer, fold) != "done":
            raise StudyError(f"nnUNetv2_train for fold {fold} {scheme} on {dataset} ended without a "
                             "complete validation folder; see the log in DIR/logs.")
        ctx.state.mark_done(key, seconds=ctx.state.data["seconds"][key])
        if self.on_model_done is not None:
            self.on_model_done()

    def run(self, on_fold_complete: Callable[[], None] | None = None) -> None:
        """Train every pending model; with ``jobs > 1`` that many at once (in the run order, each with
        ``cores // jobs`` torch threads). ``on_fold_complete`` (evaluate + report) is called whenever
        the evaluation can cover more (:meth:`StudyContext.evaluation_plan`: one more fold has all its
        main models done, or a later scheme has finished every evaluated fold), and first thing when
        something was complete before this run."""
        ctx = self.ctx
        if not ctx.dry:
            # before any training reads them: plans written before they carried the budget get it now
            record_budget(ctx.pre, ctx.datasets, ctx.budget, ctx.runner.note)
        pending = self.pending()
        handed_on: list[tuple[list[int], list[str]]] = []

        def hand_on_complete_folds() -> None:
            if on_fold_complete is None or ctx.dry:
                return
            plan = ctx.evaluation_plan()
            if plan[0] and plan not in handed_on:
                handed_on.append(plan)
                on_fold_complete()

        if ctx.opts.jobs <= 1 or ctx.dry:
            hand_on_complete_folds()  # a fold completed before this run (stopped during its evaluation)
            for item in pending:
                self.train_one(*item)
                hand_on_complete_folds()
            return
        self._run_parallel(pending, hand_on_complete_folds)
        hand_on_complete_folds()

    def _run_parallel(self, pending: list[Pending], hand_on_complete_folds: Callable[[], None]) -> None:
        jobs = self.ctx.opts.jobs
        logger.info("[train] %d trainings at once, %d torch thread(s) each", jobs, job_threads(jobs))
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(self.train_one, *item) for item in pending]
            try:
                # a fold completed before this run (stopped during its evaluation): now, while the
                # workers train, not when the next training ends
                hand_on_complete_folds()
                for fut in as_completed(futures):
                    fut.result()
                    hand_on_complete_folds()
            except BaseException:
                # models already running continue to their end (each checkpoints every epoch anyway)
                for f in futures:
                    f.cancel()
                raise
