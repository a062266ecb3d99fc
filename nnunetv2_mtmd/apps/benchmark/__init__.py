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
Method details and measured numbers: docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nnunetv2_mtmd.compat import compute_fingerprint  # noqa: F401  (re-exported)
from nnunetv2_mtmd.domains import CODE_CHANNEL_NAME, Domain, DomainLabel, DomainSpec
from nnunetv2_mtmd.errors import InputDataError
from nnunetv2_mtmd.schemes import benchmark_schemes

logger = logging.getLogger(__name__)

#: Targets of issue 6 (ratio MTMD / reference must be <= target).
TARGETS: dict[str, float] = {
    "DSL": 1.05,
    "DSL_MSC": 1.08,
    "MTMD": 1.35,
    "inference": 1.05,
    "memory": 1.10,
    "k_scaling": 1.10,
}
#: Trainer class names of the compared training schemes (key = name in the JSON output), from the registry.
SCHEME_TRAINERS: dict[str, str] = {key: s.trainer for key, s in benchmark_schemes().items()}
STOCK_TRAINER = "nnUNetTrainer"
STOCK = "stock"
#: Keys of the JSON result required by issue 6 (a "details" key is added next to them).
REQUIRED_KEYS = ("train_step_ratio", "inference_ratio", "memory_ratio", "k_scaling_ratio")
CONFIGURATION = "2d"
MERGED_NAME = "BenchJoints"
STOCK_PLANS_NAME = "nnUNetPlansStock"

#: Stock dynamic-network-architectures classes of the plugin's multi-domain networks.
STOCK_NETWORKS: dict[str, str] = {
    "nnunetv2_mtmd.architectures.unet.MultiDomainPlainConvUNet":
        "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "nnunetv2_mtmd.architectures.unet.MultiDomainResEncUNet":
        "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
}
#: Keyword arguments that only the multi-domain networks take.
MTMD_ONLY_KWARGS = ("domain_label_ids", "head_mode")


