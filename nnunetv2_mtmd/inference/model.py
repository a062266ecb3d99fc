"""A trained multi-domain model from nnU-Net's results folder: where it is and its network.

``nnUNet_results/DatasetXXX_Name/<trainer>__<plans>__<configuration>/`` holds ``plans.json``,
``dataset.json`` and one ``fold_<f>/<checkpoint>`` per trained fold (nnU-Net's layout).

- :func:`locate_model_folder` finds a fold's checkpoint from dataset / trainer / plans /
  configuration / fold (the names the commands take), :func:`model_location` checks a given model
  folder; both raise :class:`ModelFolderError` naming what is missing and what exists instead.
- :func:`load_trained_network` rebuilds the network of one fold as nnU-Net's predictor does
  (``nnUNetPredictor.initialize_from_trained_model_folder``, nnunetv2 2.8.1: plans.json +
  dataset.json, the trainer class named in the checkpoint, ``build_network_architecture`` without
  deep supervision, strict ``load_state_dict``), but loads the checkpoint with
  ``weights_only=True`` and reports problems as :class:`ModelFolderError`. It is a re-implementation
  of nnU-Net's code, tracked in :data:`nnunetv2_mtmd.compat.UPSTREAM`.

For predicting with nnU-Net's own predictor, see :mod:`nnunetv2_mtmd.inference.predictor`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnunetv2_mtmd.errors import InputDataError, did_you_mean
from nnunetv2_mtmd.io import env_folder, find_dataset, load_json

__all__ = [
    "ModelFolderError",
    "ModelLocation",
    "load_trained_network",
    "locate_model_folder",
    "model_location",
]


class ModelFolderError(InputDataError):
    """The trained model (dataset, trainer, plans, configuration, fold or checkpoint) cannot be found."""


@dataclass
class ModelLocation:
    """A trained model fold: ``training_output_dir/fold_<fold>/<checkpoint_name>``."""

    dataset_name: str
    training_output_dir: Path
    fold: int | str
    checkpoint: Path


def _fold_value(fold: int | str) -> int | str:
    if isinstance(fold, str) and fold != "all":
        if not fold.isdigit():
            raise ModelFolderError(f"Fold must be an integer >= 0 or 'all', found {fold!r}.")
        return int(fold)
    if isinstance(fold, int) and fold < 0:
        raise ModelFolderError(f"Fold must be an integer >= 0 or 'all', found {fold!r}.")
    return fold


def locate_model_folder(
    dataset: str | int,
    trainer: str,
    plans: str,
    configuration: str,
    fold: int | str,
    checkpoint_name: str = "checkpoint_final.pth",
    results_root: Path | None = None,
) -> ModelLocation:
    """Find ``<results>/DatasetXXX_*/<trainer>__<plans>__<configuration>/fold_<fold>/<checkpoint_name>``.

    ``results_root`` defaults to ``$nnUNet_results``. Raises :class:`ModelFolderError` naming what
    was looked for and what exists at the first level that is missing (dataset, trainer folder,
    fold, checkpoint, plans.json / dataset.json)."""
    root = Path(results_root) if results_root is not None else env_folder("nnUNet_results")
    try:
        ds_folder = find_dataset(dataset, root)
    except InputDataError as e:
        raise ModelFolderError(f"No trained models of dataset '{dataset}': {e}") from e
    name = f"{trainer}__{plans}__{configuration}"
    tr_folder = ds_folder / name
    if not tr_folder.is_dir():
        existing = sorted(p.name for p in ds_folder.iterdir() if p.is_dir() and "__" in p.name)
        raise ModelFolderError(
            f"No model folder {tr_folder} (trainer '{trainer}', plans '{plans}', configuration "
            f"'{configuration}'). Model folders of {ds_folder.name}: {', '.join(existing) or 'none'}."
            + (did_you_mean(name, existing) if existing else " Train one with nnUNetv2_train first.")
        )
    return model_location(tr_folder, fold, checkpoint_name)


def model_location(model_folder: str | Path, fold: int | str,
                   checkpoint_name: str = "checkpoint_final.pth") -> ModelLocation:
    """Check that ``model_folder`` (``.../<trainer>__<plans>__<configuration>``) holds ``fold`` with
    ``checkpoint_name``, plans.json and dataset.json; its location. Raises :class:`ModelFolderError`
    naming the missing piece and the folds / checkpoints that exist."""
    tr_folder = Path(model_folder)
    if not tr_folder.is_dir():
        raise ModelFolderError(f"Model folder {tr_folder} does not exist.")
    fold = _fold_value(fold)
    fold_folder = tr_folder / f"fold_{fold}"
    if not fold_folder.is_dir():
        existing = sorted(p.name for p in tr_folder.iterdir() if p.is_dir() and p.name.startswith("fold_"))
        raise ModelFolderError(
            f"No fold folder {fold_folder}. Existing folds: {', '.join(existing) or 'none'}. Pass one of them "
            "with -f (without 'fold_')."
        )
    chk = fold_folder / checkpoint_name
    if not chk.is_file():
        existing = sorted(p.name for p in fold_folder.iterdir() if p.suffix == ".pth")
        raise ModelFolderError(
            f"No checkpoint {chk}. Checkpoints in {fold_folder}: {', '.join(existing) or 'none'}"
            + (" (training unfinished? use -chk checkpoint_best.pth or checkpoint_latest.pth)." if existing else ".")
        )
    for f in ("plans.json", "dataset.json"):
        if not (tr_folder / f).is_file():
            raise ModelFolderError(f"{tr_folder / f} is missing; the model folder is incomplete (nnU-Net writes it).")
    return ModelLocation(tr_folder.parent.name, tr_folder, fold, chk)


def load_trained_network(loc: ModelLocation, device: str = "cpu") -> tuple[Any, Any, Any, dict[str, Any]]:
    """Rebuild the network of a trained fold the way ``nnUNetPredictor.initialize_from_trained_model_folder``
    (nnunetv2 2.8.1) does (trainer class from the checkpoint, ``build_network_architecture`` without deep
    supervision, strict ``load_state_dict``), in eval mode on ``device`` (``"cpu"`` or ``"cuda"``).

    Differences from nnU-Net, on purpose: the checkpoint is read with ``weights_only=True``, every
    problem is a :class:`ModelFolderError` naming the file, and a network that is not a multi-domain
    U-Net of this plugin is refused (callers need its per-stage features).

    Returns:
        ``(network, plans_manager, configuration_manager, dataset_json)``.
    """
    import torch
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    # The one import of training by inference: the safe checkpoint reader (weights_only=True + numpy
    # allowlist) is shared with training's resume; it belongs below both rooms (e.g. nnunetv2_mtmd.io)
    # and is imported lazily until it moves there.
    from nnunetv2_mtmd.io import load_checkpoint_file

    if device == "cuda" and not torch.cuda.is_available():
        raise InputDataError("-device cuda was requested but torch sees no CUDA device. Use -device cpu.")
    dataset_json = load_json(loc.training_output_dir / "dataset.json")
    plans_manager = PlansManager(load_json(loc.training_output_dir / "plans.json"))
    try:
        checkpoint = load_checkpoint_file(loc.checkpoint, map_location=torch.device("cpu"))
    except InputDataError as e:
        raise ModelFolderError(str(e)) from e
    for key in ("trainer_name", "init_args", "network_weights"):
        if key not in checkpoint:
            raise ModelFolderError(f"Checkpoint {loc.checkpoint} has no '{key}': not an nnU-Net v2 checkpoint.")
    trainer_name = checkpoint["trainer_name"]
    configuration = checkpoint["init_args"]["configuration"]
    try:
        configuration_manager = plans_manager.get_configuration(configuration)
    except Exception as e:  # noqa: BLE001
        raise ModelFolderError(
            f"Configuration '{configuration}' of checkpoint {loc.checkpoint} is not in its plans.json: {e}"
        ) from e
    try:
        trainer_class = recursive_find_trainer_class_by_name(trainer_name)
    except RuntimeError as e:
        raise ModelFolderError(
            f"Trainer class '{trainer_name}' (from {loc.checkpoint}) cannot be found: {e}"
        ) from e
    num_in = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    num_out = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    network = trainer_class.build_network_architecture(
        plans_manager, configuration_manager, num_in, num_out, enable_deep_supervision=False
    )
    network.load_state_dict(checkpoint["network_weights"])
    if not hasattr(network, "collect_features"):
        raise ModelFolderError(
            f"The network of {loc.training_output_dir} ({type(network).__name__}) is not a multi-domain U-Net of "
            "nnunetv2_mtmd (no per-stage features). Train the model with an MTMD trainer."
        )
    network.to(torch.device(device))
    network.eval()
    return network, plans_manager, configuration_manager, dataset_json
