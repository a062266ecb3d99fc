"""The multi-domain trainer: nnU-Net's trainer wired to the plugin's modules through its hooks.

Everything numerical lives elsewhere (architectures/, losses/, training/sampling.py); this class
only connects it to nnU-Net:

- ``build_network_architecture`` builds the plans' multi-domain network (plus the scheme's overrides,
  ``network_overrides_for``), and is what ``nnUNetv2_predict`` calls too, so every scheme is rebuilt
  correctly at inference from plans.json + the trainer name in the checkpoint;
- ``get_dataloaders`` swaps nnU-Net's loader for :class:`DomainBalancedDataLoader` (through
  :func:`nnunetv2_mtmd.compat.build_dataloaders`, the tracked copy of nnU-Net's method);
- ``do_split`` writes a domain-stratified 5-fold split when no splits_final.json exists;
- batch size is checked to be a multiple of K.

``torch.compile`` is nnU-Net's own decision (``nnUNetTrainer._do_i_compile``, not overridden: on CUDA
unless ``nnUNet_compile=f``; never on CPU, MPS or Windows): the multi-domain network compiles as one
graph whatever the batch's domain mix (architectures/unet.py, tests/architectures/test_compile.py), and
the regularizers read the features from the plain network under the wrapper (``_plain_network``).
"""

from __future__ import annotations

import os

import torch
from batchgenerators.utilities.file_and_folder_operations import isfile, join, save_json
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from nnunetv2_mtmd.compat import build_dataloaders, install_predictor_input_check
from nnunetv2_mtmd.domains import DomainSpec, check_plans_architecture
from nnunetv2_mtmd.errors import DomainSpecError, InputDataError
from nnunetv2_mtmd.training.sampling import DomainBalancedDataLoader

MTMD_NETWORK_PREFIX = "nnunetv2_mtmd.architectures."


def check_mtmd_plans(configuration_manager) -> None:
    """Raise a clear error when the plans were not made by an MTMD planner."""
    name = configuration_manager.network_arch_class_name
    if not name.startswith(MTMD_NETWORK_PREFIX):
        raise DomainSpecError(
            f"The plans' network is {name}, not a multi-domain network. Plan the merged dataset with "
            "'nnUNetv2_plan_and_preprocess -d <id> -pl nnUNetPlannerMTMD' before training an MTMD trainer."
        )


#: Top-level plans key of a training seed written by whoever wrote the plans (the demo's ``--seed``), so that
#: the results folder's plans.json records it; the class attribute ``seed`` wins over it.
PLANS_SEED_KEY = "mtmd_training_seed"


