"""The compared trainers, built and initialised in this process from plans + dataset.json."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from nnunetv2_mtmd.apps.benchmark.environment import quiet
from nnunetv2_mtmd.apps.benchmark.settings import CONFIGURATION, SCHEME_TRAINERS, STOCK


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
    with quiet(log_path):
        tr = cls(p, CONFIGURATION, 0, copy.deepcopy(dataset_json), torch.device(device))
        tr.initialize()
        tr.network.train()
        if getattr(tr, "autoencoder", None) is not None:
            tr.autoencoder_trained = True
    return tr
