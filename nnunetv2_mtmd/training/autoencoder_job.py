"""One MJAP label-autoencoder job: everything a trained autoencoder depends on, in one object.

An :class:`AutoencoderJob` names the data (preprocessed folder, training and validation cases,
domains, patch size, spacing), the augmentation, the architecture variant and the settings
(:class:`AutoencoderSettings`); its :meth:`~AutoencoderJob.fingerprint` is the key of the cache
(:mod:`nnunetv2_mtmd.training.autoencoder_cache`), so every MJAP scheme of a fold that asks for the
same job gets the same autoencoder. Jobs are built from a trainer (:func:`job_for_trainer`, what
``nnUNetTrainerMTMD.on_train_start`` does) or from the plans alone (:func:`job_from_plans`, what
``nnUNetv2_mtmd_autoencoder`` does); both give the same job for the same fold, plans and
augmentation.
"""

from __future__ import annotations

import ast
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from nnunetv2_mtmd.architectures.label_autoencoder import LabelAutoencoder
from nnunetv2_mtmd.domains import DomainSpec
from nnunetv2_mtmd.errors import InputDataError
from nnunetv2_mtmd.io import env_folder, find_dataset, load_json
from nnunetv2_mtmd.training.autoencoder_data import SpatialAugmentation, rotation_range

__all__ = ["VARIANTS", "AutoencoderJob", "AutoencoderSettings", "build_autoencoder", "code_version", "job_for_trainer",
           "job_from_plans"]

#: Architecture variants: DSBN and per-domain input/output layers (the DSL schemes), or every
#: parameter shared (the Shared+MJAP scheme).
VARIANTS = ("multi_domain", "shared")

#: Source files whose code decides what a trained autoencoder is (their docstrings and comments do not).
_CODE_FILES = ("architectures/label_autoencoder.py", "architectures/dsbn.py", "architectures/heads.py",
               "losses/contrastive.py", "training/autoencoder_data.py", "training/autoencoder_loss.py",
               "training/autoencoder_phase.py")


