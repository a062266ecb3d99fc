"""The MJAP label autoencoder, trained once per (dataset, plans, configuration, fold, variant) and reused.

Every MJAP scheme of a fold (DSL+MJAP, DSL+MSC+MJAP; Shared+MJAP with the shared variant) needs
the same frozen autoencoder: it depends on the fold's training labels, the patch, the domains, the
augmentation and the autoencoder's own settings, not on the segmentation scheme. So it lives in a
cache folder of the dataset's results folder, keyed by the hash of everything it depends on
(:meth:`AutoencoderJob.fingerprint`, the code version of the autoencoder modules included)::

    $nnUNet_results/<Dataset>/mtmd_label_autoencoders/<plans>__<configuration>/fold_<f>/<variant>-<hash12>/
        label_autoencoder.pth           the finished, frozen autoencoder (weights_only-readable)
        label_autoencoder_partial.pth   progress of an unfinished training (resumed by the next job)
        label_autoencoder.json          reconstruction Dice per domain and structure, iterations, seconds
        fingerprint.json                what the hash was taken of (for people)
        .lock                           fcntl.flock: one job trains, a second one waits, then reuses

The first job to take the lock trains (resuming a partial state if a killed job left one); a job
that finds the lock held logs that it waits, and after the lock is released finds the finished
autoencoder and loads it. A changed input (another split, patch, augmentation, setting or code)
gives another hash, hence another folder: nothing stale is ever reused. Under DDP, rank 0 holds the
lock while all ranks train together (:func:`~nnunetv2_mtmd.training.autoencoder_phase.train_autoencoder`).

:func:`write_fold_record` puts a copy of the autoencoder (``label_autoencoder.pth``) and its
``label_autoencoder.json`` (with the cache path) into a trainer's fold folder.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nnunetv2_mtmd.architectures.label_autoencoder import LabelAutoencoder
from nnunetv2_mtmd.errors import InputDataError
from nnunetv2_mtmd.io import atomic_file, atomic_save_json, load_json
from nnunetv2_mtmd.training.autoencoder_data import LabelPatchSampler, load_label_maps
from nnunetv2_mtmd.training.autoencoder_eval import evaluate_reconstruction, mean_dice
from nnunetv2_mtmd.training.autoencoder_job import AutoencoderJob, fingerprint_hash
from nnunetv2_mtmd.training.autoencoder_phase import AE_FILE, load_finished, train_autoencoder

__all__ = ["AE_RECORD_FILE", "AutoencoderResult", "cache_lock", "train_or_load", "write_fold_record"]

AE_RECORD_FILE = "label_autoencoder.json"
LOCK_FILE = ".lock"


@dataclass
class AutoencoderResult:
    """A trained (or reused) frozen autoencoder and its record."""

    autoencoder: LabelAutoencoder
    reconstruction_dice: dict[str, dict[str, float]]
    iterations: int
    seconds: float
    fingerprint: str
    variant: str
    cache: Path
    reused: bool
    history: list[dict] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """The ``label_autoencoder.json`` content."""
        return {"reconstruction_dice": self.reconstruction_dice, "iterations": self.iterations,
                "seconds": round(self.seconds, 1), "fingerprint": self.fingerprint, "variant": self.variant,
                "cache": str(self.cache), "reused": self.reused}

    @property
    def mean_dice(self) -> float:
        return mean_dice(self.reconstruction_dice)


@contextlib.contextmanager
def cache_lock(folder: Path, log: Callable[[str], None]) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``folder/.lock`` within the block; waits (and says so) when
    another job holds it. The kernel releases it when the holder dies, so a killed job never blocks
    the next one. Platforms without ``fcntl`` get no lock (logged)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        log("WARNING: no fcntl on this platform: the label autoencoder cache is not locked.")
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"MJAP autoencoder: {folder} is being trained by another job; waiting for it to finish.")
            t0 = time.perf_counter()
            fcntl.flock(f, fcntl.LOCK_EX)
            log(f"MJAP autoencoder: lock on {folder} acquired after {time.perf_counter() - t0:.0f} s.")
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _distributed() -> tuple[bool, bool]:
    from nnunetv2_mtmd.training.ddp import dist_active

    active = dist_active()
    return active, (not active or torch.distributed.get_rank() == 0)


@contextlib.contextmanager
def _job_lock(folder: Path, log: Callable[[str], None]) -> Iterator[None]:
    """:func:`cache_lock` on rank 0; under DDP every rank waits until rank 0 holds it."""
    active, main = _distributed()
    with cache_lock(folder, log) if main else contextlib.nullcontext():
        if active:
            torch.distributed.barrier()
        try:
            yield
        finally:
            if active:
                torch.distributed.barrier()


def _reused(job: AutoencoderJob, ae: LabelAutoencoder, folder: Path, fp: dict, digest: str, device: torch.device,
            log: Callable[[str], None]) -> AutoencoderResult | None:
    record_path = folder / AE_RECORD_FILE
    if not (folder / AE_FILE).is_file() or not record_path.is_file():
        return None
    st = load_finished(folder / AE_FILE, _phase_fp(job, fp), job.settings.iterations, ae, device, log)
    if st is None:
        return None
    rec = load_json(record_path)
    if not isinstance(rec.get("reconstruction_dice"), dict):
        raise InputDataError(f"{record_path} has no 'reconstruction_dice'; delete {folder} to train it again.")
    return AutoencoderResult(ae, rec["reconstruction_dice"], st.iterations_done, float(rec.get("seconds", 0.0)),
                             digest, job.variant, folder, True, st.history)


def _phase_fp(job: AutoencoderJob, fp: dict) -> dict:
    """The fingerprint as train_autoencoder stores it in its files."""
    s = job.settings
    return {"config": fp["config"], "train_cases": job.train_cases, "lambda1": float(s.lambda1),
            "temperature": float(s.temperature), "lr": float(s.lr), "job": fp}


def train_or_load(job: AutoencoderJob, device: torch.device | str, log: Callable[[str], None]) -> AutoencoderResult:
    """The frozen autoencoder of ``job``: loaded from its cache folder when finished there, else
    trained into it (under the folder's lock; a partial state is resumed), evaluated on the job's
    validation cases (:func:`~nnunetv2_mtmd.training.autoencoder_eval.evaluate_reconstruction`,
    reporting only) and recorded. Initial weights and the sampler are seeded from ``settings.seed``
    (torch's global RNG is left as it was)."""
    device = torch.device(device)
    s = job.settings
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)
        ae = job.build().to(device)
    fp = job.fingerprint(ae)
    digest = fingerprint_hash(fp)
    folder = job.cache_folder(fp)
    with _job_lock(folder, log):
        found = _reused(job, ae, folder, fp, digest, device, log)
        if found is not None:
            return found
        log(f"MJAP autoencoder: training {job.variant} autoencoder for {s.iterations} iterations of batch "
            f"{s.batch_size} into {folder}")
        t0 = time.perf_counter()
        train_maps = load_label_maps(job.preprocessed_folder, job.train_cases, job.domain_spec, job.dim)
        val_maps = load_label_maps(job.preprocessed_folder, job.val_cases, job.domain_spec, job.dim)
        ids = job.domain_spec.domain_label_ids
        sampler = LabelPatchSampler(train_maps, ids, job.patch_size, s.batch_size, job.augmentation,
                                    s.fg_fraction, seed=s.seed)
        val_batches = LabelPatchSampler(val_maps if any(val_maps.maps) else train_maps, ids, job.patch_size,
                                        s.batch_size, None, 1.0, seed=s.seed + 1)
        _, main = _distributed()
        if main:
            atomic_save_json(fp, folder / "fingerprint.json")
        st = train_autoencoder(ae, sampler, val_batches, s.iterations, device, folder, log, lambda1=s.lambda1,
                               temperature=s.temperature, lr=s.lr, save_every=s.save_every, val_batches_per_check=2,
                               train_cases=job.train_cases, warmup=s.warmup, dice_weight=s.dice_weight,
                               extra_fingerprint=fp)
        dice = evaluate_reconstruction(ae, val_maps, job.domain_spec, device)
        seconds = st.resumed_seconds + time.perf_counter() - t0  # loading, training, evaluation
        result = AutoencoderResult(ae, dice, st.iterations_done, seconds, digest, job.variant, folder, False,
                                   st.history)
        if main:
            atomic_save_json(result.record(), folder / AE_RECORD_FILE)
        return result


def write_fold_record(result: AutoencoderResult, fold_folder: str | Path) -> Path:
    """Copy the cached autoencoder into ``fold_folder`` (``label_autoencoder.pth``) and write its
    ``label_autoencoder.json`` there; returns the json path."""
    fold_folder = Path(fold_folder)
    fold_folder.mkdir(parents=True, exist_ok=True)
    with atomic_file(fold_folder / AE_FILE) as tmp:
        shutil.copyfile(result.cache / AE_FILE, tmp)
    path = fold_folder / AE_RECORD_FILE
    atomic_save_json(result.record(), path)
    return path
