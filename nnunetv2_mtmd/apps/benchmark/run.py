"""One benchmark run (:func:`run_benchmark`): prepare the dataset, then the four measurements in turn."""

from __future__ import annotations

import copy
import logging
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from nnunetv2_mtmd.apps.benchmark.batches import make_fixed_batch, random_batch
from nnunetv2_mtmd.apps.benchmark.data import PreparedDataset, prepare_dataset
from nnunetv2_mtmd.apps.benchmark.environment import benchmark_environment, quiet_fds
from nnunetv2_mtmd.apps.benchmark.inference import (
    load_predictor,
    predict_command,
    predict_env,
    save_inference_model,
    timed_predict,
    timed_predict_in_process,
)
from nnunetv2_mtmd.apps.benchmark.memory import measure_peak_memory
from nnunetv2_mtmd.apps.benchmark.plans import dataset_json_for_spec, k_domain_spec
from nnunetv2_mtmd.apps.benchmark.result import BenchmarkResult
from nnunetv2_mtmd.apps.benchmark.settings import (
    CONFIGURATION,
    SCHEME_TRAINERS,
    STOCK,
    STOCK_TRAINER,
    BenchmarkSettings,
)
from nnunetv2_mtmd.apps.benchmark.timing import clock_medians, paired_ratio, ratio, run_interleaved, timed_step
from nnunetv2_mtmd.apps.benchmark.trainers import build_trainer, trainer_classes

logger = logging.getLogger(__name__)


class _Run:
    """What the measurements of one run share: settings, folders, clocks and the result being filled."""

    def __init__(self, settings: BenchmarkSettings, workdir: Path, prepared: PreparedDataset, res: BenchmarkResult):
        self.settings = settings
        self.workdir = workdir
        self.log_path = workdir / "nnunet_output.log"
        self.prepared = prepared
        self.res = res
        self.clock = res.clock
        self.other = "wall" if res.clock == "cpu" else "cpu"

    def record(self, what: str, times: dict[str, list[dict[str, float]]]) -> dict[str, float]:
        """Keep the raw timings and the medians on the other clock; return the medians on the ratio clock."""
        self.res.raw_times[what] = times
        self.res.medians_other_clock[what] = clock_medians(times, self.other)
        return clock_medians(times, self.clock)


def run_benchmark(settings: BenchmarkSettings, workdir: Path) -> BenchmarkResult:
    """Run every measurement (see the package docstring) inside ``workdir`` and return the result.

    nnU-Net runs in this process, pointed at folders of ``workdir`` through ``os.environ`` for the
    duration of the run only (:func:`.environment.benchmark_environment` says why, and restores the
    previous values afterwards)."""
    settings.validate()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with benchmark_environment(workdir):
        return _run_all(settings, workdir)


def _run_all(settings: BenchmarkSettings, workdir: Path) -> BenchmarkResult:
    t_start = time.perf_counter()
    import torch

    if settings.threads is not None or settings.device == "cpu":
        # one thread on CPU: OpenMP's idle threads spin on a shared machine and make both clocks noisy
        torch.set_num_threads(settings.threads or 1)
    res = BenchmarkResult(clock=settings.effective_clock)
    res.info = _machine_info(settings)
    torch.manual_seed(settings.seed)

    logger.info("[1/5] synthetic data, merge, fingerprint, MTMD plans, preprocessing ...")
    prepared = prepare_dataset(workdir, settings, workdir / "nnunet_output.log")
    cfg = prepared.plans["configurations"][CONFIGURATION]
    res.info.update(_dataset_info(prepared))
    logger.info("      %s: patch %s, batch %d, %d stages (%.1f s)", prepared.name, cfg["patch_size"],
                cfg["batch_size"], res.info["n_stages"], prepared.seconds)

    run = _Run(settings, workdir, prepared, res)
    trainers, batch = _measure_train_steps(run)
    _measure_memory(run, trainers, batch)
    if settings.compile:
        _measure_compiled(run, trainers, batch)
    folders = _save_models(run, trainers)
    del trainers, batch  # free the trainers before the predictions
    _measure_predict(run, folders)
    _measure_predict_in_process(run, folders)
    _measure_k_scaling(run)
    res.info["total_s"] = round(time.perf_counter() - t_start, 1)
    return res


def _machine_info(settings: BenchmarkSettings) -> dict[str, Any]:
    import torch

    return {
        "device": settings.device,
        "device_name": torch.cuda.get_device_name(0) if settings.device == "cuda" else platform.processor()
        or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()},
    }


