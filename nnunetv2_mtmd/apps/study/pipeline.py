"""The study pipeline (:class:`Study`): the stages of :mod:`~nnunetv2_mtmd.apps.study.stages` in order,
over one :class:`~nnunetv2_mtmd.apps.study.context.StudyContext`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nnunetv2_mtmd.apps.study.archive import StudyArchive
from nnunetv2_mtmd.apps.study.budget import StudyBudget
from nnunetv2_mtmd.apps.study.constants import STAGES
from nnunetv2_mtmd.apps.study.context import StudyContext, StudyOptions, job_threads  # noqa: F401
from nnunetv2_mtmd.apps.study.data import Source
from nnunetv2_mtmd.apps.study.runner import _bin, work_lock  # noqa: F401
from nnunetv2_mtmd.apps.study.stages import (
    EvaluateStage,
    MeasureStage,
    PrepareStage,
    ReportStage,
    StatusStage,
    TrainStage,
    union_folders,  # noqa: F401
)
from nnunetv2_mtmd.apps.study.state import StudyState
from nnunetv2_mtmd.errors import InputDataError


class Study:
    """The pipeline. Construct with :class:`StudyOptions`, then :meth:`run` a stage.

    A thin facade: the work is done by the stage objects (``preparation``, ``training``,
    ``evaluation``, ``reporting``, ``measurement``, ``status``), which share :attr:`ctx`."""

    def __init__(self, opts: StudyOptions):
        self.ctx = StudyContext(opts)
        self.preparation = PrepareStage(self.ctx)
        self.training = TrainStage(self.ctx)
        self.evaluation = EvaluateStage(self.ctx)
        self.reporting = ReportStage(self.ctx)
        self.measurement = MeasureStage(self.ctx)
        self.status = StatusStage(self.ctx)
        #: ``--archive``: what outlives the work folder (docs/study.md, "Archive")
        self.archive = (StudyArchive(self.ctx, self.ctx.archive_path, self.evaluation)
                        if self.ctx.archive_path is not None else None)
        if self.archive is not None:
            self.training.on_model_done = self.archive.model_done

    # the context's folders and options, as before the stages were split off
    @property
    def opts(self) -> StudyOptions:
        return self.ctx.opts

    @property
    def dir(self) -> Path:
        return self.ctx.dir

    @property
    def raw(self) -> Path:
        return self.ctx.raw

    @property
    def pre(self) -> Path:
        return self.ctx.pre

    @property
    def results(self) -> Path:
        return self.ctx.results

    @property
    def merged(self) -> str:
        return self.ctx.merged

    @property
    def state(self) -> StudyState:
        return self.ctx.state

    @property
    def budget(self) -> StudyBudget:
        return self.ctx.budget

    @property
    def sources(self) -> list[Source]:
        return self.ctx.sources

    @property
    def sources_dir(self) -> Path:
        return self.ctx.sources_dir

    @property
    def schemes(self) -> list[str]:
        return self.ctx.schemes

    @property
    def folds(self) -> list[int]:
        return self.ctx.folds

    @property
    def report_path(self) -> Path:
        return self.ctx.report_path

    def env(self, train: bool = False) -> dict[str, str]:
        """The environment of the study's commands (:meth:`StudyContext.env`)."""
        return self.ctx.env(train)

    # ---------------------------------------------------------------------------- stages
    def run(self, stage: str = "all") -> None:
        """Run ``stage`` (one of :data:`STAGES`); ``all``: prepare, train (evaluating and reporting every
        fold as soon as it is complete), evaluate, report. With an archive (``--archive``), every stage but
        prepare first restores the archived models the work folder lacks, every finished model is archived
        at once, and ``archive`` writes the archive of every finished model."""
        if stage not in STAGES:
            raise InputDataError(f"Unknown stage {stage!r}; choose from {', '.join(STAGES)}.")
        if stage == "status":  # read-only: no lock, so it works beside a running study
            self.status.run()
            return
        with work_lock(self.ctx.dir, self.ctx.dry):
            self.ctx.start(stage)
            if stage in ("all", "prepare", "measure", "archive"):
                self.prepare()
            if stage == "measure":
                self.measure()
                return
            if self.archive is not None and stage != "prepare":
                self.archive.restore()
            if stage == "archive":
                if self.archive is None:
                    raise InputDataError("--stage archive needs --archive DIR (none is recorded in "
                                         f"{self.ctx.dir / 'state.json'}).")
                self.archive.save()
                return
            if stage in ("all", "train"):
                self.train(evaluate_as_we_go=stage == "all")
            if stage in ("all", "evaluate"):
                self.evaluate()
            if stage in ("all", "report"):
                self.report()

    def prepare(self) -> None:
        self.preparation.run()

    def train(self, evaluate_as_we_go: bool = False) -> None:
        """Train every pending model; with ``evaluate_as_we_go`` each fold is evaluated and reported as
        soon as it is complete."""
        self.training.run(self._evaluate_and_report if evaluate_as_we_go else None)

    def _evaluate_and_report(self) -> None:
        self.evaluate()
        self.report()

    def evaluate(self) -> None:
        self.evaluation.run()

    def report(self) -> None:
        self.reporting.run()

    def measure(self) -> dict[str, Any]:
        return self.measurement.run()

    def progress(self) -> list[dict[str, Any]]:
        """One row per model of every requested fold and scheme (:meth:`StatusStage.rows`)."""
        return self.status.rows()
