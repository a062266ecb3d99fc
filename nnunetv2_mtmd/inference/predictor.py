"""nnU-Net's predictor for a trained model folder, built as ``nnUNetv2_predict`` builds it.

One entry for every in-process prediction of the plugin (the benchmark, the demo, tests):
:func:`load_predictor` returns nnU-Net's own ``nnUNetPredictor``, initialised from a model folder
(``nnUNet_results/DatasetXXX/<trainer>__<plans>__<configuration>``) and folds with the arguments
``nnUNetv2_predict`` passes (``predict_entry_point``, nnunetv2 2.8.1: tile step 0.5, gaussian
weighting, mirroring unless TTA is disabled, everything on the device for CUDA). Prediction then
runs through nnU-Net's methods (``predict_from_files_sequential`` etc.), with the multi-domain input
check installed (:func:`nnunetv2_mtmd.compat.install_predictor_input_check`), exactly as in
``nnUNetv2_predict``. How this follows nnU-Net's entry point is tracked in
:data:`nnunetv2_mtmd.compat.UPSTREAM`.

What ``nnUNetv2_predict`` does besides and this function does not: it sets torch's thread counts
for the process (all cores on CPU, one on CUDA); a library call must not change them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from nnunetv2_mtmd.compat import install_predictor_input_check
from nnunetv2_mtmd.inference.model import model_location
from nnunetv2_mtmd.io import stdout_to

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

__all__ = ["load_predictor"]


def load_predictor(
    model_folder: str | Path,
    device: str | torch.device = "cuda",
    disable_tta: bool = False,
    log_path: Path | None = None,
    *,
    folds: Sequence[int | str] | None = (0,),
    checkpoint_name: str = "checkpoint_final.pth",
    step_size: float = 0.5,
    perform_everything_on_device: bool = True,
    verbose: bool = False,
    allow_tqdm: bool = False,
) -> nnUNetPredictor:
    """nnU-Net's ``nnUNetPredictor`` for ``folds`` of ``model_folder``, as ``nnUNetv2_predict`` builds it.

    Args:
        model_folder: ``.../<trainer>__<plans>__<configuration>`` (plans.json, dataset.json, ``fold_*``).
        device: ``"cuda"``, ``"cpu"``, ``"mps"`` or a ``torch.device`` (``nnUNetv2_predict -device``).
        disable_tta: no mirroring at test time (``--disable_tta``).
        log_path: if given, nnU-Net's prints while initialising go to this file (appended).
        folds: folds to ensemble (``-f``); ``None``: every ``fold_*`` holding ``checkpoint_name``
            (nnU-Net's auto-detection). ``nnUNetv2_predict`` defaults to folds 0-4; the default here is
            fold 0, what the plugin's apps train.
        checkpoint_name: ``-chk``.
        step_size: ``-step_size``.
        perform_everything_on_device: ``not --not_on_device``; only effective on CUDA (nnU-Net turns
            it off elsewhere; it is passed as off there, so nnU-Net does not print its warning).
        verbose: ``--verbose`` (also nnU-Net's preprocessing verbosity).
        allow_tqdm: progress bars (``nnUNetv2_predict`` shows them unless ``--disable_progress_bar``).

    Raises :class:`~nnunetv2_mtmd.inference.model.ModelFolderError` naming a missing fold,
    checkpoint, plans.json or dataset.json before nnU-Net reads anything.
    """
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    dev = device if isinstance(device, torch.device) else torch.device(device)
    if folds is not None:
        if isinstance(folds, (str, int)):  # nnU-Net accepts a single fold too
            folds = (folds,)
        for f in folds:
            model_location(model_folder, f, checkpoint_name)
        folds = tuple(int(f) if f != "all" else f for f in folds)
    # building the network through the checkpoint's trainer installs the check too; installing it here
    # makes it independent of that (and of the trainer class)
    install_predictor_input_check()
    with stdout_to(log_path):
        predictor = nnUNetPredictor(
            tile_step_size=step_size, use_gaussian=True, use_mirroring=not disable_tta,
            perform_everything_on_device=perform_everything_on_device and dev.type == "cuda", device=dev,
            verbose=verbose, verbose_preprocessing=verbose, allow_tqdm=allow_tqdm,
        )
        predictor.initialize_from_trained_model_folder(str(model_folder), folds, checkpoint_name)
    return predictor
