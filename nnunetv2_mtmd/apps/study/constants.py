"""Constants of the real-data study (names, ids, environment variables, schemes) and its error."""

from __future__ import annotations

from pathlib import Path

from nnunetv2_mtmd.errors import MTMDError
from nnunetv2_mtmd.schemes import INDIVIDUAL, SCHEMES, replicates  # noqa: F401
from nnunetv2_mtmd.training.budget import BUDGET_ENV, MEASURE_ENV, PLANS_BUDGET_KEY, THREADS_ENV  # noqa: F401

# ------------------------------------------------------------------------------------ constants
#: Where the real data lives: ``../shared/realdata`` next to the repository (never copied into it).
REALDATA_DIR = Path(__file__).resolve().parents[3].parent / "shared" / "realdata"
#: Domain names of the real datasets (as in dataset_conversion/merge_real_musculoskeletal.py).
REAL_DOMAIN_NAMES = {
    "Dataset901_LumbarVertebraeMR": "lumbar",
    "Dataset902_SacroiliacMR": "sij",
    "Dataset903_PelvisBoneMR": "pelvis",
}
MERGED_ID = 950
MERGED_NAME = "MSKBonesMR"
PLANS_NAME = "nnUNetPlans_study"
#: The plans variant of ``--stage measure``: the study plans with the shorter measure budget recorded.
MEASURE_PLANS_NAME = "nnUNetPlans_study_measure"
CONFIGURATION = "2d"
N_SPLITS = 5
SPLIT_SEED = 12345
DEFAULT_FOLDS = (0, 1, 2)
STATE_VERSION = 1
STATE_FILE = "state.json"
LOG_FILE = "study_log.txt"
#: An Individual baseline whose domain-mean Dice stays below this has not learned (report check).
LEARNED_DICE = 0.5
WORKDIR_ENV = "MTMD_STUDY_DIR"

#: scheme -> study trainer class and scheme -> label, from the one registry (nnunetv2_mtmd/schemes.py).
SCHEME_TRAINERS: dict[str, str] = {s.name: s.study_trainer for s in SCHEMES}
SCHEME_LABELS: dict[str, str] = {s.name: s.label for s in SCHEMES}
#: The schemes of a new study, in training order (docs/study.md, "Run order"): Individual first (the
#: reference of every comparison), the DSL schemes, the DSL replicate, then the schemes of
#: :data:`DEFAULT_LATER`.
DEFAULT_SCHEMES = ("Individual", "DSL", "DSL_MJAP", "DSL_MSC_MJAP", "DSL_MSC", "DSL_seed2", "Shared", "Shared_MJAP")
#: The schemes of a new study trained "if time allows" (``--later``): every fold of every other scheme
#: is trained before the first fold of these.
DEFAULT_LATER = ("Shared", "Shared_MJAP")
#: Replicate scheme -> the scheme it trains again with another seed (its spread is the retraining noise).
REPLICATES: dict[str, str] = replicates()
STAGES = ("all", "prepare", "train", "evaluate", "report", "measure", "status", "archive")
#: Version of ``archive.json`` (``--archive``, :mod:`~nnunetv2_mtmd.apps.study.archive`).
ARCHIVE_VERSION = 1
#: File in a fold folder restored from an archive (no checkpoint, no predictions): the model counts as done.
ARCHIVED_MARKER = "mtmd_study_archived.json"
#: Metrics of the report tables (keys of evaluate's summary.json) and their headings.
# sensitivity next to the Dice tells under- from over-segmentation (Dice = 2PS / (P + S), P precision)
REPORT_METRICS = {"dice": "Dice", "sensitivity": "Sensitivity", "assd_mm": "ASSD (mm)", "mssd_mm": "MSSD (mm)"}
EVAL_VARIANTS = {"raw": "without post-processing", "postprocessed": "with the paper's post-processing"}


class StudyError(MTMDError, RuntimeError):
    """A study step failed (a subprocess exited with an error, or the work folder is inconsistent)."""
