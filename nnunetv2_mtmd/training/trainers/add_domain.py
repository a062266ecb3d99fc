"""Training a domain added to a trained model (``nnUNetv2_mtmd_add_domain``; docs/add_domain.md).

``nnUNetv2_train XXX 2d FOLD -tr nnUNetTrainerMTMD_AddDomain`` on the K+1 dataset written by
``nnUNetv2_mtmd_add_domain``:

1. the source checkpoint named in the plans (``plans['mtmd_add_domain']``, its SHA-256 checked) is
   loaded by the trainer itself, inside nnU-Net's ``initialize`` (in ``configure_optimizers``, which
   nnU-Net calls after building the network and before wrapping it in DDP): stock
   ``-pretrained_weights`` asserts that every key but ``.seg_layers.`` matches, which a network with
   one more DSBN row and head cannot satisfy, and ``run_training`` gives a trainer no way to change
   that. The K old DSBN rows and heads and every shared tensor are copied
   (training/domain_transfer.py);
2. only the new domain's DSBN rows and heads train: shared convolutions and old heads are frozen,
   the old rows of the DSBN affine tensors get zero gradients (a hook) and no weight decay (their
   own optimizer group), so SGD with nnU-Net's Nesterov momentum leaves them, and hence the old
   domains' logits, bitwise unchanged (tests/training/test_add_domain.py);
3. before the first epoch the new DSBN rows' running statistics are re-estimated on
   ``adabn_batches`` batches of the new domain (AdaBN); the new affine rows start at the mean of the
   old domains' rows (``new_affine_init``);
4. MSC and MJAP are off: every batch holds the new domain only (no other domain to contrast with)
   and the label autoencoder has no prior for the new domain's structures.

``train_shared_convolutions = True`` (a three-line subclass) trains the shared convolutions too; the
old domains' logits then change. Batches use nnU-Net's planned batch size (no rounding to K+1: one
domain only). torch.compile is off: the bitwise guarantee is tested with eager parameter hooks.
"""

from __future__ import annotations

import os

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_mtmd.architectures.unet import unwrap_network
from nnunetv2_mtmd.errors import DomainSpecError, InputDataError
from nnunetv2_mtmd.training.trainers.base import nnUNetTrainerMTMD_DSL
from nnunetv2_mtmd.training.trainers.schedules import DebugSchedule

__all__ = ["nnUNetTrainerMTMD_AddDomain", "nnUNetTrainerMTMD_AddDomain_debug"]


