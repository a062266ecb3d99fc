"""The label autoencoder cache (nnunetv2_mtmd/training/autoencoder_cache.py, autoencoder_job.py): trained
once per job and reused, locked (a second job waits, then reuses), resumed after a kill, invalidated
when an input changes (split, patch, augmentation, settings, variant, code); the fold record; the
trainer's side (settings from the ``ae_*`` attributes, the job of a trainer)."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetNumpy

from nnunetv2_mtmd.training import autoencoder_cache as cache
from nnunetv2_mtmd.training import autoencoder_job as jobs
from nnunetv2_mtmd.training.autoencoder_data import SpatialAugmentation, load_label_maps
from nnunetv2_mtmd.training.autoencoder_phase import AE_FILE, AE_PARTIAL_FILE
from tests.training.label_autoencoder_helpers import SIZE, spec, synthetic_map

TRAIN = ["bars_1", "bars_2", "blob_1", "blob_2"]
VAL = ["bars_3", "blob_3"]
SETTINGS = jobs.AutoencoderSettings(features=(4, 8, 16), iterations=6, batch_size=4, save_every=2, warmup=0)


def write_preprocessed(folder: Path, cases: list[str], slices: int = 3, seed: int = 0) -> Path:
    """nnU-Net-style preprocessed cases (nnUNetDatasetNumpy): seg ``(1, Z, X, Y)`` of synthetic label maps."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for case in cases:
        k = 0 if case.startswith("blob") else 1
        seg = np.stack([synthetic_map(k, rng) for _ in range(slices)])[None].astype(np.int8)
        nnUNetDatasetNumpy.save_case(np.zeros((2, *seg.shape[1:]), np.float32), seg, {}, str(folder / case))
    return folder


@pytest.fixture
def job(tmp_path) -> jobs.AutoencoderJob:
    torch.set_num_threads(1)  # tiny networks: one thread is fastest on a shared CPU
    data = write_preprocessed(tmp_path / "pre" / "Dataset950_Synth" / "nnUNetPlans_2d", TRAIN + VAL)
    return jobs.AutoencoderJob(
        preprocessed_folder=data, results_dataset_folder=tmp_path / "results" / "Dataset950_Synth",
        plans_name="nnUNetPlans", configuration="2d", fold=0, train_cases=TRAIN, val_cases=VAL, domain_spec=spec(),
        patch_size=(SIZE, SIZE), spacing=(1.0, 1.0),
        augmentation=SpatialAugmentation(rotation=(-0.5, 0.5), mirror_axes=()), settings=SETTINGS)


def test_load_label_maps_reads_every_slice_of_the_preprocessed_cases(job):
    maps = load_label_maps(job.preprocessed_folder, TRAIN, spec(), 2)
    assert maps.counts() == [6, 6] and maps.case_ids == sorted(TRAIN)  # 2 cases x 3 slices per domain
    assert all(set(np.unique(m).tolist()) <= {0, 1, 2} for m in maps.maps[0])
    vols = load_label_maps(job.preprocessed_folder, TRAIN, spec(), 3)
    assert vols.counts() == [2, 2] and vols.maps[0][0].shape == (3, SIZE, SIZE)


def test_trained_once_then_reused(job, monkeypatch):
    logs: list[str] = []
    first = cache.train_or_load(job, "cpu", logs.append)
    folder = first.cache
    assert not first.reused and first.iterations == 6 and first.variant == "multi_domain"
    assert folder.parent == job.results_dataset_folder / "mtmd_label_autoencoders" / "nnUNetPlans__2d" / "fold_0"
    assert folder.name == f"multi_domain-{first.fingerprint[:12]}"
    assert (folder / AE_FILE).is_file() and not (folder / AE_PARTIAL_FILE).exists()
    assert json.loads((folder / "fingerprint.json").read_text())["train_cases"] == sorted(TRAIN)
    record = json.loads((folder / cache.AE_RECORD_FILE).read_text())
    assert set(record["reconstruction_dice"]) == {"blob", "bars"}
    assert set(record["reconstruction_dice"]["bars"]) == {"top", "middle", "bottom"}
    assert all(not p.requires_grad for p in first.autoencoder.parameters()) and not first.autoencoder.training

    def no_data(*a, **k):
        raise AssertionError("a cached autoencoder was trained (its data loaded) again")

    monkeypatch.setattr(cache, "load_label_maps", no_data)
    mtime = (folder / AE_FILE).stat().st_mtime_ns
    again = cache.train_or_load(job, "cpu", logs.append)
    assert again.reused and again.cache == folder and again.fingerprint == first.fingerprint
    assert again.reconstruction_dice == first.reconstruction_dice and again.iterations == 6
    for k, v in first.autoencoder.state_dict().items():
        assert torch.equal(again.autoencoder.state_dict()[k], v), k
    assert (folder / AE_FILE).stat().st_mtime_ns == mtime
    assert any("reusing the finished autoencoder" in m for m in logs)


