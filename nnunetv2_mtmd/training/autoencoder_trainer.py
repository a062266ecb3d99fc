"""The MJAP trainers' side of the label autoencoder: build it in ``initialize``, train or reuse it in
``on_train_start`` (Boutillon et al. 2022, section 2.3: trained first, then frozen).

The trainer's class attributes choose the autoencoder (``ae_variant``: ``"multi_domain"`` for the
DSL schemes, ``"shared"`` for Shared+MJAP; ``ae_features``, ``ae_code_channels``) and its training
(``ae_iterations``, ``ae_batch_size``, ``ae_lr``, ``ae_lambda_msc``, ``ae_temperature``,
``ae_save_every``); anything a trainer does not set keeps the :class:`AutoencoderSettings` default.
The autoencoder itself comes from the fold's cache (:func:`~nnunetv2_mtmd.training.autoencoder_cache.train_or_load`):
every MJAP scheme of a fold with the same settings and augmentation trains it once.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from torch import nn

from nnunetv2_mtmd.architectures.label_autoencoder import LabelAutoencoder, freeze
from nnunetv2_mtmd.training.autoencoder_cache import AutoencoderResult, train_or_load, write_fold_record
from nnunetv2_mtmd.training.autoencoder_job import AutoencoderSettings, build_autoencoder, job_for_trainer

__all__ = ["TRAINER_ATTRIBUTES", "build_for_trainer", "run_for_trainer", "settings_for_trainer"]

#: Trainer class attribute -> :class:`AutoencoderSettings` field.
TRAINER_ATTRIBUTES = {"ae_features": "features", "ae_code_channels": "code_channels", "ae_iterations": "iterations",
                      "ae_batch_size": "batch_size", "ae_lr": "lr", "ae_lambda_msc": "lambda1",
                      "ae_temperature": "temperature", "ae_save_every": "save_every"}


def settings_for_trainer(trainer: Any) -> AutoencoderSettings:
    """The trainer's ``ae_*`` attributes as settings (missing ones: the defaults)."""
    known = {f.name for f in fields(AutoencoderSettings)}
    values = {field: getattr(trainer, attr) for attr, field in TRAINER_ATTRIBUTES.items()
              if hasattr(trainer, attr) and field in known}
    if "features" in values:
        values["features"] = tuple(int(f) for f in values["features"])
    return AutoencoderSettings(**values).validate()


def build_for_trainer(trainer: Any) -> LabelAutoencoder:
    """The trainer's (untrained) autoencoder, on its device; the same architecture the cache trains."""
    patch = tuple(trainer.configuration_manager.patch_size)
    return build_autoencoder(trainer.domain_spec.domain_label_ids, len(patch),
                             getattr(trainer, "ae_variant", "multi_domain"), settings_for_trainer(trainer),
                             patch).to(trainer.device)


def run_for_trainer(trainer: Any, ae: nn.Module) -> AutoencoderResult:
    """Train (or load from the fold's cache) the trainer's autoencoder, copy it into ``ae`` (the module
    the MJAP loss holds) and freeze it; rank 0 writes ``label_autoencoder.pth`` and
    ``label_autoencoder.json`` into the fold folder. Logs the reconstruction Dice per structure."""
    log = trainer.print_to_log_file
    job = job_for_trainer(trainer, getattr(trainer, "ae_variant", "multi_domain"), settings_for_trainer(trainer))
    log(f"MJAP phase 1: label autoencoder ({job.variant}), {job.settings.iterations} iterations of batch "
        f"{job.settings.batch_size} (lambda1 = {job.settings.lambda1})")
    result = train_or_load(job, trainer.device, log)
    ae.load_state_dict(result.autoencoder.state_dict())
    freeze(ae)
    if getattr(trainer, "local_rank", 0) == 0:
        write_fold_record(result, trainer.output_folder)
    per = "; ".join(f"{dom}: " + ", ".join(f"{s} {v:.3f}" for s, v in d.items())
                    for dom, d in result.reconstruction_dice.items())
    log(f"MJAP autoencoder {'reused from' if result.reused else 'trained in'} {result.cache}: reconstruction Dice "
        f"of the validation cases per structure: {per}")
    log(f"MJAP autoencoder frozen; validation reconstruction Dice {result.mean_dice:.4f}")
    return result
