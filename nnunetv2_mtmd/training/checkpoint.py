"""Safe, atomic checkpoint I/O for the MTMD trainers.

* Everything the plugin reads back is loaded with ``torch.load(..., weights_only=True)``: the label
  autoencoder files (:mod:`nnunetv2_mtmd.training.autoencoder_phase`) and nnU-Net checkpoints of
  MTMD trainers (:func:`load_checkpoint_file`, in :mod:`nnunetv2_mtmd.io` so that inference and
  evaluation can read checkpoints without importing training). nnU-Net's checkpoints hold numpy scalars in their
  logging lists, so a small allowlist of numpy scalar and dtype types is passed to
  ``torch.serialization.safe_globals``; nothing else can be unpickled.
* Writes are atomic (:func:`save_atomic`: temporary file in the same folder, then ``os.replace``),
  so a run killed while saving leaves the previous checkpoint intact instead of a truncated file.
* The label autoencoder travels in nnU-Net's checkpoint under :data:`AE_KEY` as plain data
  (configuration, state dict, trained flag); :func:`restore_autoencoder` validates it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from nnunetv2_mtmd.errors import InputDataError
from nnunetv2_mtmd.io import NUMPY_SAFE_GLOBALS, atomic_file, load_checkpoint_file  # noqa: F401  (re-exported)

__all__ = ["AE_KEY", "NUMPY_SAFE_GLOBALS", "autoencoder_entry", "load_checkpoint_file", "restore_autoencoder",
           "save_atomic"]

#: Key of the label autoencoder in nnU-Net's checkpoint dict.
AE_KEY = "mtmd_autoencoder"


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file next to ``path``, then rename it over ``path``."""
    with atomic_file(path) as tmp:
        torch.save(obj, tmp)


def autoencoder_entry(ae: nn.Module, trained: bool) -> dict[str, Any]:
    """The checkpoint entry of a label autoencoder: plain data only (loadable with weights_only=True)."""
    return {"config": ae.get_config(), "state_dict": ae.state_dict(), "trained": bool(trained)}


def restore_autoencoder(ae: nn.Module, entry: Any, where: str) -> bool:
    """Load a checkpoint entry made by :func:`autoencoder_entry` into ``ae``; return its trained flag.

    A malformed entry or one made for another autoencoder configuration raises
    :class:`InputDataError` naming ``where`` (the checkpoint) and the key."""
    if not isinstance(entry, dict):
        raise InputDataError(f"{where}['{AE_KEY}']: expected a dict, found {type(entry).__name__}.")
    for key, typ in (("config", dict), ("state_dict", dict), ("trained", bool)):
        if not isinstance(entry.get(key), typ):
            raise InputDataError(
                f"{where}['{AE_KEY}']['{key}']: expected {typ.__name__}, found {type(entry.get(key)).__name__}."
            )
    if entry["config"] != ae.get_config():
        diff = sorted(k for k in set(entry["config"]) | set(ae.get_config())
                      if entry["config"].get(k) != ae.get_config().get(k))
        raise InputDataError(
            f"{where}['{AE_KEY}']['config'] does not match this trainer's label autoencoder (differs in "
            f"{', '.join(diff)}). Continue with the trainer that wrote the checkpoint."
        )
    ae.load_state_dict(entry["state_dict"])
    return entry["trained"]