def test_the_fold_record(job, tmp_path):
    result = cache.train_or_load(job, "cpu", lambda m: None)
    fold = tmp_path / "results" / "Dataset950_Synth" / "nnUNetTrainerMTMD__nnUNetPlans__2d" / "fold_0"
    path = cache.write_fold_record(result, fold)
    rec = json.loads(path.read_text())
    assert path.name == "label_autoencoder.json"
    assert {"reconstruction_dice", "iterations", "seconds", "fingerprint", "variant", "cache"} <= set(rec)
    assert rec["iterations"] == 6 and rec["variant"] == "multi_domain" and rec["cache"] == str(result.cache)
    assert rec["seconds"] >= 0 and len(rec["fingerprint"]) == 64
    assert (fold / AE_FILE).read_bytes() == (result.cache / AE_FILE).read_bytes()


@pytest.mark.parametrize("change", [
    {"train_cases": TRAIN[:3]},
    {"patch_size": (16, 16)},
    {"spacing": (2.0, 2.0)},
    {"augmentation": SpatialAugmentation(rotation=(-3.14, 3.14), mirror_axes=(0, 1))},
    {"settings": dataclasses.replace(SETTINGS, lr=5e-3)},
    {"settings": dataclasses.replace(SETTINGS, iterations=8)},
    {"settings": dataclasses.replace(SETTINGS, features=(8, 16, 32))},
    {"variant": "shared"},
    {"fold": 1},
])
def test_another_input_gets_another_cache_folder(job, change):
    other = dataclasses.replace(job, **change)
    assert other.cache_folder() != job.cache_folder()
    assert dataclasses.replace(job, settings=dataclasses.replace(SETTINGS, save_every=3)).cache_folder() == \
        job.cache_folder()  # the save interval does not change the result


def test_a_code_change_invalidates_the_cache(job, monkeypatch):
    before = job.cache_folder()
    monkeypatch.setattr(jobs, "code_version", lambda: "0" * 16)
    assert job.cache_folder() != before


def test_code_version_ignores_docstrings_and_follows_code(tmp_path, monkeypatch):
    pkg = tmp_path / "nnunetv2_mtmd"
    for rel in jobs._CODE_FILES:
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text('"""doc"""\nX = 1\n')
    (pkg / "training" / "autoencoder_job.py").write_text("")
    monkeypatch.setattr(jobs, "__file__", str(pkg / "training" / "autoencoder_job.py"))
    v1 = jobs.code_version()
    (pkg / jobs._CODE_FILES[0]).write_text('"""another docstring"""\n# a comment\nX = 1\n')
    assert jobs.code_version() == v1
    (pkg / jobs._CODE_FILES[0]).write_text('"""doc"""\nX = 2\n')
    assert jobs.code_version() != v1


def test_a_second_job_waits_for_the_first_and_reuses_its_autoencoder(job, monkeypatch):
    trainings = []
    real_train = cache.train_autoencoder

    def slow_train(*args, **kwargs):
        trainings.append(threading.current_thread().name)
        time.sleep(1.5)  # hold the lock long enough for the second job to find it taken
        return real_train(*args, **kwargs)

    monkeypatch.setattr(cache, "train_autoencoder", slow_train)
    logs: dict[str, list[str]] = {"A": [], "B": []}
    results = {}

    def work(name: str) -> None:
        results[name] = cache.train_or_load(job, "cpu", logs[name].append)

    a = threading.Thread(target=work, args=("A",), name="A")
    a.start()
    while not trainings:
        time.sleep(0.05)
    b = threading.Thread(target=work, args=("B",), name="B")
    b.start()
    a.join(120)
    b.join(120)
    assert trainings == ["A"]
    assert not results["A"].reused and results["B"].reused
    assert any("being trained by another job; waiting" in m for m in logs["B"]), logs["B"]
    assert any("lock on" in m and "acquired" in m for m in logs["B"])
    for k, v in results["A"].autoencoder.state_dict().items():
        assert torch.equal(results["B"].autoencoder.state_dict()[k], v), k


