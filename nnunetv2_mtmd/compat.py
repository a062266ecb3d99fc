"""Every piece of upstream code the plugin copies or patches, in one place.

nnunetv2 and dynamic-network-architectures offer no hook for a few things the plugin needs. Where an
upstream function had to be copied (its body repeated with one change) or an upstream method is
wrapped at run time (a monkeypatch), the copy or the patch lives in this module, and :data:`UPSTREAM`
records, for every upstream object the plugin depends on this way, an :class:`UpstreamCopy`: its
dotted name, the distribution and version the plugin's code was written against, the sha256 of its
source (``inspect.getsource``) at that version, the plugin object that copies / patches / mirrors it,
and what to re-check when the upstream source changes.

tests/test_compat.py compares the hash of every installed upstream object with the recorded one: on
the recorded upstream version a mismatch fails and names the object and what to re-check; on any
other installed version the test is skipped with that message. CI installs the recorded versions
(.ci/constraints.txt), so an upgrade is a deliberate change of that file, the versions and hashes
here, and the copies.

The copies and patches:

- :func:`build_dataloaders`: ``nnUNetTrainer.get_dataloaders`` with the data-loader class as a
  parameter (nnU-Net hard-codes ``nnUNetDataLoader``); the MTMD trainer passes its domain-balanced
  loader.
- :func:`unet_decoder_forward`: ``UNetDecoder.forward`` with the output layer as a parameter (the
  multi-domain network replaces the decoder's ``seg_layers`` by per-domain heads that need the domain
  index) and the stage outputs returned (the multi-scale contrastive loss needs them).
- :func:`compute_fingerprint`: ``DatasetFingerprintExtractor.run`` without its worker pool.
- :func:`fold_split`: ``nnUNetTrainer.do_split`` for an already trained fold (the embedding analysis
  reads the training and validation cases of the fold it embeds).
- :func:`install_predictor_input_check`: wraps four ``nnUNetPredictor`` entry points with the
  multi-domain input check (the check itself is :mod:`nnunetv2_mtmd.inference.checks`).

Plugin code outside this module that re-implements upstream logic instead of copying it or relies on
what an upstream function produces (a "mirror": ``nnunetv2_mtmd.inference.model.load_trained_network``,
``nnunetv2_mtmd.inference.predictor.load_predictor``, ``nnunetv2_mtmd.training.ddp.rank_batch``,
``nnunetv2_mtmd.io.load_checkpoint_file``) is tracked here too, so that upstream
changes to what they follow are noticed the same way.

This module sits at the bottom of the package (training, inference and architectures call it) and
imports nothing of nnunetv2_mtmd at module level; the predictor wrappers import
:mod:`nnunetv2_mtmd.inference.checks` when they are installed (the one upward import, a patch
installing the checks it runs), which avoids import cycles. docs/design.md, "Upstream code".
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover - typing only
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunetv2_mtmd.inference.checks import CaseProblem

logger = logging.getLogger(__name__)

__all__ = [
    "UPSTREAM",
    "UpstreamCopy",
    "build_dataloaders",
    "compute_fingerprint",
    "entries_for",
    "fold_split",
    "install_predictor_input_check",
    "resolve_upstream",
    "upstream_source_sha256",
    "unet_decoder_forward",
]


# ========================================================================================= registry
@dataclass(frozen=True)
class UpstreamCopy:
    """One upstream object the plugin copies, patches or mirrors.

    Attributes:
        upstream: dotted name of the upstream object (module path, then attributes), e.g.
            ``nnunetv2.training.nnUNetTrainer.nnUNetTrainer.nnUNetTrainer.get_dataloaders``.
        distribution: the pip distribution that ships it (for ``importlib.metadata.version``).
        version: the distribution's version the plugin's code was written against.
        sha256: sha256 of ``inspect.getsource(upstream)`` (UTF-8) at that version.
        local: dotted name of the plugin object that copies / patches / mirrors it.
        kind: ``"copy"`` (its body is repeated here), ``"patch"`` (wrapped at run time) or
            ``"mirror"`` (re-implemented elsewhere in the plugin, or a copy relies on its behaviour).
        recheck: what to re-check (and carry into ``local``) when the upstream source changes.
    """

    upstream: str
    distribution: str
    version: str
    sha256: str
    local: str
    kind: Literal["copy", "patch", "mirror"]
    recheck: str


_NNUNET = "nnunetv2"
_DNA = "dynamic-network-architectures"
_NNUNET_VERSION = "2.8.1"
_DNA_VERSION = "0.4.4"
_TRAINER = "nnunetv2.training.nnUNetTrainer.nnUNetTrainer.nnUNetTrainer"
_PREDICTOR = "nnunetv2.inference.predict_from_raw_data.nnUNetPredictor"
_FPE = "nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor.DatasetFingerprintExtractor"
_HERE = __name__

#: Every upstream object the plugin copies, patches or mirrors (see the module docstring).
UPSTREAM: tuple[UpstreamCopy, ...] = (
    UpstreamCopy(
        f"{_TRAINER}.get_dataloaders", _NNUNET, _NNUNET_VERSION,
        "5f59e2b907cfa2d1eb1e77ab2a5b8893161e7af8567fc5669c62a4810334899e",
        f"{_HERE}.build_dataloaders", "copy",
        "the order of the steps (dataset class, deep supervision scales, rotation / dummy 2D / initial patch "
        "size / mirror axes, training and validation transforms and their keyword arguments, "
        "get_tr_and_val_datasets), the arguments of both nnUNetDataLoader calls, the augmenter choice and its "
        "arguments (get_allowed_n_proc_DA, num_cached, pin_memory, wait_time) and the first next() of both; "
        "carry every change into compat.build_dataloaders, whose only difference is the loader class "
        "(make_loader, the MTMD trainer's DomainBalancedDataLoader)",
    ),
    UpstreamCopy(
        "dynamic_network_architectures.building_blocks.unet_decoder.UNetDecoder.forward", _DNA, _DNA_VERSION,
        "ad64097d826e71c011a8355d7f00b2444ceb3a21dd79e164f4daba6437c79b73",
        f"{_HERE}.unet_decoder_forward", "copy",
        "the decoder loop (transpconvs, concatenation with skips[-(s + 2)], stages), which stages get an output "
        "with and without deep supervision, and the output order (highest resolution first); carry changes into "
        "compat.unet_decoder_forward (heads instead of seg_layers, stage outputs returned for the contrastive "
        "loss), then run tests/architectures/test_unet.py",
    ),
    UpstreamCopy(
        f"{_FPE}.run", _NNUNET, _NNUNET_VERSION,
        "02e10bff6e8d2e81fb2813d258b0c5896cf50796cdbc22b73e8fe23c6f8d8abd",
        f"{_HERE}.compute_fingerprint", "copy",
        "the aggregation of the per-case results (shapes, spacings, foreground intensity statistics per channel "
        "and their percentiles, median relative size after cropping), the fingerprint keys and the file it is "
        "saved to; carry changes into compat.compute_fingerprint (everything but the worker pool)",
    ),
    UpstreamCopy(
        f"{_FPE}.analyze_case", _NNUNET, _NNUNET_VERSION,
        "8a6251b7db882c28182c2cfae2a76cb7b4154560bc21ae077102e7c5be67b543",
        f"{_HERE}.compute_fingerprint", "mirror",
        "its arguments and the order of its result tuple (shape after crop, spacing, foreground intensities per "
        "channel, their statistics, relative size after cropping), which compat.compute_fingerprint indexes",
    ),
    *(
        UpstreamCopy(
            f"{_PREDICTOR}.{name}", _NNUNET, _NNUNET_VERSION, sha256, f"{_HERE}.install_predictor_input_check", "patch",
            f"the name and position of the argument{recheck} (compat._{check}), that the method still takes "
            "images in that form, and that it writes nothing before the wrapper's check runs; then run "
            "tests/inference/test_checks.py",
        )
        for name, sha256, check, recheck in (
            ("predict_from_files", "98743e2bebd186924699baec53f98964d4fbb8e72c214fe67fad7356852d3dc8",
             "files_check", " list_of_lists_or_source_folder (first) read by the wrapper"),
            ("predict_from_files_sequential", "1f131b675464ba45c1c749523953e8d04f90d690c4d3d188ea3da40f48780d5d",
             "files_check", " list_of_lists_or_source_folder (first) read by the wrapper"),
            ("predict_from_list_of_npy_arrays", "d273c3520a8cb08bd7df7da98f53f90da58af1a07e74839ac84f7b535987e335",
             "arrays_check", "s image_or_list_of_images (first) and truncated_ofname (fourth) read by the wrapper"),
            ("predict_single_npy_array", "3913ecda6efd1a1be5f712096a29ddafc2f84043f77f505b6f2858f2b0d0f4d0",
             "single_array_check", "s input_image (first) and output_file_truncated (fourth) read by the wrapper"),
        )
    ),
    UpstreamCopy(
        f"{_PREDICTOR}.initialize_from_trained_model_folder", _NNUNET, _NNUNET_VERSION,
        "8b601a28f71757804d28f8a4360099cc9fb6058711b465a0dfa9ddf1cec8e372",
        "nnunetv2_mtmd.inference.model.load_trained_network", "mirror",
        "how the network of a trained fold is rebuilt (checkpoint keys, trainer class lookup, number of input and "
        "output channels, build_network_architecture arguments, strict load_state_dict) and that it still builds "
        "through the checkpoint trainer's build_network_architecture, which installs the input check "
        "(install_predictor_input_check); carry changes into inference.model.load_trained_network",
    ),
    UpstreamCopy(
        "nnunetv2.inference.predict_from_raw_data.predict_entry_point", _NNUNET, _NNUNET_VERSION,
        "23e38cce8088d65bb34037b3d3af440b10acd5f4b8a1a21c5fe843bbefad2033",
        "nnunetv2_mtmd.inference.predictor.load_predictor", "mirror",
        "the nnUNetPredictor arguments nnUNetv2_predict uses (tile step size, gaussian, mirroring, "
        "perform_everything_on_device, verbosity) and its initialize_from_trained_model_folder call; carry "
        "changes into inference.predictor.load_predictor",
    ),
    UpstreamCopy(
        f"{_TRAINER}.save_checkpoint", _NNUNET, _NNUNET_VERSION,
        "de4f196c42e6bcf522641d62c8e30af2c4c094f8c541943e07bbb39b965c3307",
        "nnunetv2_mtmd.io.load_checkpoint_file", "mirror",
        "the checkpoint's keys and the types of its values: the plugin reads checkpoints with "
        "torch.load(weights_only=True) and allows only the numpy scalar / dtype types nnU-Net stores "
        "(io.NUMPY_SAFE_GLOBALS); new keys or types need the allowlist (and "
        "inference.model.load_trained_network) re-checked, then tests/reliability/test_checkpoints.py",
    ),
    UpstreamCopy(
        f"{_TRAINER}.do_split", _NNUNET, _NNUNET_VERSION,
        "69b23f1bc681f7a6dc7e8e9612bc1544399de402a0d5d01236e9793d21cad38f",
        f"{_HERE}.fold_split", "copy",
        "where the split is read from (splits_final.json in the preprocessed dataset folder), how a fold picks "
        "its 'train' / 'val' lists, what fold 'all' trains on, and the seeded random 80:20 split of a fold beyond "
        "the file (np.random.RandomState(12345 + fold), choice of int(0.8 n) of the sorted case ids without "
        "replacement, validation = the rest); carry changes into compat.fold_split (whose differences: fold 'all' "
        "has no validation cases, a missing split file is an error instead of being created, the file and its "
        "case ids are checked), then run tests/evaluation/test_embeddings.py::test_fold_split",
    ),
    UpstreamCopy(
        f"{_TRAINER}._set_batch_size_and_oversample", _NNUNET, _NNUNET_VERSION,
        "830f5205b6f05e0f9c7c7d748977c71a178cee91fca8c9e511ecde69e49d4e28",
        "nnunetv2_mtmd.training.ddp.rank_batch", "mirror",
        "how nnU-Net splits the global batch and the foreground oversampling over the DDP ranks; carry changes "
        "into training.ddp.rank_batch (which also rounds the batch to a multiple of world size x K), then run "
        "tests/reliability/test_ddp.py",
    ),
)


def entries_for(local: str) -> list[UpstreamCopy]:
    """The :data:`UPSTREAM` entries whose plugin object is ``local`` (a dotted name)."""
    return [e for e in UPSTREAM if e.local == local]


def resolve_upstream(dotted: str) -> Any:
    """The object named by ``dotted`` (longest importable module prefix, then attributes), unwrapped
    (``inspect.unwrap``: a method patched by :func:`install_predictor_input_check` resolves to
    nnU-Net's own function). Raises ImportError / AttributeError when it does not exist."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return inspect.unwrap(obj)
    raise ImportError(f"No module of {dotted!r} can be imported.")


def upstream_source_sha256(obj: Any) -> str:
    """sha256 (hex) of ``inspect.getsource(obj)`` encoded as UTF-8, as recorded in :data:`UPSTREAM`."""
    return hashlib.sha256(inspect.getsource(obj).encode("utf-8")).hexdigest()


def _copy_of(local: str) -> Callable[[Callable], Callable]:
    """Mark a function of this module as the copy / patch named in :data:`UPSTREAM` (``__upstream__``),
    so tests/test_compat.py can check that every copy here has its entries."""

    def mark(fn: Callable) -> Callable:
        fn.__upstream__ = tuple(e.upstream for e in entries_for(local))  # type: ignore[attr-defined]
        return fn

    return mark


# ================================================================= nnunetv2: the trainer's data loaders
@_copy_of(f"{_HERE}.build_dataloaders")
def build_dataloaders(trainer: nnUNetTrainer, make_loader: Callable[..., Any]) -> tuple[Any, Any]:
    """``nnUNetTrainer.get_dataloaders`` (nnunetv2 2.8.1) with the data-loader class as a parameter.

    nnU-Net builds its ``nnUNetDataLoader`` inside ``get_dataloaders`` and has no hook for another
    class; everything else (transforms, datasets, augmenter processes, the first batch of each) must
    stay exactly nnU-Net's. ``make_loader(training, *args, **kwargs)`` is called where nnU-Net calls
    ``nnUNetDataLoader(*args, **kwargs)``, with nnU-Net's arguments and ``training`` True for the
    training loader, False for the validation loader. Returns ``(train_augmenter, val_augmenter)``.
    """
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
    from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

    self = trainer
    if self.dataset_class is None:
        self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
    patch_size = self.configuration_manager.patch_size
    deep_supervision_scales = self._get_deep_supervision_scales()
    rotation_for_DA, do_dummy_2d_data_aug, initial_patch_size, mirror_axes = (
        self.configure_rotation_dummyDA_mirroring_and_inital_patch_size())
    lm = self.label_manager
    tr_transforms = self.get_training_transforms(
        patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes, do_dummy_2d_data_aug,
        use_mask_for_norm=self.configuration_manager.use_mask_for_norm, is_cascaded=self.is_cascaded,
        foreground_labels=lm.foreground_labels, regions=lm.foreground_regions if lm.has_regions else None,
        ignore_label=lm.ignore_label)
    val_transforms = self.get_validation_transforms(
        deep_supervision_scales, is_cascaded=self.is_cascaded, foreground_labels=lm.foreground_labels,
        regions=lm.foreground_regions if lm.has_regions else None, ignore_label=lm.ignore_label)
    dataset_tr, dataset_val = self.get_tr_and_val_datasets()
    common = dict(oversample_foreground_percent=self.oversample_foreground_percent, sampling_probabilities=None,
                  pad_sides=None, probabilistic_oversampling=self.probabilistic_oversampling)
    # the one change: nnUNetDataLoader(...) -> make_loader(training, ...)
    dl_tr = make_loader(True, dataset_tr, self.batch_size, initial_patch_size, self.configuration_manager.patch_size,
                        lm, transforms=tr_transforms, **common)
    dl_val = make_loader(False, dataset_val, self.batch_size, self.configuration_manager.patch_size,
                         self.configuration_manager.patch_size, lm, transforms=val_transforms, **common)
    allowed_num_processes = get_allowed_n_proc_DA()
    if allowed_num_processes == 0:
        mt_gen_train = SingleThreadedAugmenter(dl_tr, None)
        mt_gen_val = SingleThreadedAugmenter(dl_val, None)
    else:
        pin = self.device.type == "cuda"
        mt_gen_train = NonDetMultiThreadedAugmenter(
            data_loader=dl_tr, transform=None, num_processes=allowed_num_processes,
            num_cached=max(6, allowed_num_processes // 2), seeds=None, pin_memory=pin, wait_time=0.002)
        mt_gen_val = NonDetMultiThreadedAugmenter(
            data_loader=dl_val, transform=None, num_processes=max(1, allowed_num_processes // 2),
            num_cached=max(3, allowed_num_processes // 4), seeds=None, pin_memory=pin, wait_time=0.002)
    # nnU-Net starts both pipelines here (the first batch), so worker failures surface before training
    _ = next(mt_gen_train)
    _ = next(mt_gen_val)
    return mt_gen_train, mt_gen_val


# ============================================================ dynamic-network-architectures: the decoder
@_copy_of(f"{_HERE}.unet_decoder_forward")
def unet_decoder_forward(
    decoder: torch.nn.Module,
    skips: Sequence[torch.Tensor],
    head: Callable[[int, torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor | list[torch.Tensor], list[torch.Tensor]]:
    """``UNetDecoder.forward`` (dynamic-network-architectures 0.4.4) with the output layer as a parameter.

    The multi-domain network replaces the decoder's ``seg_layers`` by per-domain heads, which need the
    batch's domain indices, and the multi-scale contrastive loss needs every decoder stage's output;
    ``UNetDecoder.forward`` offers neither. ``head(s, x)`` computes stage ``s``'s output where
    upstream calls ``seg_layers[s](x)`` (``seg_layers[-1]`` for the last stage without deep
    supervision, the same layer).

    Args:
        decoder: a dynamic-network-architectures ``UNetDecoder`` (``transpconvs``, ``stages``,
            ``deep_supervision``).
        skips: the encoder's outputs in the order computed (bottleneck last).
        head: ``(stage index, stage output) -> logits``.

    Returns:
        ``(outputs, stage_outputs)``: the logits as upstream returns them (a list, highest resolution
        first, with deep supervision; the highest-resolution tensor without), and the output of every
        decoder stage, lowest resolution first.
    """
    lres_input = skips[-1]
    seg_outputs: list[torch.Tensor] = []
    stage_outputs: list[torch.Tensor] = []
    n = len(decoder.stages)
    for s in range(n):
        x = decoder.transpconvs[s](lres_input)
        x = torch.cat((x, skips[-(s + 2)]), 1)
        x = decoder.stages[s](x)
        if decoder.deep_supervision or s == n - 1:
            seg_outputs.append(head(s, x))
        stage_outputs.append(x)  # added: the contrastive loss embeds every stage
        lres_input = x
    # invert seg outputs so that the largest segmentation prediction is returned first
    seg_outputs = seg_outputs[::-1]
    return (seg_outputs if decoder.deep_supervision else seg_outputs[0]), stage_outputs


# ================================================================== nnunetv2: fingerprint extraction
@_copy_of(f"{_HERE}.compute_fingerprint")
def compute_fingerprint(dataset_name: str) -> dict[str, Any]:
    """nnU-Net's dataset fingerprint, computed in this process (the benchmark's preparation).

    Mirrors ``DatasetFingerprintExtractor.run`` (nnunetv2 2.8.1) without its worker pool.

    Same per-case analysis (``DatasetFingerprintExtractor.analyze_case``) and aggregation as
    ``nnUNetv2_extract_fingerprint``; only the spawn worker pool is skipped (its start-up, which
    re-imports nnU-Net in every worker, costs 10-40 s on a busy 2-core machine, more than the work)."""
    from batchgenerators.utilities.file_and_folder_operations import join, maybe_mkdir_p, save_json
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import (
        DatasetFingerprintExtractor,
    )
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.paths import nnUNet_preprocessed

    fpe = DatasetFingerprintExtractor(dataset_name, 1)
    first = next(iter(fpe.dataset.values()))["images"][0]
    rw = determine_reader_writer_from_dataset_json(fpe.dataset_json, first)
    n_samples = int(fpe.num_foreground_voxels_for_intensitystats // len(fpe.dataset))
    results = [DatasetFingerprintExtractor.analyze_case(v["images"], v["label"], rw, n_samples)
               for v in fpe.dataset.values()]
    n_ch = len(fpe.dataset_json["channel_names"])
    fg = [np.concatenate([r[2][i] for r in results]) for i in range(n_ch)]
    stats = {}
    for i in range(n_ch):
        p005, med, p995 = np.percentile(fg[i], (0.5, 50.0, 99.5))
        stats[i] = {"mean": float(np.mean(fg[i])), "median": float(med), "std": float(np.std(fg[i])),
                    "min": float(np.min(fg[i])), "max": float(np.max(fg[i])),
                    "percentile_99_5": float(p995), "percentile_00_5": float(p005)}
    fingerprint = {"spacings": [r[1] for r in results], "shapes_after_crop": [r[0] for r in results],
                   "foreground_intensity_properties_per_channel": stats,
                   "median_relative_size_after_cropping": np.median([r[4] for r in results], 0)}
    out = join(nnUNet_preprocessed, dataset_name)
    maybe_mkdir_p(out)
    save_json(fingerprint, join(out, "dataset_fingerprint.json"))
    return fingerprint


# =========================================================== nnunetv2: the trainer's training/validation split
@_copy_of(f"{_HERE}.fold_split")
def fold_split(
    preprocessed_base: Path, fold: int | str, identifiers: Sequence[str]
) -> tuple[list[str], list[str]]:
    """Training and validation case ids of a fold, as nnU-Net's ``do_split`` chooses them.

    ``nnUNetTrainer.do_split`` (nnunetv2 2.8.1) for a model that was already trained, on the case ids
    given (nnU-Net reads them from the preprocessed dataset). Fold ``all``: every case is a training
    case, no validation case (nnU-Net validates on the training cases). Otherwise
    ``splits_final.json`` (written when the model was trained) is read; a missing file is an error
    (nnU-Net would create a new split), and so are a malformed file and a fold naming cases that are
    not in ``identifiers``. A fold beyond the file gets nnU-Net's seeded random 80:20 split (seed
    ``12345 + fold``). Both lists are returned sorted."""
    from nnunetv2_mtmd.errors import InputDataError
    from nnunetv2_mtmd.io import load_json

    ids = sorted(identifiers)
    if fold == "all":
        return ids, []
    splits_file = Path(preprocessed_base) / "splits_final.json"
    if not splits_file.is_file():
        raise InputDataError(
            f"{splits_file} does not exist, so the training/validation split of fold {fold} is unknown. It is "
            "written by nnUNetv2_train (or nnUNetv2_mtmd_splits); were the preprocessed data re-created "
            "after training?"
        )
    splits = load_json(splits_file)
    if not isinstance(splits, list) or not all(isinstance(s, dict) and "train" in s and "val" in s for s in splits):
        raise InputDataError(f"{splits_file}: expected a list of {{'train': [...], 'val': [...]}} objects.")
    if int(fold) < len(splits):
        tr, val = list(splits[int(fold)]["train"]), list(splits[int(fold)]["val"])
    else:
        logger.warning(
            "%s has %d splits; fold %s uses nnU-Net's random (seeded) 80:20 split, as in training.",
            splits_file, len(splits), fold,
        )
        rnd = np.random.RandomState(seed=12345 + int(fold))
        keys = np.sort(ids)
        idx_tr = rnd.choice(len(keys), int(len(keys) * 0.8), replace=False)
        tr = [str(keys[i]) for i in idx_tr]
        val = [str(keys[i]) for i in range(len(keys)) if i not in idx_tr]
    missing = sorted(set(tr + val) - set(ids))
    if missing:
        raise InputDataError(
            f"Fold {fold} of {splits_file} names cases that are not in the preprocessed data: "
            f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}."
        )
    return sorted(tr), sorted(val)


# ============================================================= nnunetv2: the predictor's input check
# nnU-Net's predictor has no hook between "input files / arrays given" and "output folder written", so
# the multi-domain input check (inference/checks.py) is run by wrappers around its four entry points.
# The wrappers read the input from the arguments by nnU-Net's parameter names and positions (recorded
# in UPSTREAM, re-checked when nnU-Net changes) and call the check functions through the checks
# module at call time (so a test can replace them).
_PATCH_MARK = "_mtmd_input_check"


def _reader_of(predictor: Any) -> Callable[[Path], np.ndarray] | None:
    """The predictor's image reader (``plans_manager.image_reader_writer_class``) as ``path -> array``."""
    pm = getattr(predictor, "plans_manager", None)
    if pm is None:
        return None
    rw = pm.image_reader_writer_class()
    return lambda p: rw.read_images((str(p),))[0]


def _run_checked(predictor: Any, check: Callable[[], list[CaseProblem]]) -> None:
    """Run ``check`` and raise its problems; fail safe on anything but the plugin's own errors."""
    from nnunetv2_mtmd.errors import MTMDError
    from nnunetv2_mtmd.inference import checks

    try:
        problems = check()
    except MTMDError:
        raise
    except Exception as e:  # a bug or an API change in the checker must not block prediction
        logger.warning("nnunetv2-mtmd: the input check was skipped (%s: %s); nnU-Net predicts unchecked input.",
                       type(e).__name__, e)
        return
    checks.raise_for_problems(problems)


def _files_check(self: Any, args: tuple, kwargs: dict) -> list[CaseProblem]:
    from nnunetv2_mtmd.inference import checks

    source = kwargs.get("list_of_lists_or_source_folder", args[0] if args else None)
    return checks.check_prediction_inputs(source, self.dataset_json, _reader_of(self))


def _arrays_check(self: Any, args: tuple, kwargs: dict) -> list[CaseProblem]:
    from nnunetv2_mtmd.inference import checks

    images = kwargs.get("image_or_list_of_images", args[0] if args else None)
    names = kwargs.get("truncated_ofname", args[3] if len(args) > 3 else None)
    images = [images] if isinstance(images, np.ndarray) else list(images)
    if isinstance(names, str):
        names = [names]
    names = list(names) if isinstance(names, (list, tuple)) else [f"#{i}" for i in range(len(images))]
    return checks.check_prediction_arrays(images, [Path(str(n)).name for n in names], self.dataset_json)


def _single_array_check(self: Any, args: tuple, kwargs: dict) -> list[CaseProblem]:
    from nnunetv2_mtmd.inference import checks

    image = kwargs.get("input_image", args[0] if args else None)
    name = kwargs.get("output_file_truncated", args[3] if len(args) > 3 else None)
    return checks.check_prediction_arrays([image], [Path(str(name)).name if name else "#0"], self.dataset_json)


_CHECKS: dict[str, Callable[[Any, tuple, dict], list[CaseProblem]]] = {
    "predict_from_files": _files_check,
    "predict_from_files_sequential": _files_check,
    "predict_from_list_of_npy_arrays": _arrays_check,
    "predict_single_npy_array": _single_array_check,
}


def _wrap(method: Callable, check: Callable[[Any, tuple, dict], list[CaseProblem]]) -> Callable:
    """``method`` preceded by ``check`` for multi-domain networks (``__wrapped__`` is nnU-Net's method)."""

    from nnunetv2_mtmd.inference import checks

    @functools.wraps(method)
    def checked(self, *args, **kwargs):
        # only multi-domain networks are checked: stock nnU-Net models predict exactly as before
        if checks.predictor_domain_spec(self) is not None:
            _run_checked(self, lambda: check(self, args, kwargs))
        return method(self, *args, **kwargs)

    setattr(checked, _PATCH_MARK, True)
    return checked


@_copy_of(f"{_HERE}.install_predictor_input_check")
def install_predictor_input_check() -> bool:
    """Wrap nnU-Net's predictor entry points with the multi-domain input check (idempotent).

    Patches ``nnUNetPredictor.predict_from_files``, ``predict_from_files_sequential``,
    ``predict_from_list_of_npy_arrays`` and ``predict_single_npy_array`` (nnunetv2 2.8.1). The
    wrappers check only predictors whose network is a multi-domain U-Net and otherwise call nnU-Net's
    method unchanged. Returns True if the check is installed. Never raises: on failure a warning is
    logged and nnU-Net runs unchanged (the network still refuses codes outside ``1..K``)."""
    try:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    except Exception as e:  # pragma: no cover - nnU-Net without its predictor
        logger.warning("nnunetv2-mtmd: input check not installed (%s).", e)
        return False
    ok = True
    for name, check in _CHECKS.items():
        method = getattr(nnUNetPredictor, name, None)
        if method is None:
            logger.warning("nnunetv2-mtmd: nnUNetPredictor.%s not found; its input is not checked.", name)
            ok = False
            continue
        if not getattr(method, _PATCH_MARK, False):
            setattr(nnUNetPredictor, name, _wrap(method, check))
    return ok
