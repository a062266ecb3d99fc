"""The real-data ablation study: every training scheme of Boutillon et al. (2021/2022) against stock
nnU-Net, on the same folds, with the same budget and the same evaluation (``nnUNetv2_mtmd_study``).

One resumable pipeline with its own nnU-Net folders under a work directory (never in the repository):

1. **prepare**: copy the K source datasets (default ``../shared/realdata``: Dataset901 lumbar,
   Dataset902 sacroiliac, Dataset903 pelvis) into ``DIR/nnUNet_raw`` for the Individual baselines and
   merge them into one multi-domain dataset (``nnUNetv2_mtmd_merge``, id 950); extract fingerprints
   and plan with nnU-Net's own planners (stock ``ExperimentPlanner`` for the sources,
   ``nnUNetPlannerMTMD`` for the merged set); then write one plans variant ``nnUNetPlans_study``
   per dataset whose ``2d`` configuration uses the SAME coarse in-plane spacing, patch size, batch
   size and maximum width for every dataset (:func:`coarse_2d_plans`, network topology from
   nnU-Net's ``get_pool_and_conv_props``) and records the budget (key ``mtmd_study_budget``), and
   preprocess it (``nnUNetv2_preprocess -plans_name``).
   Splits: a domain-stratified 5-fold split of the merged set (:func:`domain_stratified_kfold`),
   and for every source dataset the SAME held-out cases (:func:`individual_splits`).
2. **train**: for every fold and scheme ``nnUNetv2_train ... -device cpu`` in a subprocess with the
   budget trainers of :mod:`nnunetv2_mtmd.training.trainers.study`, in the run order
   (:meth:`StudyContext.train_order`: the main schemes fold by fold, Individual first, then the
   ``--later`` schemes fold by fold), each start recording a model-code fingerprint
   (:mod:`~nnunetv2_mtmd.apps.study.fingerprint`); resumable (``--c`` from a
   checkpoint, ``--val`` when only the final validation is missing, skipped when done). The trainers
   read the budget from the plans (:mod:`~nnunetv2_mtmd.apps.study.plans`; plans of work folders
   prepared before they carried it get it first), so every results folder's plans.json records it.
   The budget is equal exposure (docs/design.md): an Individual model trains ``I`` iterations, a
   multi-domain model ``K * I`` iterations with the same batch size, so every domain's images are seen
   equally often and the multi-domain model costs as much as the K Individual models together
   (:class:`StudyBudget`).
3. **evaluate**: nnU-Net's final validation of each fold (``fold_X/validation``) holds the held-out
   predictions; they are gathered per scheme over the finished folds (:meth:`StudyContext.evaluation_plan`:
   the folds the main schemes have finished, with every later scheme that has finished them too) into
   the unified label space
   (Individual predictions remapped with the domain block's label mapping and prefixed with the
   domain, :func:`unify_individual_prediction`), post-processed (``nnUNetv2_mtmd_postprocess``),
   evaluated with and without post-processing (``nnUNetv2_mtmd_evaluate``), compared
   (``nnUNetv2_mtmd_compare``, KS against Individual): those three as the library functions behind
   the console scripts, in this process, recorded as the equivalent commands; and the embeddings of
   every multi-domain scheme's model of the first fold are analysed (``nnUNetv2_mtmd_embeddings``).
4. **report**: ``results.md`` built only from the CSV/JSON files written by those commands, with
   the hardware, budget, commands and a discussion section left to a human.

Every step logs to ``DIR/study_log.txt`` (subprocess output in ``DIR/logs/``) and records itself in
``DIR/state.json``; running again continues where it stopped. ``--stage measure`` times a few
iterations of every trainer to choose the budget (its shorter budget in its own plans variant
``nnUNetPlans_study_measure``). See docs/study.md.

Modules: :mod:`~nnunetv2_mtmd.apps.study.constants`, :mod:`~nnunetv2_mtmd.apps.study.budget`
(budget and coarse plans), :mod:`~nnunetv2_mtmd.apps.study.plans` (the plans files and the budget in
them), :mod:`~nnunetv2_mtmd.apps.study.data` (sources, splits, label remapping),
:mod:`~nnunetv2_mtmd.apps.study.state` (``state.json``, hardware, commit),
:mod:`~nnunetv2_mtmd.apps.study.fingerprint` (the model code each training ran),
:mod:`~nnunetv2_mtmd.apps.study.progress` (training status and timings from nnU-Net's files),
:mod:`~nnunetv2_mtmd.apps.study.runner` (commands, library steps, lock, log),
:mod:`~nnunetv2_mtmd.apps.study.context` (:class:`StudyContext`, what every stage shares), the stages
in :mod:`~nnunetv2_mtmd.apps.study.stages` (prepare, train, evaluate, report, measure, status),
:mod:`~nnunetv2_mtmd.apps.study.pipeline` (:class:`Study`, running the stages in order), and
``results.md`` in :mod:`~nnunetv2_mtmd.apps.study.report` (given a :class:`ReportData`; tables in
:mod:`~nnunetv2_mtmd.apps.study.report_tables`, the models' code, loss weights, gradient-norm ratios
and autoencoders in :mod:`~nnunetv2_mtmd.apps.study.report_models`, the kept discussion in
:mod:`~nnunetv2_mtmd.apps.study.discussion`). Every name is importable from here.
"""

