"""Speed and memory of the multi-domain trainers against stock nnU-Net (``nnUNetv2_mtmd_benchmark``).

One run measures, side by side on a merged synthetic three-joint dataset (``write_synthetic_datasets``
+ ``merge_datasets`` + the MTMD planner, Boutillon et al. 2021/2022 schemes):

* **training iteration time** (nnU-Net's ``train_step``: forward, loss, backward, optimizer step; data
  loading excluded: every trainer gets the same fixed, pre-built batch already on the device) of
  ``nnUNetTrainerMTMD_DSL``, ``nnUNetTrainerMTMD_DSL_MSC`` and ``nnUNetTrainerMTMD`` against stock
  ``nnUNetTrainer`` with the same plans-derived network size, batch size and patch size (the stock
  plans are the MTMD plans with nnU-Net's own architecture entry, see :func:`stock_architecture`);
* **inference**: time of the real ``nnUNetv2_predict`` console script on the same input cases,
  MTMD model vs stock model of the same size (the weights the timed iterations left; no model is
  trained), plus the same prediction in process, without interpreter start-up and imports;
* **peak memory** of one training iteration (:func:`measure_peak_memory`);
* **scaling with the number of domains**: DSL iteration time with K = 2, 5, 10 synthetic domains at
  equal batch size and an equal number of unified labels (:func:`k_domain_spec`).

Timings (CPU time on CPU, wall time on CUDA) are repeated after warm-up and interleaved between the
compared variants (:func:`interleaved_order`); tables show medians, ratios are medians of per-round
ratios (:func:`paired_ratio`), so that drifting machine load affects all variants alike.
The targets of the ratios, the method and measured numbers: docs/benchmarks.md (the code holds no
targets, see :mod:`.result`).

Modules: :mod:`.settings` (what to measure, names), :mod:`.environment` (``os.environ`` of a run,
nnU-Net's output to the log), :mod:`.timing` (interleaving, medians, ratios), :mod:`.plans` (stock
reference plans, K-domain specs), :mod:`.data` (dataset preparation), :mod:`.batches`,
:mod:`.trainers`, :mod:`.memory`, :mod:`.inference`, :mod:`.result` (result, JSON, table) and
:mod:`.run` (:func:`run_benchmark`).
"""

from __future__ import annotations

from nnunetv2_mtmd.apps.benchmark.batches import (
    center_crop_or_pad,
    deep_supervision_targets,
    make_fixed_batch,
    random_batch,
)
from nnunetv2_mtmd.apps.benchmark.data import PreparedDataset, prepare_dataset, preprocess_cases
from nnunetv2_mtmd.apps.benchmark.environment import benchmark_environment
from nnunetv2_mtmd.apps.benchmark.inference import (
    load_predictor,
    predict_command,
    predict_env,
    save_inference_model,
    timed_predict,
    timed_predict_in_process,
)
from nnunetv2_mtmd.apps.benchmark.memory import measure_peak_memory, peak_live_bytes, resident_bytes
from nnunetv2_mtmd.apps.benchmark.plans import (
    MTMD_ONLY_KWARGS,
    STOCK_NETWORKS,
    dataset_json_for_spec,
    k_domain_spec,
    stock_architecture,
    stock_plans,
)
from nnunetv2_mtmd.apps.benchmark.result import (
    TABLE_FOOTER,
    TABLE_HEADER,
    BenchmarkResult,
    check_result,
    format_table,
    table_rows,
    write_json,
)
from nnunetv2_mtmd.apps.benchmark.run import k_scaling, run_benchmark
from nnunetv2_mtmd.apps.benchmark.settings import (
    CONFIGURATION,
    MERGED_NAME,
    REQUIRED_KEYS,
    SCHEME_TRAINERS,
    STOCK,
    STOCK_PLANS_NAME,
    STOCK_TRAINER,
    BenchmarkSettings,
)
from nnunetv2_mtmd.apps.benchmark.timing import (
    clock_medians,
    interleaved_order,
    median,
    paired_ratio,
    ratio,
    run_interleaved,
    timed_step,
)
from nnunetv2_mtmd.apps.benchmark.trainers import build_trainer, trainer_classes
from nnunetv2_mtmd.compat import compute_fingerprint

__all__ = [
    "CONFIGURATION",
    "MERGED_NAME",
    "MTMD_ONLY_KWARGS",
    "REQUIRED_KEYS",
    "SCHEME_TRAINERS",
    "STOCK",
    "STOCK_NETWORKS",
    "STOCK_PLANS_NAME",
    "STOCK_TRAINER",
    "TABLE_FOOTER",
    "TABLE_HEADER",
    "BenchmarkResult",
    "BenchmarkSettings",
    "PreparedDataset",
    "benchmark_environment",
    "build_trainer",
    "center_crop_or_pad",
    "check_result",
    "clock_medians",
    "compute_fingerprint",
    "dataset_json_for_spec",
    "deep_supervision_targets",
    "format_table",
    "interleaved_order",
    "k_domain_spec",
    "k_scaling",
    "load_predictor",
    "make_fixed_batch",
    "measure_peak_memory",
    "median",
    "paired_ratio",
    "peak_live_bytes",
    "predict_command",
    "predict_env",
    "prepare_dataset",
    "preprocess_cases",
    "random_batch",
    "ratio",
    "resident_bytes",
    "run_benchmark",
    "run_interleaved",
    "save_inference_model",
    "stock_architecture",
    "stock_plans",
    "table_rows",
    "timed_predict",
    "timed_predict_in_process",
    "timed_step",
    "trainer_classes",
    "write_json",
]