def _dataset_info(prepared: PreparedDataset) -> dict[str, Any]:
    cfg = prepared.plans["configurations"][CONFIGURATION]
    return {
        "dataset": prepared.name,
        "patch_size": list(cfg["patch_size"]),
        "batch_size": int(cfg["batch_size"]),
        "n_stages": cfg["architecture"]["arch_kwargs"]["n_stages"],
        "features_per_stage": list(cfg["architecture"]["arch_kwargs"]["features_per_stage"]),
        "num_domains": prepared.spec.num_domains,
        "num_classes": prepared.spec.num_classes,
        "prepare_s": round(prepared.seconds, 2),
    }


def _measure_train_steps(run: _Run) -> tuple[dict[str, Any], dict[str, Any]]:
    """[2/5] Interleaved ``train_step`` timings of every scheme and stock; returns the trainers and batch."""
    s, p, res = run.settings, run.prepared, run.res
    logger.info("[2/5] training iteration time: %s vs stock nnUNetTrainer (%d warm-up + %d timed each, "
                "interleaved) ...", ", ".join(SCHEME_TRAINERS), s.warmup, s.repeats)
    trainers = {}
    for key, cls in trainer_classes().items():
        plans = p.stock_plans if key == STOCK else p.plans
        trainers[key] = build_trainer(cls, plans, p.dataset_json, s.device, run.log_path)
    batch = make_fixed_batch(p, trainers["DSL"], int(p.plans["configurations"][CONFIGURATION]["batch_size"]),
                             s.device)
    times = run_interleaved({k: (lambda t=t, b=batch: timed_step(t, b, s.device)) for k, t in trainers.items()},
                            s.repeats, s.warmup, desc="train steps")
    res.train_step_s = run.record("train_step", times)
    res.train_step_ratio = {k: paired_ratio(times, k, STOCK, run.clock) for k in SCHEME_TRAINERS}
    logger.info("      median %s time per iteration: %s", run.clock,
                ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in res.train_step_s.items()))
    return trainers, batch


def _measure_compiled(run: _Run, trainers: dict[str, Any], batch: dict[str, Any]) -> None:
    """[3b/5] ``--compile``: the same iterations with compiled networks (:mod:`.compiled`)."""
    from nnunetv2_mtmd.apps.benchmark.compiled import measure_compiled_train_steps

    s = run.settings
    logger.info("[3b/5] compiled training iteration time (torch.compile, backend %s; the first step of each "
                "trainer compiles) ...", s.compile_backend)
    run.res.compiled = measure_compiled_train_steps(trainers, batch, s.device, s.compile_backend, s.repeats,
                                                    s.warmup, run.clock)
    logger.info("      compiled ratios: %s", ", ".join(f"{k} {v:.3f}"
                                                      for k, v in run.res.compiled["train_step_ratio"].items()))


def _measure_memory(run: _Run, trainers: dict[str, Any], batch: dict[str, Any]) -> None:
    """[3/5] Peak memory of one training iteration of every trainer."""
    res = run.res
    logger.info("[3/5] peak memory of one training iteration ...")
    with quiet_fds(run.log_path):  # the profiler's C++ log lines
        for key, tr in trainers.items():
            res.memory_bytes[key] = measure_peak_memory(tr, batch, run.settings.device)
    stock_peak = res.memory_bytes[STOCK]["peak"]
    res.memory_ratio_per_scheme = {k: ratio(res.memory_bytes[k]["peak"], stock_peak) for k in SCHEME_TRAINERS}
    res.memory_ratio = res.memory_ratio_per_scheme["MTMD"]
    logger.info("      peak: %s", ", ".join(f"{k} {v['peak'] / 2**20:.1f} MiB" for k, v in res.memory_bytes.items()))


def _save_models(run: _Run, trainers: dict[str, Any]) -> dict[str, Path]:
    """The full-method and the stock network as nnU-Net result folders (the weights the timed
    iterations left: no model is trained, the time of a prediction does not depend on the weights)."""
    p = run.prepared
    return {"MTMD": save_inference_model(trainers["MTMD"], p.plans, p.dataset_json, run.log_path),
            STOCK: save_inference_model(trainers[STOCK], p.stock_plans, p.dataset_json, run.log_path)}