def training_seed(class_seed: int | None, plans: dict) -> int | None:
    """The seed a trainer uses: ``class_seed`` if set, else the plans' :data:`PLANS_SEED_KEY`, else None.
    A recorded value that is not a non-negative integer raises :class:`InputDataError`."""
    if class_seed is not None:
        return class_seed
    value = plans.get(PLANS_SEED_KEY)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputDataError(f"plans['{PLANS_SEED_KEY}'] must be a non-negative integer (a training seed), found "
                             f"{value!r}. Fix or remove the key in the plans file.")
    return value


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global generator and torch (every device)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class nnUNetTrainerMTMD_DSL(nnUNetTrainer):
    """DSL scheme: shared convolutions, domain-specific batch norm and one head per domain.

    Boutillon et al., MICCAI 2021 / 2022. Subclasses change ``network_overrides_for`` (architecture
    switches the predictor must know) or the regularizer weights (see ``nnUNetTrainerMTMD``)."""

    #: Forced-foreground training samples show class ``c`` with weight ``n_c ** -rare_class_exponent``
    #: (``training/sampling.pick_foreground_class``); 0 = nnU-Net's uniform choice.
    rare_class_exponent: float = 0.0
    #: Seed of python's, numpy's and torch's random generators, set before nnU-Net builds the network and
    #: the data loaders (None: unseeded, as stock nnU-Net). With in-process augmentation
    #: (``nnUNet_n_proc_DA=0``) a seed fixes initialisation, sampling and augmentation; a scheme trained
    #: twice with two seeds measures retraining noise (the study's DSL replicate). None here: the plans'
    #: ``mtmd_training_seed`` if they record one (the demo's ``--seed``), else unseeded.
    seed: int | None = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        seed = training_seed(self.seed, plans)
        if seed is not None:
            seed_everything(seed)
            where = "class attribute seed" if self.seed is not None else f"plans['{PLANS_SEED_KEY}']"
            self.print_to_log_file(f"Random generators seeded with {seed} ({where}; python, numpy, torch)")
        self.domain_spec = DomainSpec.from_dataset_json(dataset_json)
        check_mtmd_plans(self.configuration_manager)
        check_plans_architecture(self.configuration_manager.network_arch_init_kwargs, self.domain_spec,
                                 f"plans['configurations']['{configuration}']['architecture']['arch_kwargs']")

    def initialize(self):
        was_initialized = self.was_initialized
        super().initialize()
        if self.is_ddp and not was_initialized:
            from nnunetv2_mtmd.training.ddp import prepare_network_for_ddp

            prepare_network_for_ddp(self.network, self.print_to_log_file)

    # ------------------------------------------------------------------------------- network
    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> torch.nn.Module:
        check_mtmd_plans(configuration_manager)
        # nnUNetv2_predict builds the network through this classmethod: install the predictor's input check
        # (an nnU-Net patch, compat) so that its input cases are checked before anything is written
        install_predictor_input_check()
        kwargs = dict(configuration_manager.network_arch_init_kwargs)
        kwargs.update(cls.network_overrides_for(configuration_manager))
        return get_network_from_plans(
            configuration_manager.network_arch_class_name, kwargs,
            configuration_manager.network_arch_init_kwargs_req_import,
            num_input_channels, num_output_channels, allow_init=True, deep_supervision=enable_deep_supervision,
        )

    @classmethod
    def network_overrides_for(cls, configuration_manager) -> dict:
        """Plans ``arch_kwargs`` this scheme replaces (e.g. shared norm and head). The predictor calls
        ``build_network_architecture`` of the checkpoint's trainer, so these reach inference too."""
        return {}

    def _set_batch_size_and_oversample(self) -> None:
        k = self.domain_spec.num_domains
        if self.is_ddp:  # every rank gets the same batch size, a multiple of K (training/ddp.py)
            import torch.distributed as dist

            from nnunetv2_mtmd.training.ddp import rank_batch

            planned = self.configuration_manager.batch_size
            rb = rank_batch(planned, dist.get_world_size(), dist.get_rank(), k, self.oversample_foreground_percent)
            if rb.global_batch_size != planned:
                self.print_to_log_file(
                    f"Global batch size {planned} is not a multiple of {dist.get_world_size()} GPUs x {k} domains; "
                    f"using {rb.global_batch_size} so that every rank's batch holds the same number of samples of "
                    "each domain.")
            self.batch_size, self.oversample_foreground_percent = rb.batch_size, rb.oversample_foreground_percent
            self.print_to_log_file(f"rank {dist.get_rank()}: batch size {rb.batch_size}, foreground oversampling "
                                   f"{rb.oversample_foreground_percent:.3f}")
            return
        super()._set_batch_size_and_oversample()
        if self.batch_size % k:
            new = (self.batch_size // k + 1) * k
            self.print_to_log_file(
                f"Batch size {self.batch_size} is not a multiple of the {k} domains; using {new} so that every "
                "batch holds the same number of samples of each domain."
            )
            self.batch_size = new

    # --------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint (plus :meth:`_extra_checkpoint_state`), written atomically: a run killed
        while saving keeps the previous file. Re-read with weights_only=True (training/checkpoint.py)."""
        if self.local_rank != 0 or self.disable_checkpointing:
            return super().save_checkpoint(filename)
        from nnunetv2_mtmd.training.checkpoint import load_checkpoint_file, save_atomic

        tmp = join(os.path.dirname(filename), f".{os.path.basename(filename)}.nnunet-{os.getpid()}")
        try:
            super().save_checkpoint(tmp)
            extra = self._extra_checkpoint_state()
            if extra:
                ckpt = load_checkpoint_file(tmp)
                ckpt.update(extra)
                save_atomic(ckpt, filename)
            else:
                os.replace(tmp, filename)
        finally:
            if os.path.isfile(tmp):
                os.remove(tmp)

    def _extra_checkpoint_state(self) -> dict:
        """Entries a subclass adds to nnU-Net's checkpoint (plain data: loadable with weights_only=True)."""
        return {}

    # ---------------------------------------------------------------------------------- data
    def do_split(self):
        if self.fold != "all":
            splits_file = join(self.preprocessed_dataset_folder_base, "splits_final.json")
            if not isfile(splits_file):
                from nnunetv2_mtmd.training.splits import domain_stratified_kfold

                if self.dataset_class is None:
                    self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
                ids = sorted(self.dataset_class.get_identifiers(self.preprocessed_dataset_folder))
                self.print_to_log_file("Creating a domain-stratified 5-fold split (seed 12345)...")
                save_json(domain_stratified_kfold(ids, self.domain_spec, n_folds=5, seed=12345), splits_file)
        return super().do_split()

    def get_dataloaders(self):
        # nnU-Net builds its nnUNetDataLoader inside get_dataloaders (no hook for the class): the copy of that
        # method lives in compat (tracked against nnU-Net's source) and takes the loader as a parameter
        return build_dataloaders(self, self._make_data_loader)

    def _make_data_loader(self, training: bool, *args, **kwargs) -> DomainBalancedDataLoader:
        """The domain-balanced loader, called with nnU-Net's ``nnUNetDataLoader`` arguments
        (:func:`nnunetv2_mtmd.compat.build_dataloaders`); the rare-class weighting is for training only."""
        extra = {"rare_class_exponent": self.rare_class_exponent} if training else {}
        return DomainBalancedDataLoader(*args, domain_spec=self.domain_spec, **extra, **kwargs)

