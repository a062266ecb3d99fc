"""The study's stages, one object each over a shared :class:`~nnunetv2_mtmd.apps.study.context.StudyContext`:
prepare, train, evaluate (with the embeddings), report, measure, status. :class:`~nnunetv2_mtmd.apps.study.Study`
runs them in order."""

from nnunetv2_mtmd.apps.study.stages.evaluate import EvaluateStage, union_folders
from nnunetv2_mtmd.apps.study.stages.measure import MeasureStage
from nnunetv2_mtmd.apps.study.stages.prepare import PrepareStage
from nnunetv2_mtmd.apps.study.stages.report import ReportStage, report_data
from nnunetv2_mtmd.apps.study.stages.status import StatusStage
from nnunetv2_mtmd.apps.study.stages.train import TrainStage

__all__ = ["EvaluateStage", "MeasureStage", "PrepareStage", "ReportStage", "StatusStage", "TrainStage",
           "report_data", "union_folders"]
