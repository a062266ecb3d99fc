"""Constants of the real-data study (names, ids, environment variables, schemes) and its error."""

from __future__ import annotations

from pathlib import Path

from nnunetv2_mtmd.errors import MTMDError

# ------------------------------------------------------------------------------------ constants
#: Where the real data lives: ``../shared/realdata`` next to the repository (never copied into it).
REALDATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "realdata"
#: Domain names of the real datasets (as in dataset_conversion/merge_real_musculoskeletal.py).
REAL_DOMAIN_NAMES = {
    "Dataset901_LumbarVertebraeMR": "lumbar",
    "Dataset902_SacroiliacMR": "sij",
    "Dataset903_PelvisBoneMR": "pelvis",
}
MERGED_ID = 950
MERGED_NAME = "MSKBonesMR"
PLANS_NAME = "nnUNetPlans_study"
CONFIGURATION = "2d"
N_SPLITS = 5
SPLIT_SEED = 12345
DEFAULT_FOLDS = (0, 1, 2)
STATE_VERSION = 1
STATE_FILE = "state.json"
LOG_FILE = "study_log.txt"
#: An Individual baseline whose domain-mean Dice stays below this has not learned (report check).
LEARNED_DICE = 0.5
#: Environment variable carrying the budget (JSON) to the study trainers in the training subprocess.
BUDGET_ENV = "MTMD_STUDY_BUDGET"
#: Set to "1" by ``--stage measure``: the study trainers skip nnU-Net's final validation.
MEASURE_ENV = "MTMD_STUDY_MEASURE"
#: Torch CPU threads of a study training (read by the study trainers; nnU-Net's ``-device cpu`` sets all
#: cores, which oversubscribes the CPU when ``--jobs`` trainings run at once).
THREADS_ENV = "MTMD_TORCH_THREADS"
WORKDIR_ENV = "MTMD_STUDY_DIR"

INDIVIDUAL = "Individual"
#: scheme -> trainer class (nnunetv2_mtmd/training/trainers/study.py).
SCHEME_TRAINERS: dict[str, str] = {
    INDIVIDUAL: "nnUNetTrainer_study",
    "Shared": "nnUNetTrainerMTMD_Shared_study",
    "Shared_MJAP": "nnUNetTrainerMTMD_Shared_MJAP_study",
    "DSL": "nnUNetTrainerMTMD_DSL_study",
    "DSL_SSC": "nnUNetTrainerMTMD_DSL_SSC_study",
    "DSL_MSC": "nnUNetTrainerMTMD_DSL_MSC_study",
    "DSL_MJAP": "nnUNetTrainerMTMD_DSL_MJAP_study",
    "DSL_MSC_MJAP": "nnUNetTrainerMTMD_study",
}
SCHEME_LABELS: dict[str, str] = {s: s.replace("_", "+") for s in SCHEME_TRAINERS}
DEFAULT_SCHEMES = ("Individual", "Shared", "DSL", "DSL_MSC", "DSL_MJAP", "DSL_MSC_MJAP")
STAGES = ("all", "prepare", "train", "evaluate", "report", "measure", "status")
#: Metrics of the report tables (keys of evaluate's summary.json) and their headings.
# sensitivity next to the Dice tells under- from over-segmentation (Dice = 2PS / (P + S), P precision)
REPORT_METRICS = {"dice": "Dice", "sensitivity": "Sensitivity", "assd_mm": "ASSD (mm)", "mssd_mm": "MSSD (mm)"}
EVAL_VARIANTS = {"raw": "without post-processing", "postprocessed": "with the paper's post-processing"}


class StudyError(MTMDError, RuntimeError):
    """A study step failed (a subprocess exited with an error, or the work folder is inconsistent)."""
