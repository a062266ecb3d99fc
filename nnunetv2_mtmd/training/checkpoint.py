"""Safe, atomic checkpoint I/O for the MTMD trainers.

* Everything the plugin reads back is loaded with ``torch.load(..., weights_only=True)``: the label
  autoencoder files (:mod:`nnunetv2_mtmd.training.autoencoder_phase`) and nnU-Net checkpoints of
  MTMD trainers (:func:`load_checkpoint_file`). nnU-Net's checkpoints hold numpy scalars in their
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

import numpy as np
import torch
from torch import nn

from nnunetv2_mtmd.errors import InputDataError
from nnunetv2_mtmd.io import atomic_file

__all__ = ["AE_KEY", "NUMPY_SAFE_GLOBALS", "autoencoder_entry", "load_checkpoint_file", "restore_autoencoder",
           "save_atomic"]

#: Key of the label autoencoder in nnU-Net's checkpoint dict.
AE_KEY = "mtmd_autoencoder"


def _numpy_safe_globals() -> list[Any]:
    core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    scalar = core.multiarray.scalar
    dtypes = [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32,
                                           np.int64, np.uint8, np.bool_)]
    return [scalar, np.dtype, *dtypes]


#: numpy types nnU-Net puts into its checkpoints (scalars in the logging lists and ``_best_ema``).
NUMPY_SAFE_GLOBALS = _numpy_safe_globals()


def load_checkpoint_file(path: str | Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """Load an nnU-Net checkpoint with ``weights_only=True`` (plus the numpy allowlist).

    Raises :class:`InputDataError` naming the file if it is unreadable or holds other objects."""
    try:
        with torch.serialization.safe_globals(NUMPY_SAFE_GLOBALS):
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()
        detail = next((line for line in first if "Unsupported global" in line), first[0] if first else "")
        raise InputDataError(
            f"Cannot load checkpoint {path} safely (torch.load weights_only=True): {type(e).__name__}: "
            f"{detail.strip()}. The file is truncated, not an nnU-Net checkpoint, or holds objects other than "
            "tensors, numbers, strings and containers."
        ) from e
    if not isinstance(ckpt, dict):
        raise InputDataError(f"{path} is not an nnU-Net checkpoint (found {type(ckpt).__name__}, expected a dict).")
    return ckpt


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