@dataclass(frozen=True)
class AutoencoderSettings:
    """Architecture width and training settings of the label autoencoder (defaults: docs/method.md,
    "Label autoencoder").

    ``features``: channels per stage (5 stages = 4 max-poolings); ``code_channels``: channels of the
    1x1-reduced code (None: ``features[-1] // 4``); ``iterations`` of ``batch_size`` samples;
    ``lr``/``warmup``: Adam's step size and its linear warm-up; ``lambda1``/``temperature``: MSC on all
    scales; ``dice_weight``: the soft-Dice term; ``fg_fraction``: samples centred on a structure;
    ``seed``: initial weights and the sampler's stream; ``save_every``: partial state interval
    (not part of the fingerprint: it does not change the result)."""

    features: tuple[int, ...] = (16, 32, 64, 128, 256)
    code_channels: int | None = 128
    iterations: int = 2500
    batch_size: int = 24
    lr: float = 1e-2
    warmup: int = 50
    lambda1: float = 0.05
    temperature: float = 0.1
    dice_weight: float = 1.0
    fg_fraction: float = 0.95
    seed: int = 12345
    save_every: int = 100

    def validate(self) -> AutoencoderSettings:
        """Raise ``ValueError`` naming the setting when a value cannot work; returns ``self``."""
        for name in ("iterations", "batch_size", "save_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"Autoencoder setting {name} must be an integer >= 1, found {v!r}.")
        if not self.lr > 0:
            raise ValueError(f"Autoencoder setting lr must be > 0, found {self.lr!r}.")
        if not 0.0 <= self.fg_fraction <= 1.0:
            raise ValueError(f"Autoencoder setting fg_fraction must be within [0, 1], found {self.fg_fraction!r}.")
        return self

    def fingerprint_part(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("save_every")
        out["features"] = list(self.features)
        return out


def code_version() -> str:
    """sha256 (16 hex) of the syntax trees of the autoencoder's modules (:data:`_CODE_FILES`):
    changes with their code, not with their docstrings or comments."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for rel in _CODE_FILES:
        tree = ast.parse((root / rel).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                    and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant)
                    and isinstance(body[0].value.value, str)):
                body[0] = ast.Pass()
        h.update(rel.encode() + b"\0" + ast.dump(tree).encode() + b"\0")
    return h.hexdigest()[:16]


@dataclass
class AutoencoderJob:
    """Everything one trained autoencoder depends on (see the module docstring).

    ``preprocessed_folder``: ``nnUNet_preprocessed/<Dataset>/<data identifier>`` (the trainer's
    ``preprocessed_dataset_folder``); ``results_dataset_folder``: ``nnUNet_results/<Dataset>``, where
    the cache lives."""

    preprocessed_folder: Path
    results_dataset_folder: Path
    plans_name: str
    configuration: str
    fold: int | str
    train_cases: list[str]
    val_cases: list[str]
    domain_spec: DomainSpec
    patch_size: tuple[int, ...]
    spacing: tuple[float, ...]
    augmentation: SpatialAugmentation
    variant: str = "multi_domain"
    settings: AutoencoderSettings = field(default_factory=AutoencoderSettings)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"Autoencoder variant must be one of {', '.join(VARIANTS)}, found {self.variant!r}.")
        if len(self.patch_size) not in (2, 3):
            raise InputDataError(f"Patch size {self.patch_size} of configuration {self.configuration!r}: the label "
                                 "autoencoder works on 2D or 3D patches.")
        self.settings.validate()
        self.train_cases = sorted(self.train_cases)
        self.val_cases = sorted(self.val_cases)
        self.patch_size = tuple(int(p) for p in self.patch_size)
        self.spacing = tuple(float(s) for s in self.spacing)

    @property
    def dim(self) -> int:
        return len(self.patch_size)

    def build(self) -> LabelAutoencoder:
        """A fresh autoencoder of this job (weights from torch's current RNG state)."""
        return build_autoencoder(self.domain_spec.domain_label_ids, self.dim, self.variant, self.settings,
                                 self.patch_size)

    def fingerprint(self, ae: LabelAutoencoder | None = None) -> dict[str, Any]:
        """The JSON-able description the cache key is the hash of."""
        ae = ae if ae is not None else self.build()
        return {
            "format": 1, "variant": self.variant, "train_cases": self.train_cases,
            "patch_size": list(self.patch_size), "spacing": list(self.spacing),
            "domains": [{"name": d.name, "labels": {lab.name: lab.unified_id for lab in d.labels}}
                        for d in self.domain_spec.domains],
            "config": ae.get_config(), "settings": self.settings.fingerprint_part(),
            "augmentation": self.augmentation.to_json(), "code": code_version(),
        }

    def cache_folder(self, fingerprint: dict[str, Any] | None = None) -> Path:
        """``<results>/<Dataset>/mtmd_label_autoencoders/<plans>__<configuration>/fold_<f>/<variant>-<hash12>``."""
        fp = self.fingerprint() if fingerprint is None else fingerprint
        return (Path(self.results_dataset_folder) / "mtmd_label_autoencoders"
                / f"{self.plans_name}__{self.configuration}" / f"fold_{self.fold}"
                / f"{self.variant}-{fingerprint_hash(fp)[:12]}")


def poolings_for(patch_size: tuple[int, ...] | list[int] | None, wanted: int) -> int:
    """How many 2x max-poolings (at most ``wanted``) a patch allows: every axis divisible by ``2 ** n``."""
    if patch_size is None:
        return wanted
    n = 0
    while n < wanted and all(int(p) % 2 ** (n + 1) == 0 for p in patch_size):
        n += 1
    return n


def build_autoencoder(domain_label_ids: list[list[int]], dim: int, variant: str, settings: AutoencoderSettings,
                      patch_size: tuple[int, ...] | list[int] | None = None) -> LabelAutoencoder:
    """The autoencoder of a job: ``settings.features`` with a max-pooling of 2 before every stage but
    the first (fewer stages when ``patch_size`` is not divisible by ``2 ** (len(features) - 1)``),
    ``settings.code_channels``, 2D or 3D, shared or multi-domain (weights from torch's RNG)."""
    if variant not in VARIANTS:
        raise ValueError(f"Autoencoder variant must be one of {', '.join(VARIANTS)}, found {variant!r}.")
    features = tuple(settings.features)[: 1 + poolings_for(patch_size, len(settings.features) - 1)]
    return LabelAutoencoder(domain_label_ids, features=features, strides=[1] + [2] * (len(features) - 1),
                            conv_op=nn.Conv3d if dim == 3 else nn.Conv2d, code_channels=settings.code_channels,
                            shared=variant == "shared")


def fingerprint_hash(fingerprint: dict[str, Any]) -> str:
    """sha256 hex digest of the canonical JSON of a fingerprint."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def job_for_trainer(trainer: Any, variant: str, settings: AutoencoderSettings) -> AutoencoderJob:
    """The job of an nnU-Net trainer's fold: its split (``do_split``), preprocessed folder, plans,
    configuration and spatial augmentation (``configure_rotation_dummyDA_mirroring_and_inital_patch_size``:
    the rotation range, dummy-2D flag and mirror axes the segmentation training uses)."""
    train_cases, val_cases = trainer.do_split()
    rotation, dummy_2d, _, mirror_axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    cm = trainer.configuration_manager
    return AutoencoderJob(
        preprocessed_folder=Path(trainer.preprocessed_dataset_folder),
        results_dataset_folder=Path(trainer.output_folder_base).parent,
        plans_name=trainer.plans_manager.plans_name, configuration=trainer.configuration_name, fold=trainer.fold,
        train_cases=list(train_cases), val_cases=list(val_cases), domain_spec=trainer.domain_spec,
        patch_size=tuple(cm.patch_size), spacing=tuple(cm.spacing),
        augmentation=SpatialAugmentation(rotation=rotation_range(rotation), mirror_axes=tuple(mirror_axes or ()),
                                         dummy_2d=bool(dummy_2d)),
        variant=variant, settings=settings,
    )


class _PlansOnly:
    """What nnU-Net's ``configure_rotation_dummyDA_mirroring_and_inital_patch_size`` reads of a trainer."""

    def __init__(self, configuration_manager: Any) -> None:
        self.configuration_manager = configuration_manager

    def print_to_log_file(self, *args: Any, **kwargs: Any) -> None:
        pass


def augmentation_for(configuration_manager: Any, fixed_orientation: bool) -> SpatialAugmentation:
    """The spatial augmentation a trainer of this configuration uses: nnU-Net's (rotation, dummy 2D,
    mirror axes for the patch size), or the fixed-orientation one of the study trainers
    (:func:`nnunetv2_mtmd.training.orientation.fixed_orientation_config`)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunetv2_mtmd.training.orientation import fixed_orientation_config

    stub = _PlansOnly(configuration_manager)
    out = nnUNetTrainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size(stub)
    if fixed_orientation:
        out = fixed_orientation_config(stub, out[1])
    rotation, dummy_2d, _, mirror_axes = out
    return SpatialAugmentation(rotation=rotation_range(rotation), mirror_axes=tuple(mirror_axes or ()),
                               dummy_2d=bool(dummy_2d))


def _split(folder: Path, fold: int | str, identifiers: list[str]) -> tuple[list[str], list[str]]:
    if fold == "all":
        return identifiers, identifiers
    path = folder / "splits_final.json"
    if not path.is_file():
        raise InputDataError(f"{path} does not exist: write the split first (nnUNetv2_mtmd_splits -d "
                             f"{folder.name}, or start any MTMD training of this dataset).")
    splits = load_json(path)
    if not isinstance(splits, list) or not isinstance(fold, int) or not 0 <= fold < len(splits):
        n = len(splits) if isinstance(splits, list) else 0
        raise InputDataError(f"Fold {fold!r} does not exist in {path} ({n} folds: 0..{n - 1}, or 'all').")
    return list(splits[fold]["train"]), list(splits[fold]["val"])


def job_from_plans(dataset: str | int, configuration: str, fold: int | str, plans_name: str = "nnUNetPlans",
                   variant: str = "multi_domain", settings: AutoencoderSettings | None = None,
                   augmentation: str = "plans") -> AutoencoderJob:
    """The job of ``nnUNetv2_train DATASET CONFIGURATION FOLD -p PLANS`` with an MJAP trainer, from
    ``$nnUNet_preprocessed`` and ``$nnUNet_results`` alone.

    ``augmentation``: ``"plans"`` (fixed orientation when the plans record a study budget that asks
    for it, as the study trainers do; else nnU-Net's), ``"nnunet"`` or ``"fixed"``. ``settings``:
    default :class:`AutoencoderSettings`, with the budget's ``ae_iterations`` when the plans record one."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunetv2_mtmd.training.budget import StudyBudget

    folder = find_dataset(dataset, env_folder("nnUNet_preprocessed"))
    plans_file = folder / f"{plans_name}.json"
    if not plans_file.is_file():
        found = sorted(p.stem for p in folder.glob("*.json") if p.stem not in ("dataset", "dataset_fingerprint",
                                                                              "splits_final"))
        raise InputDataError(f"No plans {plans_name!r} in {folder} (found: {', '.join(found) or 'none'}); pass -p.")
    plans = load_json(plans_file)
    pm = PlansManager(plans)
    if configuration not in pm.available_configurations:
        raise InputDataError(f"Configuration {configuration!r} is not in {plans_file} (available: "
                             f"{', '.join(pm.available_configurations)}).")
    cm = pm.get_configuration(configuration)
    spec = DomainSpec.from_dataset_json(folder / "dataset.json")
    data = folder / cm.data_identifier
    if not data.is_dir():
        raise InputDataError(f"{data} does not exist: preprocess first (nnUNetv2_preprocess -d {folder.name} "
                             f"-plans_name {plans_name} -c {configuration}).")
    train, val = _split(folder, fold, sorted(infer_dataset_class(str(data)).get_identifiers(str(data))))
    budget = StudyBudget.from_plans(plans, str(plans_file))
    if augmentation not in ("plans", "nnunet", "fixed"):
        raise ValueError(f"augmentation must be 'plans', 'nnunet' or 'fixed', found {augmentation!r}.")
    fixed = augmentation == "fixed" or (augmentation == "plans" and budget is not None and budget.fixed_orientation)
    if settings is None:
        settings = AutoencoderSettings() if budget is None else AutoencoderSettings(iterations=budget.ae_iterations)
    return AutoencoderJob(
        preprocessed_folder=data, results_dataset_folder=env_folder("nnUNet_results") / folder.name,
        plans_name=plans_name, configuration=configuration, fold=fold, train_cases=train, val_cases=val,
        domain_spec=spec, patch_size=tuple(cm.patch_size), spacing=tuple(cm.spacing),
        augmentation=augmentation_for(cm, fixed), variant=variant, settings=settings)