def _measure_predict(run: _Run, folders: dict[str, Path]) -> None:
    """[4/5] The real ``nnUNetv2_predict`` console script, MTMD model vs stock model, interleaved."""
    s, p, res, workdir = run.settings, run.prepared, run.res, run.workdir
    logger.info("[4/5] nnUNetv2_predict: MTMD model vs stock model (%d warm-up run(s), then %d timed each, "
                "interleaved; then the same in process) ...", s.predict_warmup, s.predict_repeats)
    env = predict_env(workdir, s.device)
    models = {STOCK: (STOCK_TRAINER, p.stock_plans["plans_name"]),
              "MTMD": (SCHEME_TRAINERS["MTMD"], p.plans["plans_name"])}
    cmds = {k: predict_command(p.name, tr, pn, p.test_images, workdir / f"pred_{k}", s.device, s.disable_tta)
            for k, (tr, pn) in models.items()}
    times = run_interleaved({k: (lambda c=c, k=k: timed_predict(c, workdir / f"pred_{k}", env))
                             for k, c in cmds.items()},
                            s.predict_repeats, 0, desc="nnUNetv2_predict", warmup_runs=s.predict_warmup)
    n_pred = len(list((workdir / "pred_MTMD").glob("*" + p.dataset_json["file_ending"])))
    res.predict_s = run.record("predict", times)
    res.inference_ratio = paired_ratio(times, "MTMD", STOCK, run.clock)
    logger.info("      median %s time per nnUNetv2_predict run: %s", run.clock,
                ", ".join(f"{k} {v:.2f} s" for k, v in res.predict_s.items()))
    res.info.update({"predict_command": " ".join(cmds["MTMD"]), "predict_cases": n_pred,
                     "model_folders": [str(folders["MTMD"]), str(folders[STOCK])]})


def _measure_predict_in_process(run: _Run, folders: dict[str, Path]) -> None:
    """The same prediction in this process: without interpreter start and imports (which the console
    script's time includes), so the network's share is larger."""
    s, res = run.settings, run.res
    predictors = {k: load_predictor(folders[k], s.device, s.disable_tta, run.log_path) for k in (STOCK, "MTMD")}
    fns = {k: (lambda pr=pr, k=k: timed_predict_in_process(pr, run.prepared.test_images,
                                                           run.workdir / f"pred_inproc_{k}", s.device, run.log_path))
           for k, pr in predictors.items()}
    # one warm-up round and one more timed round than the console script (each run is cheaper); --quick: none
    times = run_interleaved(fns, s.predict_repeats + (0 if s.quick else 1), 0 if s.quick else 1,
                            desc="predict in process")
    del predictors, fns
    res.predict_in_process_s = run.record("predict_in_process", times)
    res.inference_in_process_ratio = paired_ratio(times, "MTMD", STOCK, run.clock)
    logger.info("      in process: %s", ", ".join(f"{k} {v:.2f} s" for k, v in res.predict_in_process_s.items()))


def _measure_k_scaling(run: _Run) -> None:
    """[5/5] DSL iteration time with K domains, ratio largest K / smallest K."""
    s, res = run.settings, run.res
    logger.info("[5/5] DSL iteration time with K = %s domains (batch %d, %d labels) ...",
                ", ".join(map(str, s.k_values)), s.k_batch_size, s.k_total_labels)
    times = k_scaling(run.prepared, s, run.log_path)
    res.k_step_s = {int(n[2:]): v for n, v in run.record("k_scaling", times).items()}
    ks = sorted(res.k_step_s)
    res.k_scaling_ratio = paired_ratio(times, f"K={ks[-1]}", f"K={ks[0]}", run.clock)


def k_scaling(prepared: PreparedDataset, settings: BenchmarkSettings,
              log_path: Path | None = None) -> dict[str, list[dict[str, float]]]:
    """DSL ``train_step`` timings (name ``"K=<k>"``) for every K of ``settings.k_values`` (interleaved), each with
    the merged dataset's network and patch size, ``k_batch_size`` samples (B / K per domain) and
    ``k_total_labels`` unified labels (:func:`.plans.k_domain_spec`)."""
    dsl = trainer_classes()["DSL"]
    trainers, batches = {}, {}
    for k in settings.k_values:
        spec = k_domain_spec(k, settings.k_total_labels, prepared.spec.code_channel)
        plans = copy.deepcopy(prepared.plans)
        plans["plans_name"] = f"nnUNetPlansK{k}"
        cfg = plans["configurations"][CONFIGURATION]
        cfg["batch_size"] = settings.k_batch_size
        kw = cfg["architecture"]["arch_kwargs"]
        kw["domain_label_ids"] = spec.domain_label_ids
        kw["norm_op_kwargs"] = {**kw["norm_op_kwargs"], "num_domains": k}
        dj = dataset_json_for_spec(spec, [prepared.dataset_json["channel_names"][str(i)]
                                          for i in range(prepared.spec.code_channel)],
                                   prepared.dataset_json["file_ending"])
        tr = build_trainer(dsl, plans, dj, settings.device, log_path)
        name = f"K={k}"
        trainers[name] = tr
        batches[name] = random_batch(spec, settings.k_batch_size, cfg["patch_size"],
                                     tr._get_deep_supervision_scales(), settings.device, settings.seed)
    return run_interleaved({n: (lambda n=n: timed_step(trainers[n], batches[n], settings.device))
                            for n in trainers}, settings.k_repeats, settings.warmup, desc="K scaling")