from nnunetv2_mtmd.apps.study.budget import (  # noqa: F401
    StudyBudget,
    _fit_length,
    budget_rows,
    coarse_2d_plans,
    describe_2d,
    estimate_hours,
)
from nnunetv2_mtmd.apps.study.constants import (  # noqa: F401
    BUDGET_ENV,
    CONFIGURATION,
    DEFAULT_FOLDS,
    DEFAULT_LATER,
    DEFAULT_SCHEMES,
    EVAL_VARIANTS,
    INDIVIDUAL,
    LEARNED_DICE,
    LOG_FILE,
    MEASURE_ENV,
    MEASURE_PLANS_NAME,
    MERGED_ID,
    MERGED_NAME,
    N_SPLITS,
    PLANS_BUDGET_KEY,
    PLANS_NAME,
    REAL_DOMAIN_NAMES,
    REALDATA_DIR,
    REPLICATES,
    REPORT_METRICS,
    SCHEME_LABELS,
    SCHEME_TRAINERS,
    SPLIT_SEED,
    STAGES,
    STATE_FILE,
    STATE_VERSION,
    THREADS_ENV,
    WORKDIR_ENV,
    StudyError,
)
from nnunetv2_mtmd.apps.study.context import StudyContext, StudyOptions, job_threads, study_command  # noqa: F401
from nnunetv2_mtmd.apps.study.data import (  # noqa: F401
    Source,
    Split,
    find_sources,
    individual_splits,
    remap_labels,
    strip_domain_prefix,
    unify_individual_prediction,
)
from nnunetv2_mtmd.apps.study.discussion import (  # noqa: F401
    _NUMBER,
    DISCUSSION_HEADING,
    DISCUSSION_PLACEHOLDER,
    STALE_PREFIX,
    _discussion_span,
    keep_discussion,
    mark_stale_discussion,
    unsourced_numbers,
)
from nnunetv2_mtmd.apps.study.fingerprint import (  # noqa: F401
    FINGERPRINT_PACKAGES,
    MIXED,
    code_mix_note,
    fingerprint_cell,
    fingerprint_id,
    model_code_files,
    model_code_sha256,
    model_fingerprint,
    model_key,
    take_fingerprint,
    this_code_fingerprint,
    training_code,
    unit_fingerprints,
)
from nnunetv2_mtmd.apps.study.pipeline import Study  # noqa: F401
from nnunetv2_mtmd.apps.study.plans import plans_file, record_budget, write_measure_plans, write_study_plans  # noqa: F401
from nnunetv2_mtmd.apps.study.progress import (  # noqa: F401
    _AE_FROZEN,
    _EPOCH_START,
    _EPOCH_TIME,
    _MEASURE_LINE,
    AUTOENCODER_FILE,
    _estimate_seconds_per_iteration,
    autoencoder_dice,
    autoencoder_summary,
    epoch_times,
    epochs_completed,
    fold_finish_seconds,
    fold_folder,
    format_progress,
    gradient_norm_ratios,
    measured_step_times,
    median_ratios,
    train_command,
    training_hours,
    training_status,
)
from nnunetv2_mtmd.apps.study.report import (  # noqa: F401
    ReportData,
    build_report,
    case_level_text,
    components_text,
    publish_tsne,
    reference_cut_text,
    replicate_text,
)
from nnunetv2_mtmd.apps.study.report_models import (  # noqa: F401
    WEIGHT_ATTRIBUTES,
    autoencoder_fold_table,
    autoencoder_section,
    code_section,
    gradient_ratio_lines,
    trainer_weights,
    weights_table,
)
from nnunetv2_mtmd.apps.study.report_tables import (  # noqa: F401
    _pm,
    _read_similarity,
    _stat_cell,
    domain_mean_dice,
    embedding_table,
    fold_table,
    ks_table,
    metric_table,
    other_domain_text,
    paired_references,
    paired_table,
    replicate_table,
)
from nnunetv2_mtmd.apps.study.runner import StudyRunner, _bin, setup_study_logging, work_lock  # noqa: F401
from nnunetv2_mtmd.apps.study.stages import (  # noqa: F401
    EvaluateStage,
    MeasureStage,
    PrepareStage,
    ReportStage,
    StatusStage,
    TrainStage,
    report_data,
    union_folders,
)
from nnunetv2_mtmd.apps.study.state import (  # noqa: F401
    COMMIT_FILE,
    StudyState,
    _now,
    code_commit,
    config_differences,
    default_workdir,
    hardware_info,
)