# ======================================================================================= settings
@dataclass
class BenchmarkSettings:
    """What to measure and how often (defaults: the full benchmark, about 5 minutes on 2 CPU cores).

    Attributes:
        device: ``"cpu"`` or ``"cuda"``.
        repeats, warmup: timed and untimed training iterations per trainer (interleaved).
        batch_size: training batch size; None = the planned one (a multiple of the 3 domains).
        k_values, k_batch_size, k_total_labels, k_repeats: domain-scaling measurement (K domains,
            equal batch size, ``k_total_labels`` unified labels split evenly over the K domains).
        predict_repeats: timed prediction runs per model (console script and in process).
        predict_warmup: untimed runs before timing (alternating models, stock first).
        disable_tta: pass ``--disable_tta`` to ``nnUNetv2_predict`` (both models).
        threads: torch threads of the training measurements; None = 1 on CPU (robust on a shared
            machine), torch's default on CUDA.
        clock: ``"cpu"`` (CPU time of this process / of the predict subprocess) or ``"wall"``; None =
            ``"cpu"`` on CPU, ``"wall"`` on CUDA. Both are recorded; this one gives the ratios.
        cases, test_cases, shape: synthetic data per domain (``shape`` = (Z, Y, X) of every volume,
            default 4 slices of 64 x 64, planned as 64 x 64 patches; None = the generator's default per
            domain, 12-16 slices).
        seed: data and batch seed.
        dataset_id: id of the merged dataset; the three source datasets use the next three ids.
    """

    device: str = "cpu"
    repeats: int = 20
    warmup: int = 3
    batch_size: int | None = None
    k_values: tuple[int, ...] = (2, 5, 10)
    k_batch_size: int = 10
    k_total_labels: int = 10
    k_repeats: int = 10
    predict_repeats: int = 3
    predict_warmup: int = 1
    disable_tta: bool = False
    threads: int | None = None
    clock: str | None = None
    cases: int = 2
    test_cases: int = 1
    shape: tuple[int, int, int] | None = (4, 64, 64)
    seed: int = 0
    dataset_id: int = 960
    quick: bool = False

    @property
    def effective_clock(self) -> str:
        """The clock that gives the ratios (see ``clock``)."""
        return self.clock or ("cpu" if self.device == "cpu" else "wall")

    @classmethod
    def quick_settings(cls, device: str = "cpu") -> BenchmarkSettings:
        """Tiny shapes and very few repeats: checks that everything runs (numbers are not meaningful)."""
        return cls(device=device, repeats=2, warmup=1, k_repeats=2, predict_repeats=1, predict_warmup=0,
                   disable_tta=True, cases=1, test_cases=1, shape=(4, 32, 32), quick=True)

    def validate(self) -> None:
        """Raise :class:`InputDataError` for unusable values."""
        for name in ("repeats", "k_repeats", "predict_repeats", "cases", "test_cases", "k_batch_size",
                     "k_total_labels"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputDataError(f"--{name} must be an integer >= 1, found {v!r}.")
        for name in ("warmup", "predict_warmup"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InputDataError(f"--{name} must be an integer >= 0, found {v!r}.")
        if self.device not in ("cpu", "cuda"):
            raise InputDataError(f"--device must be 'cpu' or 'cuda', found {self.device!r}.")
        if self.clock not in (None, "cpu", "wall"):
            raise InputDataError(f"--clock must be 'cpu' or 'wall', found {self.clock!r}.")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise InputDataError(f"--threads must be an integer >= 1, found {self.threads!r}.")
        if self.batch_size is not None and (self.batch_size < 3 or self.batch_size % 3):
            raise InputDataError(
                f"--batch_size {self.batch_size}: the merged synthetic dataset has 3 domains and every batch "
                "holds the same number of samples of each, so use a multiple of 3 (>= 3), e.g. 6 or 12."
            )
        if len(self.k_values) < 2 or any(k < 1 for k in self.k_values):
            raise InputDataError(f"k_values must hold at least two domain counts >= 1, found {self.k_values}.")
        for k in self.k_values:
            if self.k_batch_size % k or self.k_total_labels % k:
                raise InputDataError(
                    f"--k_batch_size ({self.k_batch_size}) and the number of labels ({self.k_total_labels}) "
                    f"must be multiples of every K in {list(self.k_values)} (K={k} does not divide them): "
                    "each domain gets the same number of samples and labels. 10 works for K = 2, 5, 10."
                )


# ================================================================================ pure helpers
def interleaved_order(names: Sequence[str], repeats: int, warmup: int = 0) -> list[tuple[str, bool]]:
    """Order of runs for interleaved timing: ``warmup + repeats`` rounds, each running every name once.

    Round ``r`` starts at ``names[r % n]`` and continues cyclically (A B C, B C A, C A B, ...), so each
    variant runs equally often in every position of a round. Returns ``(name, is_warmup)`` pairs; the
    first ``warmup`` rounds are warm-up."""
    n = len(names)
    out: list[tuple[str, bool]] = []
    for r in range(warmup + repeats):
        for j in range(n):
            out.append((names[(r + j) % n], r < warmup))
    return out


def run_interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int,
                    desc: str = "timing", warmup_runs: int = 0) -> dict[str, list[Any]]:
    """Call every ``fns[name]()`` (returning a timing) in :func:`interleaved_order` and return the timed
    (non warm-up) results per name. ``warmup`` counts warm-up rounds (every name once per round);
    ``warmup_runs`` adds single untimed calls before them, cycling through the names (for expensive
    runs where warming caches once is enough)."""
    from tqdm import tqdm

    names = list(fns)
    order = [(names[i % len(names)], True) for i in range(warmup_runs)]
    order += interleaved_order(names, repeats, warmup)
    times: dict[str, list[Any]] = {k: [] for k in fns}
    for name, is_warmup in tqdm(order, desc=desc, unit="run", leave=False, file=sys.stderr):
        t = fns[name]()
        if not is_warmup:
            times[name].append(t)
    return times


def median(values: Iterable[float]) -> float:
    """Median of ``values`` (mean of the two middle values for an even count)."""
    vals = list(values)
    if not vals:
        raise ValueError("median of an empty list")
    return float(statistics.median(vals))


def clock_medians(times: dict[str, list[dict[str, float]]], clock: str) -> dict[str, float]:
    """Median of the ``clock`` entry (``"cpu"`` or ``"wall"``) of every name's timings."""
    return {k: median(t[clock] for t in v) for k, v in times.items()}


def paired_ratio(times: dict[str, list[dict[str, float]]], name: str, reference: str, clock: str) -> float:
    """Median over rounds of ``time(name) / time(reference)`` measured in the same round.

    The i-th timed entry of every name comes from round i of :func:`run_interleaved`, so the two
    runs of a pair were taken seconds apart under the same machine load; the median of these per-round
    ratios is less disturbed by load that changes during the benchmark than the ratio of medians."""
    pairs = [a[clock] / b[clock] for a, b in zip(times[name], times[reference]) if b[clock] > 0]
    return median(pairs) if pairs else float("nan")


def ratio(value: float, reference: float) -> float:
    """``value / reference``; NaN when the reference is not positive."""
    return float(value / reference) if reference > 0 else float("nan")


def stock_architecture(architecture: dict[str, Any]) -> dict[str, Any]:
    """The plans ``architecture`` entry stock nnU-Net's planner writes for the same network.

    Inverse of :func:`nnunetv2_mtmd.planning.planners.to_multi_domain_architecture`: the backbone
    class of dynamic-network-architectures, ``InstanceNorm{1,2,3}d`` with ``eps=1e-5, affine=True``
    (nnU-Net's default), no domain kwargs. Everything else (stages, features, kernels, strides,
    convolutions per stage) is kept, so the network has the same size."""
    name = architecture["network_class_name"]
    if name not in STOCK_NETWORKS:
        raise InputDataError(
            f"plans architecture 'network_class_name' is {name!r}; expected one of the multi-domain networks "
            f"{', '.join(STOCK_NETWORKS)} (plans written by nnUNetPlannerMTMD)."
        )
    kwargs = {k: v for k, v in architecture["arch_kwargs"].items() if k not in MTMD_ONLY_KWARGS}
    conv_op = str(kwargs["conv_op"])
    dim = int(conv_op[-2]) if conv_op.endswith("d") and conv_op[-2].isdigit() else 2
    kwargs["norm_op"] = f"torch.nn.modules.instancenorm.InstanceNorm{dim}d"
    kwargs["norm_op_kwargs"] = {"eps": 1e-05, "affine": True}
    return {"network_class_name": STOCK_NETWORKS[name], "arch_kwargs": kwargs,
            "_kw_requires_import": list(architecture["_kw_requires_import"])}


def stock_plans(plans: dict[str, Any], plans_name: str = STOCK_PLANS_NAME) -> dict[str, Any]:
    """Deep copy of MTMD ``plans`` with every configuration's architecture made stock
    (:func:`stock_architecture`) and ``plans_name`` replaced. Patch size, batch size, spacing and
    normalization stay identical."""
    out = copy.deepcopy(plans)
    out["plans_name"] = plans_name
    for cfg in out["configurations"].values():
        if "architecture" in cfg:
            cfg["architecture"] = stock_architecture(cfg["architecture"])
    return out


def k_domain_spec(k: int, total_labels: int, code_channel: int = 1) -> DomainSpec:
    """A synthetic domain spec with ``k`` domains sharing ``total_labels`` unified labels evenly
    (domain ``i`` owns ids ``i*L/k + 1 .. (i+1)*L/k``). Keeping the number of unified classes fixed
    makes the network output, the Dice+CE loss and the heads the same size for every K, so the
    measured difference is the cost of the domains themselves (DSBN statistics, head gathering)."""
    if k < 1 or total_labels % k:
        raise ValueError(f"total_labels ({total_labels}) must be a positive multiple of k ({k})")
    per = total_labels // k
    domains = []
    for i in range(k):
        labels = tuple(DomainLabel(f"s{j + 1}", j + 1, i * per + j + 1) for j in range(per))
        domains.append(Domain(f"dom{i + 1}", i + 1, f"Dataset000_Synthetic{i + 1}", labels, num_cases=1))
    return DomainSpec(tuple(domains), code_channel)


def dataset_json_for_spec(spec: DomainSpec, image_channels: Sequence[str] = ("MRI",),
                          file_ending: str = ".nii.gz") -> dict[str, Any]:
    """A merged-dataset dataset.json for ``spec`` (image channels, then the code channel)."""
    chans = {str(i): c for i, c in enumerate(image_channels)}
    chans[str(len(image_channels))] = CODE_CHANNEL_NAME
    return {"channel_names": chans, "labels": spec.label_names(),
            "numTraining": sum(d.num_cases for d in spec.domains), "file_ending": file_ending,
            "mtmd": spec.to_json()}


def center_crop_or_pad(arr: np.ndarray, patch: Sequence[int], pad_value: float = 0) -> np.ndarray:
    """Center-crop or pad (with ``pad_value``) the trailing ``len(patch)`` axes of ``arr`` to ``patch``."""
    spatial = arr.shape[-len(patch):]
    out = arr
    for ax, (s, p) in enumerate(zip(spatial, patch)):
        axis = arr.ndim - len(patch) + ax
        if s > p:
            start = (s - p) // 2
            out = np.take(out, np.arange(start, start + p), axis=axis)
        elif s < p:
            before = (p - s) // 2
            widths = [(0, 0)] * out.ndim
            widths[axis] = (before, p - s - before)
            out = np.pad(out, widths, constant_values=pad_value)
    return out


def deep_supervision_targets(seg: Any, scales: Sequence[Sequence[float]] | None) -> Any:
    """Targets as nnU-Net's ``DownsampleSegForDSTransform`` makes them: ``seg`` ``(B, 1, X, Y)`` at
    every scale (``round(shape * scale)``, nearest-exact), same dtype; ``scales`` None -> ``seg``."""
    import torch.nn.functional as F

    if scales is None:
        return seg
    out = []
    for s in scales:
        if all(float(v) == 1 for v in s):
            out.append(seg)
        else:
            shape = [round(n * float(v)) for n, v in zip(seg.shape[2:], s)]
            out.append(F.interpolate(seg.float(), shape, mode="nearest-exact").to(seg.dtype))
    return out


def peak_live_bytes(events: Sequence[tuple[int, int, int]], start: int, end: int) -> int:
    """Peak, during ``[start, end]``, of the bytes allocated since the first event and not yet freed.

    ``events``: ``(time, ptr, size)`` allocator records in time order, ``size > 0`` an allocation of
    the block at ``ptr``, ``size < 0`` a release. Releases of blocks not allocated in ``events``
    (they existed before recording began) are ignored, so the result only counts memory the
    recorded code allocated. The value at ``start`` counts as well (what was live when the window
    opened). Returns 0 if nothing was live in the window."""
    live: dict[int, int] = {}
    total = 0
    peak = 0
    opened = False
    for t, ptr, size in events:
        if t > end:
            break
        if t >= start and not opened:
            peak, opened = max(peak, total), True
        if size > 0:
            total += size - live.get(ptr, 0)
            live[ptr] = size
        elif ptr in live:
            total -= live.pop(ptr)
        if t >= start:
            peak = max(peak, total)
    if not opened:
        peak = total
    return peak


def check_result(result: dict[str, Any]) -> list[str]:
    """Problems of a benchmark result (missing keys, ratios not positive and finite); empty if fine."""
    problems = [f"missing key {k!r}" for k in REQUIRED_KEYS if k not in result]
    if problems:
        return problems
    values = dict(result["train_step_ratio"])
    if set(values) != set(SCHEME_TRAINERS):
        problems.append(f"train_step_ratio keys {sorted(values)} != {sorted(SCHEME_TRAINERS)}")
    values.update({k: result[k] for k in REQUIRED_KEYS[1:]})
    for k, v in values.items():
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            problems.append(f"{k} = {v!r} is not a positive finite number")
    return problems


# ============================================================================= dataset + plans
@contextlib.contextmanager
def _quiet(log_path: Path | None):
    """Send nnU-Net's prints (stdout) to ``log_path`` instead of the console."""
    if log_path is None:
        yield
        return
    with open(log_path, "a") as f, contextlib.redirect_stdout(f):
        yield


@contextlib.contextmanager
def _quiet_fds(log_path: Path | None):
    """Redirect the process-level stdout and stderr (file descriptors 1 and 2, which C++ libraries such
    as the profiler's kineto write to) into ``log_path``."""
    if log_path is None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(log_path, "a") as f:
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def nnunet_env(workdir: Path) -> dict[str, str]:
    """nnUNet_raw / nnUNet_preprocessed / nnUNet_results folders inside ``workdir``."""
    return {f"nnUNet_{k}": str(workdir / f"nnUNet_{k}") for k in ("raw", "preprocessed", "results")}


def _check_nnunet_paths(env: dict[str, str]) -> None:
    """nnunetv2.paths reads the environment once at import: it must agree with ``env``."""
    import nnunetv2.paths as paths

    for var, val in env.items():
        if str(getattr(paths, var)) != val:
            raise RuntimeError(
                f"nnunetv2 was imported before the benchmark set {var}={val} (it has {getattr(paths, var)}); "
                "run the benchmark in a fresh process (nnUNetv2_mtmd_benchmark)."
            )


def preprocess_cases(dataset_name: str, plans: dict[str, Any], configuration: str,
                     dataset_json: dict[str, Any]) -> Path:
    """Run nnU-Net's ``DefaultPreprocessor.run_case_save`` on every training case, in this process
    (``nnUNetv2_preprocess`` without its spawn pool). Returns the preprocessed data folder."""
    from batchgenerators.utilities.file_and_folder_operations import join
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    out = Path(nnUNet_preprocessed) / dataset_name / cm.data_identifier
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    dataset = get_filenames_of_train_images_and_targets(join(nnUNet_raw, dataset_name), dataset_json)
    pp = DefaultPreprocessor(verbose=False)
    for key, v in dataset.items():
        pp.run_case_save(str(out / key), v["images"], v["label"], pm, cm, dataset_json)
    return out


@dataclass
class PreparedDataset:
    """The merged synthetic dataset, its MTMD plans and the derived stock plans."""

    name: str
    dataset_json: dict[str, Any]
    plans: dict[str, Any]
    stock_plans: dict[str, Any]
    spec: DomainSpec
    preprocessed: Path
    test_images: Path
    seconds: float


def prepare_dataset(workdir: Path, settings: BenchmarkSettings, log_path: Path | None = None) -> PreparedDataset:
    """Synthetic data -> merged dataset -> fingerprint -> ``nnUNetPlannerMTMD`` plans -> preprocessed
    2D data, all inside ``workdir`` (whose nnU-Net folders must be the process's ``nnUNet_*``)."""
    from nnunetv2_mtmd.conversion.merge import merge_datasets
    from nnunetv2_mtmd.conversion.synthetic import write_synthetic_datasets
    from nnunetv2_mtmd.io import load_json

    t0 = time.perf_counter()
    env = nnunet_env(workdir)
    raw = Path(env["nnUNet_raw"])
    ids = [settings.dataset_id + i for i in (1, 2, 3)]
    with _quiet(log_path):
        write_synthetic_datasets(raw, cases=settings.cases, test_cases=settings.test_cases, seed=settings.seed,
                                 shape=settings.shape, ids=ids, overwrite=True)
        res = merge_datasets(ids, settings.dataset_id, name=MERGED_NAME, raw_root=raw, overwrite=True,
                             progress=False)
    name = res.folder.name
    _check_nnunet_paths(env)
    from nnunetv2_mtmd.planning.planners import nnUNetPlannerMTMD

    with _quiet(log_path):
        compute_fingerprint(name)
        planner = nnUNetPlannerMTMD(name)
        planner.plan_experiment()
    pre = Path(env["nnUNet_preprocessed"]) / name
    plans = load_json(pre / "nnUNetPlans.json")
    dataset_json = load_json(res.folder / "dataset.json")
    if settings.batch_size is not None:
        plans["configurations"][CONFIGURATION]["batch_size"] = int(settings.batch_size)
    with _quiet(log_path):
        folder = preprocess_cases(name, plans, CONFIGURATION, dataset_json)
    spec = DomainSpec.from_dataset_json(dataset_json)
    return PreparedDataset(name, dataset_json, plans, stock_plans(plans), spec, folder,
                           res.folder / "imagesTs", time.perf_counter() - t0)


# ================================================================================ trainers
def trainer_classes() -> dict[str, type]:
    """Trainer classes by benchmark name: ``stock`` and the schemes of :data:`SCHEME_TRAINERS`."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunetv2_mtmd.training.trainers import schemes

    out: dict[str, type] = {STOCK: nnUNetTrainer}
    for key, cls_name in SCHEME_TRAINERS.items():
        out[key] = getattr(schemes, cls_name)
    return out


def build_trainer(cls: type, plans: dict[str, Any], dataset_json: dict[str, Any], device: str,
                  log_path: Path | None = None) -> Any:
    """Construct and ``initialize()`` a trainer in this process, ready for ``train_step``.

    The MJAP autoencoder of ``nnUNetTrainerMTMD`` is marked trained (frozen, untrained weights: the
    time of an iteration does not depend on them)."""
    import torch

    p = copy.deepcopy(plans)
    p["continue_training"] = False
    with _quiet(log_path):
        tr = cls(p, CONFIGURATION, 0, copy.deepcopy(dataset_json), torch.device(device))
        tr.initialize()
        tr.network.train()
        if getattr(tr, "autoencoder", None) is not None:
            tr.autoencoder_trained = True
    return tr


def make_fixed_batch(prepared: PreparedDataset, trainer: Any, batch_size: int, device: str) -> dict[str, Any]:
    """One training batch from the preprocessed merged dataset, as nnU-Net's loader would give it.

    ``data``: ``(B, C + 1, X, Y)`` float32 (image channels, then the domain code), ``target``: list of
    ``(B, 1, X_s, Y_s)`` int16 at the trainer's deep-supervision scales. B / K samples per domain in
    domain order (as the domain-balanced loader draws them), each a 2D slice (the one with most
    foreground first, cycling over the domain's cases) center-cropped/padded to the patch size."""
    import torch
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    spec = prepared.spec
    k = spec.num_domains
    if batch_size % k:
        raise InputDataError(f"batch size {batch_size} is not a multiple of the {k} domains.")
    patch = [int(p) for p in trainer.configuration_manager.patch_size]
    ds = infer_dataset_class(str(prepared.preprocessed))(str(prepared.preprocessed))
    by_domain: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {d.index: [] for d in spec.domains}
    for key in sorted(ds.identifiers):
        data, seg, _, _ = ds.load_case(key)
        data, seg = np.asarray(data), np.asarray(seg)
        order = np.argsort(-(seg[0] > 0).reshape(seg.shape[1], -1).sum(1), kind="stable")
        by_domain[spec.domain_of_case(key).index].append((data[:, order], seg[:, order]))
    imgs, segs = [], []
    for d in spec.domains:
        cases = by_domain[d.index]
        if not cases:
            raise InputDataError(f"no preprocessed case of domain {d.name} in {prepared.preprocessed}.")
        for j in range(batch_size // k):
            data, seg = cases[j % len(cases)]
            z = (j // len(cases)) % data.shape[1]
            img = center_crop_or_pad(data[:, z], patch)
            img[spec.code_channel] = d.code  # the loader restores the code after augmentation
            imgs.append(img)
            segs.append(center_crop_or_pad(seg[:, z], patch))
    data_t = torch.from_numpy(np.stack(imgs).astype(np.float32)).to(device)
    seg_t = torch.from_numpy(np.stack(segs).astype(np.int16)).to(device)
    return {"data": data_t, "target": deep_supervision_targets(seg_t, trainer._get_deep_supervision_scales())}


def random_batch(spec: DomainSpec, batch_size: int, patch: Sequence[int], scales: Any, device: str,
                 seed: int = 0) -> dict[str, Any]:
    """A fixed random batch for K synthetic domains: B / K samples per domain in domain order; image
    ``N(0, 1)``, code channel = domain code, labels = blocks of the sample's own domain labels."""
    import torch

    g = torch.Generator().manual_seed(seed)
    k = spec.num_domains
    per = batch_size // k
    dom = torch.arange(k).repeat_interleave(per)  # (B,)
    img = torch.randn(batch_size, spec.code_channel, *patch, generator=g)
    code = (dom + 1).float().view(-1, 1, *([1] * len(patch))).expand(batch_size, 1, *patch)
    data = torch.cat([img, code], 1)
    coarse = [max(1, p // 8) for p in patch]
    segs = []
    for b in range(batch_size):
        ids = torch.tensor([0] + list(spec.domains[int(dom[b])].unified_ids))
        pick = torch.randint(0, len(ids), coarse, generator=g)
        lab = ids[pick].float()[None, None]
        segs.append(torch.nn.functional.interpolate(lab, list(patch), mode="nearest")[0])
    seg = torch.stack(segs).to(torch.int16)
    return {"data": data.to(device), "target": deep_supervision_targets(seg.to(device), scales)}


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def timed_step(trainer: Any, batch: dict[str, Any], device: str) -> dict[str, float]:
    """Seconds of one ``trainer.train_step(batch)`` (device synchronised before and after):
    ``{"wall": elapsed, "cpu": CPU time of this process (all threads)}``."""
    _sync(device)
    c0, t0 = time.process_time(), time.perf_counter()
    trainer.train_step(batch)
    _sync(device)
    return {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0}


def _tensor_bytes(tensors: Iterable[Any]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (None entries ignored)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if t is None:
            continue
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


def resident_bytes(trainer: Any, batch: dict[str, Any]) -> int:
    """Bytes alive before an iteration and not released by it: network parameters and buffers,
    optimizer state, the frozen MJAP autoencoder (if any) and the batch."""
    import torch

    tensors: list[Any] = list(trainer.network.parameters()) + list(trainer.network.buffers())
    for state in trainer.optimizer.state.values():
        tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    ae = getattr(trainer, "autoencoder", None)
    if ae is not None:
        tensors += list(ae.parameters()) + list(ae.buffers())
    tensors.append(batch["data"])
    tensors += batch["target"] if isinstance(batch["target"], list) else [batch["target"]]
    return _tensor_bytes(tensors)


def measure_peak_memory(trainer: Any, batch: dict[str, Any], device: str) -> dict[str, int]:
    """Peak allocated tensor memory during one training iteration (bytes).

    * CUDA: ``torch.cuda.max_memory_allocated`` over one ``train_step`` (after
      ``reset_peak_memory_stats``): everything allocated, parameters and optimizer state included.
    * CPU (no allocator statistics): two iterations run under ``torch.profiler`` with
      ``profile_memory=True``, which records every CPU allocation and release (pointer, bytes).
      ``working`` = the peak, during the second iteration, of the bytes allocated since the first
      iteration began and not yet released (:func:`peak_live_bytes`): activations, gradients,
      temporaries, and whatever the first iteration left alive for the next (gradients, stored
      features). ``peak = resident + working`` with ``resident`` (parameters, buffers, optimizer
      state, batch) from :func:`resident_bytes`. Exact for tensor memory, deterministic (no RSS
      noise); memory outside torch's CPU allocator is not counted.

    Returns ``{"peak": ..., "resident": ..., "working": ...}``.
    """
    import torch

    if device == "cuda":
        trainer.train_step(batch)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        trainer.train_step(batch)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return {"peak": int(peak), "resident": int(base), "working": int(peak - base)}

    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        trainer.train_step(batch)
        with record_function("mtmd_benchmark_step"):
            trainer.train_step(batch)
    allocs, window = _allocation_events(prof, "mtmd_benchmark_step")
    working = peak_live_bytes(allocs, *window)
    res = resident_bytes(trainer, batch)
    return {"peak": int(res + working), "resident": int(res), "working": int(working)}


def _allocation_events(prof: Any, marker: str) -> tuple[list[tuple[int, int, int]], tuple[int, int]]:
    """``(time_ns, ptr, size)`` of every CPU allocation (size > 0) and release (size < 0) of a finished
    profile in time order, and the ``(start_ns, end_ns)`` of the ``record_function`` named ``marker``.

    (The profiler's own running ``total_allocated`` is not used: it is a process-wide counter that
    misses releases made while no profiler runs, so it drifts between profiling sessions.)"""
    from torch._C._profiler import _EventType

    allocs: list[tuple[int, int, int]] = []
    window: tuple[int, int] | None = None
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            ef = node.extra_fields
            if ef.device.type == "cpu":
                allocs.append((node.start_time_ns, int(ef.ptr), int(ef.alloc_size)))
        elif node.name == marker:
            window = (node.start_time_ns, node.end_time_ns)
        stack.extend(node.children)
    if window is None:
        raise RuntimeError(f"profiler trace has no '{marker}' region; cannot measure the iteration's memory")
    return sorted(allocs), window


# ================================================================================= inference
def save_inference_model(trainer: Any, plans: dict[str, Any], dataset_json: dict[str, Any],
                         log_path: Path | None = None) -> Path:
    """Write ``trainer``'s network as an nnU-Net result folder (``plans.json``, ``dataset.json``,
    ``fold_0/checkpoint_final.pth`` via the trainer's own ``save_checkpoint``); return the model folder."""
    from nnunetv2_mtmd.io import save_json

    with _quiet(log_path):
        trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()  # sets the TTA mirror axes
    out = Path(trainer.output_folder)
    out.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(str(out / "checkpoint_final.pth"))
    model_folder = out.parent
    save_json(plans, model_folder / "plans.json")
    save_json(dataset_json, model_folder / "dataset.json")
    return model_folder


def console_script(name: str) -> str:
    """Path of an installed console script next to the running interpreter, else the bare name."""
    cand = Path(sys.executable).parent / name
    return str(cand) if cand.exists() else name


def predict_command(dataset_name: str, trainer_name: str, plans_name: str, input_folder: Path,
                    output_folder: Path, device: str, disable_tta: bool) -> list[str]:
    """The ``nnUNetv2_predict`` command line used for both models (sequential mode: ``-npp 0 -nps 0``)."""
    cmd = [console_script("nnUNetv2_predict"), "-i", str(input_folder), "-o", str(output_folder),
           "-d", dataset_name, "-tr", trainer_name, "-p", plans_name, "-c", CONFIGURATION, "-f", "0",
           "-chk", "checkpoint_final.pth", "-device", device, "--disable_progress_bar", "-npp", "0", "-nps", "0"]
    return cmd + (["--disable_tta"] if disable_tta else [])


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed_predict(cmd: list[str], output_folder: Path, env: dict[str, str]) -> dict[str, float]:
    """Seconds of one ``nnUNetv2_predict`` run (fresh output folder): ``{"wall": elapsed, "cpu": user +
    system CPU time of the subprocess}`` (interpreter start and imports included); raises on failure."""
    if output_folder.exists():
        shutil.rmtree(output_folder)
    c0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    dt = {"wall": time.perf_counter() - t0, "cpu": _children_cpu() - c0}
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise RuntimeError(f"nnUNetv2_predict failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return dt


def load_predictor(model_folder: Path, device: str, disable_tta: bool, log_path: Path | None = None) -> Any:
    """nnU-Net's ``nnUNetPredictor`` for fold 0 of ``model_folder`` (as ``nnUNetv2_predict`` builds it)."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    with _quiet(log_path):
        pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=not disable_tta,
                               perform_everything_on_device=device == "cuda", device=torch.device(device),
                               verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        pred.initialize_from_trained_model_folder(str(model_folder), (0,), "checkpoint_final.pth")
    return pred


def timed_predict_in_process(predictor: Any, input_folder: Path, output_folder: Path, device: str,
                             log_path: Path | None = None) -> dict[str, float]:
    """Seconds of ``predictor.predict_from_files_sequential`` (read, preprocess, sliding-window
    prediction, export) in this process: ``{"wall", "cpu"}``. Excludes interpreter start and imports."""
    if output_folder.exists():
        shutil.rmtree(output_folder)
    output_folder.mkdir(parents=True)
    _sync(device)
    c0, t0 = time.process_time(), time.perf_counter()
    with _quiet(log_path):
        predictor.predict_from_files_sequential(str(input_folder), str(output_folder), save_probabilities=False,
                                                overwrite=True, folder_with_segs_from_prev_stage=None)
    _sync(device)
    return {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0}


# ================================================================================== the run
@dataclass
class BenchmarkResult:
    """Medians (seconds / bytes), ratios and everything needed to reproduce them."""

    train_step_s: dict[str, float] = field(default_factory=dict)
    train_step_ratio: dict[str, float] = field(default_factory=dict)
    predict_s: dict[str, float] = field(default_factory=dict)
    inference_ratio: float = float("nan")
    predict_in_process_s: dict[str, float] = field(default_factory=dict)
    inference_in_process_ratio: float = float("nan")
    memory_bytes: dict[str, dict[str, int]] = field(default_factory=dict)
    memory_ratio: float = float("nan")
    memory_ratio_per_scheme: dict[str, float] = field(default_factory=dict)
    k_step_s: dict[int, float] = field(default_factory=dict)
    k_scaling_ratio: float = float("nan")
    clock: str = "wall"
    medians_other_clock: dict[str, Any] = field(default_factory=dict)
    raw_times: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The issue's JSON (:data:`REQUIRED_KEYS`) plus ``details`` with the raw numbers."""
        return {
            "train_step_ratio": dict(self.train_step_ratio),
            "inference_ratio": self.inference_ratio,
            "memory_ratio": self.memory_ratio,
            "k_scaling_ratio": self.k_scaling_ratio,
            "details": {
                "targets": TARGETS,
                "clock": self.clock,
                "train_step_median_s": self.train_step_s,
                "predict_median_s": self.predict_s,
                "predict_in_process_median_s": self.predict_in_process_s,
                "inference_in_process_ratio": self.inference_in_process_ratio,
                "memory_bytes": self.memory_bytes,
                "memory_ratio_per_scheme": self.memory_ratio_per_scheme,
                "k_step_median_s": {str(k): v for k, v in self.k_step_s.items()},
                "medians_other_clock_s": self.medians_other_clock,
                "raw_times_s": self.raw_times,
                **self.info,
            },
        }


def run_benchmark(settings: BenchmarkSettings, workdir: Path) -> BenchmarkResult:
    """Run every measurement (see the module docstring) inside ``workdir`` and return the result.

    Sets ``nnUNet_raw/preprocessed/results`` (and ``nnUNet_compile=f``) in ``os.environ`` to folders of
    ``workdir``: nnunetv2 must not have been imported earlier in this process."""
    settings.validate()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    env = nnunet_env(workdir)
    for v in env.values():
        Path(v).mkdir(parents=True, exist_ok=True)
    os.environ.update(env)
    # torch.compile is off for the MTMD trainers (domain-dependent graphs); keep the stock one alike
    os.environ["nnUNet_compile"] = "f"
    log_path = workdir / "nnunet_output.log"
    t_start = time.perf_counter()

    import torch

    if settings.threads is not None or settings.device == "cpu":
        torch.set_num_threads(settings.threads or 1)
    clock = settings.effective_clock
    other = "wall" if clock == "cpu" else "cpu"
    res = BenchmarkResult(clock=clock)
    res.info = {
        "device": settings.device,
        "device_name": torch.cuda.get_device_name(0) if settings.device == "cuda" else platform.processor()
        or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()},
    }
    torch.manual_seed(settings.seed)

    # ------------------------------------------------------------------ data, plans
    logger.info("[1/5] synthetic data, merge, fingerprint, MTMD plans, preprocessing ...")
    prepared = prepare_dataset(workdir, settings, log_path)
    cfg = prepared.plans["configurations"][CONFIGURATION]
    res.info.update({
        "dataset": prepared.name,
        "patch_size": list(cfg["patch_size"]),
        "batch_size": int(cfg["batch_size"]),
        "n_stages": cfg["architecture"]["arch_kwargs"]["n_stages"],
        "features_per_stage": list(cfg["architecture"]["arch_kwargs"]["features_per_stage"]),
        "num_domains": prepared.spec.num_domains,
        "num_classes": prepared.spec.num_classes,
        "prepare_s": round(prepared.seconds, 2),
    })
    logger.info("      %s: patch %s, batch %d, %d stages (%.1f s)", prepared.name, cfg["patch_size"],
                cfg["batch_size"], res.info["n_stages"], prepared.seconds)

    # ------------------------------------------------------------------ training step
    logger.info("[2/5] training iteration time: %s vs stock nnUNetTrainer (%d warm-up + %d timed each, "
                "interleaved) ...", ", ".join(SCHEME_TRAINERS), settings.warmup, settings.repeats)
    classes = trainer_classes()
    trainers = {}
    for key, cls in classes.items():
        plans = prepared.stock_plans if key == STOCK else prepared.plans
        trainers[key] = build_trainer(cls, plans, prepared.dataset_json, settings.device, log_path)
    batch = make_fixed_batch(prepared, trainers["DSL"], int(cfg["batch_size"]), settings.device)
    times = run_interleaved({k: (lambda t=t, b=batch: timed_step(t, b, settings.device)) for k, t in trainers.items()},
                            settings.repeats, settings.warmup, desc="train steps")
    res.raw_times["train_step"] = times
    res.train_step_s = clock_medians(times, clock)
    res.medians_other_clock["train_step"] = clock_medians(times, other)
    res.train_step_ratio = {k: paired_ratio(times, k, STOCK, clock) for k in SCHEME_TRAINERS}
    logger.info("      median %s time per iteration: %s", clock,
                ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in res.train_step_s.items()))

    # ------------------------------------------------------------------ memory
    logger.info("[3/5] peak memory of one training iteration ...")
    with _quiet_fds(log_path):  # the profiler's C++ log lines
        for key, tr in trainers.items():
            res.memory_bytes[key] = measure_peak_memory(tr, batch, settings.device)
    stock_peak = res.memory_bytes[STOCK]["peak"]
    res.memory_ratio_per_scheme = {k: ratio(res.memory_bytes[k]["peak"], stock_peak) for k in SCHEME_TRAINERS}
    res.memory_ratio = res.memory_ratio_per_scheme["MTMD"]
    logger.info("      peak: %s", ", ".join(f"{k} {v['peak'] / 2**20:.1f} MiB" for k, v in res.memory_bytes.items()))

    # ------------------------------------------------------------------ inference
    logger.info("[4/5] nnUNetv2_predict: MTMD model vs stock model (%d warm-up run(s), then %d timed each, "
                "interleaved; then the same in process) ...", settings.predict_warmup, settings.predict_repeats)
    mtmd_folder = save_inference_model(trainers["MTMD"], prepared.plans, prepared.dataset_json, log_path)
    stock_folder = save_inference_model(trainers[STOCK], prepared.stock_plans, prepared.dataset_json, log_path)
    del trainers, batch
    sub_env = {**os.environ, **env, "nnUNet_compile": "f"}
    sub_env.pop("nnUNet_extTrainer", None)
    if settings.device == "cpu":
        # nnUNetv2_predict uses every core; idle OpenMP threads must not spin on a shared machine
        sub_env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    models = {STOCK: (STOCK_TRAINER, prepared.stock_plans["plans_name"]),
              "MTMD": (SCHEME_TRAINERS["MTMD"], prepared.plans["plans_name"])}
    cmds = {k: predict_command(prepared.name, tr, pn, prepared.test_images, workdir / f"pred_{k}",
                               settings.device, settings.disable_tta) for k, (tr, pn) in models.items()}
    ptimes = run_interleaved({k: (lambda c=c, k=k: timed_predict(c, workdir / f"pred_{k}", sub_env))
                              for k, c in cmds.items()},
                             settings.predict_repeats, 0, desc="nnUNetv2_predict",
                             warmup_runs=settings.predict_warmup)
    n_pred = len(list((workdir / "pred_MTMD").glob("*" + prepared.dataset_json["file_ending"])))
    res.raw_times["predict"] = ptimes
    res.predict_s = clock_medians(ptimes, clock)
    res.medians_other_clock["predict"] = clock_medians(ptimes, other)
    res.inference_ratio = paired_ratio(ptimes, "MTMD", STOCK, clock)
    logger.info("      median %s time per nnUNetv2_predict run: %s", clock,
                ", ".join(f"{k} {v:.2f} s" for k, v in res.predict_s.items()))
    res.info.update({"predict_command": " ".join(cmds["MTMD"]), "predict_cases": n_pred,
                     "model_folders": [str(mtmd_folder), str(stock_folder)]})
    # the same prediction in this process: without interpreter start and imports (which the
    # console script's time includes), so the network's share is larger
    predictors = {STOCK: load_predictor(stock_folder, settings.device, settings.disable_tta, log_path),
                  "MTMD": load_predictor(mtmd_folder, settings.device, settings.disable_tta, log_path)}
    itimes = run_interleaved({k: (lambda p=p, k=k: timed_predict_in_process(
        p, prepared.test_images, workdir / f"pred_inproc_{k}", settings.device, log_path))
        for k, p in predictors.items()}, settings.predict_repeats + (0 if settings.quick else 1),
        0 if settings.quick else 1,
        desc="predict in process")
    del predictors
    res.raw_times["predict_in_process"] = itimes
    res.predict_in_process_s = clock_medians(itimes, clock)
    res.medians_other_clock["predict_in_process"] = clock_medians(itimes, other)
    res.inference_in_process_ratio = paired_ratio(itimes, "MTMD", STOCK, clock)
    logger.info("      in process: %s", ", ".join(f"{k} {v:.2f} s" for k, v in res.predict_in_process_s.items()))

    # ------------------------------------------------------------------ K scaling
    logger.info("[5/5] DSL iteration time with K = %s domains (batch %d, %d labels) ...",
                ", ".join(map(str, settings.k_values)), settings.k_batch_size, settings.k_total_labels)
    ktimes = k_scaling(prepared, settings, log_path)
    res.raw_times["k_scaling"] = ktimes
    res.k_step_s = {int(n[2:]): v for n, v in clock_medians(ktimes, clock).items()}
    res.medians_other_clock["k_scaling"] = clock_medians(ktimes, other)
    ks = sorted(res.k_step_s)
    res.k_scaling_ratio = paired_ratio(ktimes, f"K={ks[-1]}", f"K={ks[0]}", clock)
    res.info["total_s"] = round(time.perf_counter() - t_start, 1)
    return res


def k_scaling(prepared: PreparedDataset, settings: BenchmarkSettings,
              log_path: Path | None = None) -> dict[str, list[dict[str, float]]]:
    """DSL ``train_step`` timings (name ``"K=<k>"``) for every K of ``settings.k_values`` (interleaved), each with
    the merged dataset's network and patch size, ``k_batch_size`` samples (B / K per domain) and
    ``k_total_labels`` unified labels (:func:`k_domain_spec`)."""
    classes = trainer_classes()
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
        tr = build_trainer(classes["DSL"], plans, dj, settings.device, log_path)
        name = f"K={k}"
        trainers[name] = tr
        batches[name] = random_batch(spec, settings.k_batch_size, cfg["patch_size"],
                                     tr._get_deep_supervision_scales(), settings.device, settings.seed)
    times = run_interleaved({n: (lambda n=n: timed_step(trainers[n], batches[n], settings.device))
                             for n in trainers}, settings.k_repeats, settings.warmup, desc="K scaling")
    return times


# ===================================================================================== output
def _fmt_s(v: float) -> str:
    return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"


def _fmt_b(v: float) -> str:
    return f"{v / 2**20:.1f} MiB"


def table_rows(res: BenchmarkResult) -> list[list[str]]:
    """Rows ``[measurement, MTMD, reference, ratio, target, pass/fail]`` of the printed table."""

    def verdict(r: float, target: float) -> str:
        return "n/a" if not math.isfinite(r) else ("pass" if r <= target else "FAIL")

    rows = []
    for key, cls in SCHEME_TRAINERS.items():
        r = res.train_step_ratio[key]
        rows.append([f"train step {key} ({cls})", _fmt_s(res.train_step_s[key]),
                     f"{_fmt_s(res.train_step_s[STOCK])} stock", f"{r:.3f}", f"<= {TARGETS[key]:.2f}",
                     verdict(r, TARGETS[key])])
    rows.append(["nnUNetv2_predict (MTMD model)", _fmt_s(res.predict_s["MTMD"]),
                 f"{_fmt_s(res.predict_s[STOCK])} stock", f"{res.inference_ratio:.3f}",
                 f"<= {TARGETS['inference']:.2f}", verdict(res.inference_ratio, TARGETS["inference"])])
    if res.predict_in_process_s:
        r = res.inference_in_process_ratio
        rows.append(["  same, in process (no start-up/imports; details)", _fmt_s(res.predict_in_process_s["MTMD"]),
                     f"{_fmt_s(res.predict_in_process_s[STOCK])} stock", f"{r:.3f}",
                     f"<= {TARGETS['inference']:.2f}", verdict(r, TARGETS["inference"])])
    for key in SCHEME_TRAINERS:
        r = res.memory_ratio_per_scheme[key]
        label = "peak memory MTMD (reported)" if key == "MTMD" else f"peak memory {key}"
        rows.append([label, _fmt_b(res.memory_bytes[key]["peak"]), f"{_fmt_b(res.memory_bytes[STOCK]['peak'])} stock",
                     f"{r:.3f}", f"<= {TARGETS['memory']:.2f}", verdict(r, TARGETS["memory"])])
    ks = sorted(res.k_step_s)
    rows.append([f"DSL step K={ks[-1]} vs K={ks[0]} ("
                 + ", ".join(f"K={k}: {_fmt_s(v)}" for k, v in sorted(res.k_step_s.items())) + ")",
                 _fmt_s(res.k_step_s[ks[-1]]), f"{_fmt_s(res.k_step_s[ks[0]])} K={ks[0]}",
                 f"{res.k_scaling_ratio:.3f}", f"<= {TARGETS['k_scaling']:.2f}",
                 verdict(res.k_scaling_ratio, TARGETS["k_scaling"])])
    return rows


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table with the header ``measurement | MTMD | reference | ratio | target | result``."""
    header = ["measurement", "MTMD", "reference", "ratio", "target", "result"]
    allrows = [header] + [list(r) for r in rows]
    widths = [max(len(r[i]) for r in allrows) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in allrows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(result: dict[str, Any], path: Path) -> None:
    """Write ``result`` to ``path`` atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(result, f, indent=2, default=_json_default)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


__all__ = [
    "BenchmarkResult",
    "BenchmarkSettings",
    "REQUIRED_KEYS",
    "TARGETS",
    "center_crop_or_pad",
    "check_result",
    "deep_supervision_targets",
    "dataset_json_for_spec",
    "format_table",
    "interleaved_order",
    "k_domain_spec",
    "measure_peak_memory",
    "median",
    "paired_ratio",
    "peak_live_bytes",
    "ratio",
    "run_benchmark",
    "stock_architecture",
    "stock_plans",
    "table_rows",
    "write_json",
]
