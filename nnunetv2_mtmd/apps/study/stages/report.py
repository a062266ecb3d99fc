"""``--stage report``: ``results.md`` from the evaluation files (:func:`build_report`), keeping a
discussion written into the previous report."""

from __future__ import annotations

import logging

from nnunetv2_mtmd.apps.study.archive import restored_models
from nnunetv2_mtmd.apps.study.context import StudyContext, study_command
from nnunetv2_mtmd.apps.study.discussion import keep_discussion, mark_stale_discussion
from nnunetv2_mtmd.apps.study.fingerprint import STATE_KEY
from nnunetv2_mtmd.apps.study.report import ReportData, build_report
from nnunetv2_mtmd.io import atomic_write_text, load_json

logger = logging.getLogger(__name__)


def report_data(ctx: StudyContext) -> ReportData:
    """What :func:`build_report` needs from the study, besides the evaluation files."""
    return ReportData(
        workdir=ctx.dir,
        report_path=ctx.report_path,
        spec=ctx.spec,
        merged=ctx.merged,
        budget=ctx.budget,
        num_domains=ctx.k,
        results=ctx.results,
        # the same models in every fold: fold 0 stands for all
        models={s: [(d, tr) for _, d, tr in ctx.runs(0, [s])] for s in ctx.eval_schemes},
        requested_folds=ctx.eval_folds,
        splits=ctx.load_splits(ctx.merged),
        planned=ctx.state.data["done"].get("plans_variant", {}).get("plans", {}),
        commands=list(ctx.state.data.get("commands", [])),
        command=study_command(ctx),
        environment={k: v for k, v in ctx.env().items() if k.startswith("nnUNet_")},
        n_proc_da=ctx.opts.n_proc_da,
        fingerprints=dict(ctx.state.data.get(STATE_KEY, {})),
        later=list(ctx.later),
        done_folds={s: [f for f in ctx.eval_folds if ctx.fold_complete(f, [s])] for s in ctx.eval_schemes},
        restored=restored_models(ctx),
    )


class ReportStage:
    """Writes the report once something is evaluated (``DIR/evaluation/evaluated.json``)."""

    def __init__(self, ctx: StudyContext):
        self.ctx = ctx

    def run(self) -> None:
        ctx = self.ctx
        ev_file = ctx.dir / "evaluation" / "evaluated.json"
        if ctx.dry:
            ctx.runner.note(f"write {ctx.report_path} from {ctx.dir / 'evaluation'}")
            return
        if not ev_file.is_file():
            logger.info("[report] nothing evaluated yet: no report written.")
            return
        text = build_report(report_data(ctx), load_json(ev_file))
        if ctx.report_path.is_file():
            text = keep_discussion(text, ctx.report_path.read_text(encoding="utf-8"))
        text, stray = mark_stale_discussion(text)
        if stray:
            logger.warning("[report] the discussion of %s quotes numbers that appear nowhere else in the report "
                           "(stale after new folds, or typed by hand?): %s", ctx.report_path, ", ".join(stray))
        atomic_write_text(ctx.report_path, text)
        logger.info("[report] wrote %s", ctx.report_path)