def test_a_killed_training_is_resumed_by_the_next_job(job, monkeypatch):
    real_train = cache.train_autoencoder

    def killed_after_four(ae, sampler, *args, **kwargs):
        def stream():
            for _ in range(4):
                yield next(sampler)
            raise KeyboardInterrupt("killed")

        return real_train(ae, stream(), *args, **kwargs)

    monkeypatch.setattr(cache, "train_autoencoder", killed_after_four)
    with pytest.raises((KeyboardInterrupt, RuntimeError)):
        cache.train_or_load(job, "cpu", lambda m: None)
    folder = job.cache_folder()
    assert (folder / AE_PARTIAL_FILE).is_file() and not (folder / AE_FILE).exists()
    monkeypatch.setattr(cache, "train_autoencoder", real_train)
    logs: list[str] = []
    result = cache.train_or_load(job, "cpu", logs.append)
    assert any("resuming from label_autoencoder_partial.pth at iteration 4/6" in m for m in logs), logs
    assert not result.reused and result.iterations == 6 and [h["iteration"] for h in result.history] == [2, 4, 6]
    assert not (folder / AE_PARTIAL_FILE).exists()


def test_the_shared_variant_is_cached_apart(job):
    shared = cache.train_or_load(dataclasses.replace(job, variant="shared"), "cpu", lambda m: None)
    assert shared.autoencoder.shared and shared.cache.name.startswith("shared-")
    assert json.loads((shared.cache / cache.AE_RECORD_FILE).read_text())["variant"] == "shared"


# ------------------------------------------------------------------------------------ the trainer's side
class _Trainer:
    """What job_for_trainer and settings_for_trainer read of an nnU-Net trainer."""

    ae_features = (4, 8, 16)
    ae_iterations = 6
    ae_batch_size = 4
    ae_save_every = 2
    ae_lambda_msc = 0.05
    ae_variant = "multi_domain"

    def __init__(self, job: jobs.AutoencoderJob):
        self._job = job
        self.preprocessed_dataset_folder = str(job.preprocessed_folder)
        self.output_folder_base = str(job.results_dataset_folder / "nnUNetTrainerMTMD__nnUNetPlans__2d")
        self.output_folder = str(Path(self.output_folder_base) / "fold_0")
        self.plans_manager = type("P", (), {"plans_name": "nnUNetPlans"})()
        self.configuration_name, self.fold, self.domain_spec = "2d", 0, job.domain_spec
        self.configuration_manager = type("C", (), {"patch_size": list(job.patch_size), "spacing": [1.0, 1.0]})()
        self.device, self.local_rank = torch.device("cpu"), 0
        self.logs: list[str] = []

    def do_split(self):
        return self._job.train_cases, self._job.val_cases

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        return (-0.5, 0.5), False, [40, 40], None

    def print_to_log_file(self, *args, **kwargs):
        self.logs.append(" ".join(str(a) for a in args))


def test_a_trainer_asks_for_the_same_job_and_writes_its_fold_record(job):
    from nnunetv2_mtmd.training.autoencoder_trainer import build_for_trainer, run_for_trainer, settings_for_trainer

    tr = _Trainer(job)
    settings = settings_for_trainer(tr)
    assert settings.features == (4, 8, 16) and settings.iterations == 6 and settings.lr == SETTINGS.lr
    t_job = jobs.job_for_trainer(tr, "multi_domain", dataclasses.replace(SETTINGS, warmup=settings.warmup))
    assert t_job.augmentation == job.augmentation and t_job.train_cases == sorted(TRAIN)
    ae = build_for_trainer(tr)
    result = run_for_trainer(tr, ae)
    assert all(not p.requires_grad for p in ae.parameters())
    for k, v in result.autoencoder.state_dict().items():
        assert torch.equal(ae.state_dict()[k], v), k
    fold = Path(tr.output_folder)
    assert json.loads((fold / "label_autoencoder.json").read_text())["cache"] == str(result.cache)
    assert (fold / AE_FILE).is_file()
    assert any(m.startswith("MJAP autoencoder frozen; validation reconstruction Dice ") for m in tr.logs)
    # a second scheme of the fold (another trainer folder) reuses it
    tr2 = _Trainer(job)
    tr2.output_folder = str(job.results_dataset_folder / "nnUNetTrainerMTMD_DSL_MJAP__nnUNetPlans__2d" / "fold_0")
    assert run_for_trainer(tr2, build_for_trainer(tr2)).reused


def test_fewer_poolings_when_the_patch_does_not_divide():
    assert jobs.poolings_for((64, 64), 4) == 4 and jobs.poolings_for((40, 64), 4) == 3
    assert jobs.poolings_for((6, 64), 4) == 1 and jobs.poolings_for(None, 4) == 4
    ae = jobs.build_autoencoder(spec().domain_label_ids, 2, "multi_domain", jobs.AutoencoderSettings(), (40, 40))
    assert ae.total_stride == (8, 8) and ae.features == [16, 32, 64, 128]