class nnUNetTrainerMTMD_AddDomain(nnUNetTrainerMTMD_DSL):
    """Train the domain added by ``nnUNetv2_mtmd_add_domain``: only its DSBN rows and heads (module
    docstring). Class attributes (change them in a subclass): ``train_shared_convolutions``,
    ``adabn_batches`` (0: no re-estimation), ``new_affine_init`` ("mean" or "identity")."""

    train_shared_convolutions: bool = False
    adabn_batches: int = 50
    new_affine_init: str = "mean"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        from nnunetv2_mtmd.conversion.add_domain import read_record

        self.add_domain_record = read_record(plans, self.domain_spec, f"plans of {self.plans_manager.dataset_name}")
        self.new_domain_index = self.domain_spec.num_domains - 1
        self.new_domain_parameters = None
        self.adabn_done = False

    def _do_i_compile(self) -> bool:
        return False

    def _set_batch_size_and_oversample(self) -> None:
        # nnU-Net's own batch size: every batch holds the new domain only, so no rounding to K+1 domains
        nnUNetTrainer._set_batch_size_and_oversample(self)

    # ------------------------------------------------------------- source weights, frozen layers
    def configure_optimizers(self):
        """Load the source model and freeze what the old domains use (once), then nnU-Net's SGD and poly
        schedule over the trainable tensors only: the DSBN affine tensors (old rows masked) in a group
        without weight decay, the new heads (and shared convolutions, if they train) with it."""
        if self.new_domain_parameters is None:
            from nnunetv2_mtmd.training.domain_transfer import prepare_new_domain_training

            net = unwrap_network(self.network)
            self._load_source(net)
            self.new_domain_parameters = prepare_new_domain_training(net, self.new_domain_index,
                                                                     self.train_shared_convolutions)
            p = self.new_domain_parameters
            n_train = sum(t.numel() for t in p.others) + sum(t[self.new_domain_index].numel() for t in p.row_masked)
            self.print_to_log_file(
                f"Adding domain '{self.add_domain_record['new_domain']}' (index {self.new_domain_index}): "
                f"{len(p.frozen)} frozen tensors, {len(p.row_masked)} DSBN affine tensors (only row "
                f"{self.new_domain_index} trains, no weight decay), {len(p.others)} other trainable tensors; "
                f"{n_train} trainable values. Shared convolutions "
                f"{'train' if self.train_shared_convolutions else 'frozen'}.")
        groups = self.new_domain_parameters.param_groups(self.weight_decay)
        optimizer = torch.optim.SGD(groups, self.initial_lr, momentum=0.99, nesterov=True)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def _load_source(self, net: torch.nn.Module) -> None:
        """The source checkpoint of the record into ``net`` (its SHA-256 must be the recorded one)."""
        from nnunetv2_mtmd.io import file_sha256, load_checkpoint_file
        from nnunetv2_mtmd.training.domain_transfer import transfer_source_weights

        rec = self.add_domain_record
        path = rec["source_checkpoint"]
        if not os.path.isfile(path):
            raise InputDataError(
                f"The source checkpoint {path} recorded in the plans ('mtmd_add_domain') does not exist. Restore "
                "it (the old domains' weights come from it) or re-run nnUNetv2_mtmd_add_domain.")
        digest = file_sha256(path)
        if digest != rec["source_checkpoint_sha256"]:
            raise InputDataError(
                f"The source checkpoint {path} changed since nnUNetv2_mtmd_add_domain recorded it (SHA-256 "
                f"{digest[:12]}..., recorded {rec['source_checkpoint_sha256'][:12]}...): the old domains would not "
                "be those of the recorded model. Restore the file or re-run nnUNetv2_mtmd_add_domain.")
        ckpt = load_checkpoint_file(path, map_location=torch.device("cpu"))
        if "network_weights" not in ckpt:
            raise InputDataError(f"{path} has no 'network_weights': not an nnU-Net v2 checkpoint.")
        k = transfer_source_weights(net, ckpt["network_weights"], path, self.new_affine_init)
        if k != len(rec["source_domains"]):
            raise DomainSpecError(f"{path} holds {k} domains, the record names {len(rec['source_domains'])}.")
        self.print_to_log_file(f"Source model loaded: {path} ({k} domains: {', '.join(rec['source_domains'])})")

    # --------------------------------------------------------------------------------- data
    def do_split(self):
        tr_keys, val_keys = super().do_split()
        new = self.domain_spec.domains[self.new_domain_index].name
        other = sorted(k for k in [*tr_keys, *val_keys] if self.domain_spec.domain_of_case(k).name != new)
        if other:
            raise InputDataError(
                f"The dataset holds cases of the model's old domains ({', '.join(other[:5])}...): adding a domain "
                f"trains on '{new}' cases only (old-domain batches would update the old DSBN rows). Use the "
                "dataset written by nnUNetv2_mtmd_add_domain.")
        return tr_keys, val_keys

    def on_train_start(self):
        super().on_train_start()
        # a resumed run (--c) restored the re-estimated statistics from its checkpoint
        if self.current_epoch == 0 and not self.adabn_done and self.adabn_batches > 0:
            from nnunetv2_mtmd.training.domain_transfer import adabn

            batches = (next(self.dataloader_train)["data"].to(self.device, non_blocking=True)
                       for _ in range(int(self.adabn_batches)))
            n = adabn(unwrap_network(self.network), batches, self.new_domain_index)
            self.print_to_log_file(f"AdaBN: running statistics of the new domain's DSBN rows re-estimated on {n} "
                                   "training batches.")
        self.adabn_done = True


class nnUNetTrainerMTMD_AddDomain_debug(DebugSchedule, nnUNetTrainerMTMD_AddDomain):
    """nnUNetTrainerMTMD_AddDomain with the debug schedule (1 epoch of 3 iterations) and 2 AdaBN batches,
    for tests and smoke runs. On fold ``all`` nnU-Net's final validation (a re-prediction of every
    training case: nothing is held out) is skipped, as by ``nnUNetTrainerMTMD_demo``."""

    adabn_batches = 2

    def perform_actual_validation(self, save_probabilities: bool = False):
        if self.fold == "all":
            self.print_to_log_file("Final validation skipped: fold 'all' has no held-out cases.")
            return
        return super().perform_actual_validation(save_probabilities)
