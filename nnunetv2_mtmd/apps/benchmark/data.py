"""The benchmark's dataset: synthetic joints, merged, fingerprinted, planned with nnUNetPlannerMTMD and
preprocessed in this process (:func:`prepare_dataset`).

Fingerprint and preprocessing call nnU-Net's own per-case functions here instead of its console
scripts: their spawn pools start fresh interpreters that re-import nnU-Net, which costs 10-40 s on a
busy 2-core machine, more than the work.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnunetv2_mtmd.apps.benchmark.environment import quiet
from nnunetv2_mtmd.apps.benchmark.plans import stock_plans
from nnunetv2_mtmd.apps.benchmark.settings import CONFIGURATION, MERGED_NAME, BenchmarkSettings
from nnunetv2_mtmd.apps.workspace import nnunet_folders
from nnunetv2_mtmd.compat import compute_fingerprint
from nnunetv2_mtmd.domains import DomainSpec


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
    2D data, all inside ``workdir``, whose nnU-Net folders must be the process's ``nnUNet_*`` (nnU-Net
    reads them from ``os.environ``: :func:`.environment.benchmark_environment`)."""
    from nnunetv2_mtmd.conversion.merge import merge_datasets
    from nnunetv2_mtmd.conversion.synthetic import write_synthetic_datasets
    from nnunetv2_mtmd.io import load_json

    t0 = time.perf_counter()
    env = nnunet_folders(workdir)
    raw = Path(env["nnUNet_raw"])
    ids = [settings.dataset_id + i for i in (1, 2, 3)]
    with quiet(log_path):
        write_synthetic_datasets(raw, cases=settings.cases, test_cases=settings.test_cases, seed=settings.seed,
                                 shape=settings.shape, ids=ids, overwrite=True)
        res = merge_datasets(ids, settings.dataset_id, name=MERGED_NAME, raw_root=raw, overwrite=True,
                             progress=False)
    name = res.folder.name
    from nnunetv2_mtmd.planning.planners import nnUNetPlannerMTMD

    with quiet(log_path):
        compute_fingerprint(name)
        planner = nnUNetPlannerMTMD(name)
        planner.plan_experiment()
    pre = Path(env["nnUNet_preprocessed"]) / name
    plans = load_json(pre / "nnUNetPlans.json")
    dataset_json = load_json(res.folder / "dataset.json")
    if settings.batch_size is not None:
        plans["configurations"][CONFIGURATION]["batch_size"] = int(settings.batch_size)
    with quiet(log_path):
        folder = preprocess_cases(name, plans, CONFIGURATION, dataset_json)
    spec = DomainSpec.from_dataset_json(dataset_json)
    return PreparedDataset(name, dataset_json, plans, stock_plans(plans), spec, folder,
                           res.folder / "imagesTs", time.perf_counter() - t0)
