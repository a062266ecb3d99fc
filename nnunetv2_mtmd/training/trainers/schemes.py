"""The paper's training schemes as trainers; the class name is the scheme (nnU-Net's experiment id).

The schemes, their names, labels and switches are listed once, in :data:`nnunetv2_mtmd.schemes.SCHEMES`
(docs/method.md shows the table); each class here is the trainer of one entry.

Weights (class attributes, change them in a tiny subclass): ``lambda_msc`` (lambda2, default 0.5) and
``lambda_mjap`` (lambda3, default 0.001, on the paper's Eq. 7 distance ``mjap_form = "l2"``): lambda2 is
the paper's value for its Att-UNet; lambda3 is set by the gradient-norm ratio MJAP/seg measured on the
study data (the paper's 0.1 gives 33-43 there; docs/method.md, "Default weights"), autoencoder
``ae_lambda_msc`` (lambda1, 0.05) and ``ae_iterations`` (length of the autoencoder phase). Every
``grad_ratio_every`` training iterations the gradient-norm ratios MSC/seg and MJAP/seg on the shared
convolutions are sampled (``losses/gradient_ratio.py``); their per-epoch medians are logged.
``msc_learnable_temperature`` learns one MSC temperature per scale (trained by nnU-Net's optimizer, saved
in its checkpoint).
"""

from __future__ import annotations

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join
from torch._dynamo import OptimizedModule

from nnunetv2_mtmd.schemes import MULTI_DOMAIN
from nnunetv2_mtmd.training.autoencoder_job import AutoencoderSettings
from nnunetv2_mtmd.training.trainers.base import nnUNetTrainerMTMD_DSL

AE_DEFAULTS = AutoencoderSettings()

EXTRA_LOG_KEYS = ("seg_loss", "msc_loss", "mjap_loss", "msc_skipped_batches", "msc_nonfinite_batches",
                  "mjap_nonfinite_batches", "msc_grad_ratio", "mjap_grad_ratio", "grad_ratio_samples",
                  "msc_temperature")
#: Key of the learnable MSC temperatures in nnU-Net's checkpoint dict.
MSC_TEMPERATURE_KEY = "mtmd_msc_temperature"
#: Tracker counters (summed over an epoch, and over the ranks under DDP) -> logger keys.
COUNTERS = {"msc_skipped": "msc_skipped_batches", "msc_nonfinite": "msc_nonfinite_batches",
            "mjap_nonfinite": "mjap_nonfinite_batches"}


#: lambda3 on the Eq. 7 distance of the default autoencoder's 128 x 4 x 4 code (64 x 64 patches): median
#: MJAP/seg gradient-norm ratio 0.46-0.59 in the first three epochs of the study's fold 0 (0.003: up to
#: 1.75; the paper's 0.1: 33-43); the norm grows with the square root of the code size.
LAMBDA_MJAP = 1e-3


class nnUNetTrainerMTMD(nnUNetTrainerMTMD_DSL):
    """DSL + MSC + MJAP: ``L = Dice+CE + lambda_msc * MSC + lambda_mjap * MJAP`` (Boutillon et al. 2022)."""

    lambda_msc: float = 0.5
    msc_stages: str = "all"
    msc_temperature: float = 0.1
    #: Learn one temperature per MSC scale (initialised at ``msc_temperature``), kept in this range.
    msc_learnable_temperature: bool = False
    msc_temperature_range: tuple[float, float] = (0.03, 1.0)
    lambda_mjap: float = LAMBDA_MJAP
    #: MJAP distance (``AnatomicalPriorLoss`` form): "l2" is the paper's Eq. 7; "legacy_element_mean" the
    #: form of the results trained before issue 22.
    mjap_form: str = "l2"
    #: Sample the gradient-norm ratios every this many training iterations (0: never).
    grad_ratio_every: int = 50
    #: The MJAP label autoencoder (training/autoencoder_trainer.py; defaults: AutoencoderSettings, docs/method.md,
    #: "Label autoencoder"): variant ("shared" for Shared+MJAP), width, code channels and its training. It is
    #: trained once per fold and setting in $nnUNet_results/<Dataset>/mtmd_label_autoencoders/ and reused.
    ae_variant: str = "multi_domain"
    ae_features: tuple = AE_DEFAULTS.features
    ae_code_channels: int | None = AE_DEFAULTS.code_channels
    ae_iterations: int = AE_DEFAULTS.iterations
    ae_batch_size: int = AE_DEFAULTS.batch_size
    ae_lr: float = AE_DEFAULTS.lr
    ae_lambda_msc: float = AE_DEFAULTS.lambda1
    ae_temperature: float = AE_DEFAULTS.temperature
    #: The autoencoder phase saves its partial state (label_autoencoder_partial.pth) every this many iterations.
    ae_save_every: int = AE_DEFAULTS.save_every

    def initialize(self):
        super().initialize()
        from nnunetv2_mtmd.losses.anatomical_prior import AnatomicalPriorLoss
        from nnunetv2_mtmd.losses.combined import RegularizedLoss

        net = self._plain_network()
        net.collect_features = self.lambda_msc > 0
        self.autoencoder = None
        mjap = None
        if self.lambda_mjap > 0:
            from nnunetv2_mtmd.training.autoencoder_trainer import build_for_trainer

            self.autoencoder = build_for_trainer(self)
            self.autoencoder_trained = False
            mjap = AnatomicalPriorLoss(self.autoencoder, form=self.mjap_form)

        def network_state():
            return net.training, getattr(net, "last_features", None), net.last_domain_idx

        self.loss = RegularizedLoss(self.loss, network_state, msc=self._msc_loss(), mjap=mjap,
                                    lambda_msc=self.lambda_msc, lambda_mjap=self.lambda_mjap,
                                    grad_probe=self._grad_ratio_probe(net))
        for k in EXTRA_LOG_KEYS:
            self.logger.local_logger.my_fantastic_logging.setdefault(k, [])

    def _plain_network(self) -> torch.nn.Module:
        mod = self.network.module if self.is_ddp else self.network
        return mod._orig_mod if isinstance(mod, OptimizedModule) else mod

    # ------------------------------------------------------------------- MSC, its temperatures, probe
    def _msc_loss(self):
        """The scheme's ``MultiScaleContrastiveLoss`` (None without MSC), built once: ``configure_optimizers``
        (inside nnU-Net's ``initialize``, before the loss exists) needs its learnable temperatures."""
        if self.lambda_msc <= 0:
            return None
        if getattr(self, "_msc", None) is None:
            from nnunetv2_mtmd.architectures.unet import unwrap_network
            from nnunetv2_mtmd.losses.contrastive import MultiScaleContrastiveLoss

            n_stages = len(unwrap_network(self.network).encoder.output_channels)
            self._msc = MultiScaleContrastiveLoss(
                self.msc_temperature, self.msc_stages, gather_distributed=self.is_ddp,
                learnable_temperature=self.msc_learnable_temperature,
                temperature_range=tuple(self.msc_temperature_range), num_features=2 * n_stages - 1,
            ).to(self.device)
        return self._msc

    def configure_optimizers(self):
        """nnU-Net's optimizer and schedule, plus the learnable MSC temperatures as their own parameter group:
        same learning rate and poly schedule (nnU-Net's scheduler sets every group's rate), no weight decay."""
        optimizer, lr_scheduler = super().configure_optimizers()
        msc = self._msc_loss()
        if msc is not None and msc.temperatures is not None:
            optimizer.add_param_group({"params": list(msc.temperatures.parameters()), "weight_decay": 0.0,
                                       "lr": optimizer.param_groups[0]["lr"]})
        return optimizer, lr_scheduler

    def _grad_ratio_probe(self, net: torch.nn.Module):
        """The gradient-norm ratio probe on the shared convolutions (None when disabled)."""
        if self.grad_ratio_every <= 0:
            return None
        from nnunetv2_mtmd.losses.gradient_ratio import GradientNormProbe, shared_parameters

        def loss_scale() -> float:
            return float(self.grad_scaler.get_scale()) if self.grad_scaler is not None else 1.0

        return GradientNormProbe(shared_parameters(net), every=int(self.grad_ratio_every), loss_scale=loss_scale)

    # --------------------------------------------------------------- phase 1: label autoencoder
    def on_train_start(self):
        super().on_train_start()
        if self.autoencoder is not None and not self.autoencoder_trained:
            from nnunetv2_mtmd.training.autoencoder_trainer import run_for_trainer

            # trained on the fold's preprocessed training labels (or loaded from the fold's cache), then frozen
            self.autoencoder_history = run_for_trainer(self, self.autoencoder).history
            self.autoencoder_trained = True

    def on_train_end(self):
        self._plain_network().collect_features = False  # nnU-Net's final validation needs no features
        super().on_train_end()

    # ------------------------------------------------------------------------------ logging
    def on_train_epoch_end(self, train_outputs):
        super().on_train_epoch_end(train_outputs)
        means = self.loss.tracker.pop_means()
        if self.is_ddp:
            from nnunetv2_mtmd.training.ddp import reduce_term_means

            means = reduce_term_means(means, counters=tuple(COUNTERS))
        for key, term in (("seg_loss", "seg"), ("msc_loss", "msc"), ("mjap_loss", "mjap")):
            self.logger.log(key, means.get(term, np.nan), self.current_epoch)
        counts = {key: int(means.get(term, 0)) for term, key in COUNTERS.items()}
        for key, n in counts.items():
            self.logger.log(key, n, self.current_epoch)
        skipped, nonfinite = counts["msc_skipped_batches"], counts["msc_nonfinite_batches"] + counts[
            "mjap_nonfinite_batches"]
        self.print_to_log_file(
            f"seg_loss {means.get('seg', np.nan):.4f}  msc {means.get('msc', np.nan):.4f} (x{self.lambda_msc})  "
            f"mjap {means.get('mjap', np.nan):.4f} (x{self.lambda_mjap})"
            + (f"  MSC skipped in {skipped} batch(es) without positive pairs" if skipped else "")
            + (f"  non-finite regularizer left out: MSC in {counts['msc_nonfinite_batches']}, MJAP in "
               f"{counts['mjap_nonfinite_batches']} batch(es)" if nonfinite else "")
        )
        self._log_grad_ratios()
        self._log_temperatures()

    def _log_grad_ratios(self) -> None:
        """The epoch's median gradient-norm ratios: nnU-Net's logger and ONE training-log line (its form is
        parsed by the study report: ``format_ratio_line``); NaN for a term the scheme lacks or no sample."""
        from nnunetv2_mtmd.losses.gradient_ratio import GradRatioSummary, format_ratio_line

        probe = self.loss.grad_probe
        summary = probe.pop_epoch() if probe is not None else GradRatioSummary(0, np.nan, np.nan)
        values = summary.as_log_values()
        if self.is_ddp:  # each rank's medians, averaged over the ranks (sample counts summed)
            from nnunetv2_mtmd.training.ddp import reduce_term_means

            values = reduce_term_means(values, counters=("grad_ratio_samples",))
            summary = GradRatioSummary(int(values["grad_ratio_samples"]), values["msc_grad_ratio"],
                                       values["mjap_grad_ratio"])
        for key, v in values.items():
            self.logger.log(key, float(v), self.current_epoch)
        self.print_to_log_file(format_ratio_line(summary))

    def _log_temperatures(self) -> None:
        """The MSC temperature of every scale (learnable or fixed; NaN without MSC)."""
        msc = self.loss.msc
        temps = msc.temperature_values() if msc is not None else [np.nan]
        self.logger.log("msc_temperature", [float(t) for t in temps], self.current_epoch)
        if msc is not None and msc.learnable_temperature:
            self.print_to_log_file("MSC temperatures per scale: " + " ".join(f"{t:.4f}" for t in temps))

    def on_epoch_end(self):
        super().on_epoch_end()
        if self.local_rank == 0:
            from nnunetv2_mtmd.training.progress_plot import plot_loss_terms

            plot_loss_terms(self.logger.local_logger.my_fantastic_logging, self.current_epoch,
                            join(self.output_folder, "progress_mtmd.png"))

    # -------------------------------------------------------------------------- checkpoints
    def _extra_checkpoint_state(self) -> dict:
        """The label autoencoder travels in nnU-Net's checkpoint (base.py saves it atomically)."""
        from nnunetv2_mtmd.training.checkpoint import AE_KEY, autoencoder_entry

        extra = {}
        if self.autoencoder is not None:
            extra[AE_KEY] = autoencoder_entry(self.autoencoder, self.autoencoder_trained)
        msc = self._msc_loss()
        if msc is not None and msc.temperatures is not None:  # the learnable MSC temperatures
            extra[MSC_TEMPERATURE_KEY] = msc.temperatures.checkpoint_entry()
        return extra

    def load_checkpoint(self, filename_or_checkpoint):
        super().load_checkpoint(filename_or_checkpoint)
        from nnunetv2_mtmd.architectures.label_autoencoder import freeze
        from nnunetv2_mtmd.training.checkpoint import AE_KEY, load_checkpoint_file, restore_autoencoder

        ckpt = filename_or_checkpoint
        where = str(ckpt) if isinstance(ckpt, str) else "checkpoint"
        msc = self._msc_loss()
        learnable = msc is not None and msc.temperatures is not None
        if isinstance(ckpt, str) and (self.autoencoder is not None or learnable):
            ckpt = load_checkpoint_file(ckpt, map_location=self.device)  # nnU-Net read it unsafely; the plugin safely
        if learnable:
            self._restore_temperatures(msc, ckpt, where)
        if self.autoencoder is not None:
            if ckpt.get(AE_KEY) is not None:
                self.autoencoder_trained = restore_autoencoder(self.autoencoder, ckpt[AE_KEY], where)
                if self.autoencoder_trained:
                    freeze(self.autoencoder)
        for k in EXTRA_LOG_KEYS:  # a checkpoint without a key (older version) gets NaN for its epochs
            values = self.logger.local_logger.my_fantastic_logging.setdefault(k, [])
            values.extend([np.nan] * (self.current_epoch - len(values)))

    def _restore_temperatures(self, msc, ckpt: dict, where: str) -> None:
        """Learnable MSC temperatures from the checkpoint (nnU-Net's optimizer state, restored by nnU-Net,
        holds their momentum); a checkpoint without them keeps the starting values, with a log line."""
        entry = ckpt.get(MSC_TEMPERATURE_KEY)
        if entry is None:
            self.print_to_log_file(f"WARNING: {where} holds no learnable MSC temperatures ('{MSC_TEMPERATURE_KEY}'); "
                                   f"they start again at {self.msc_temperature}.")
            return
        msc.temperatures.load_checkpoint_entry(entry, f"{where}['{MSC_TEMPERATURE_KEY}']")
        self.print_to_log_file("MSC temperatures restored: " + " ".join(f"{t:.4f}" for t in msc.temperature_values()))


class nnUNetTrainerMTMD_DSL_MSC(nnUNetTrainerMTMD):
    """DSL + multi-scale supervised contrastive regularization (all encoder and decoder stages)."""

    lambda_mjap = 0.0


class nnUNetTrainerMTMD_DSL_MSC_LT(nnUNetTrainerMTMD_DSL_MSC):
    """DSL + MSC with a learnable temperature per scale (the 2022 paper's future work), kept in
    ``msc_temperature_range``."""

    msc_learnable_temperature = True


class nnUNetTrainerMTMD_DSL_seed2(nnUNetTrainerMTMD_DSL):
    """DSL trained with another seed: the DSL replicate whose spread against DSL is the retraining noise
    every "beats DSL" claim of the study is judged against."""

    seed = 2


class nnUNetTrainerMTMD_DSL_SSC(nnUNetTrainerMTMD):
    """DSL + single-scale (bottleneck) supervised contrastive regularization (Boutillon et al. 2021)."""

    lambda_mjap = 0.0
    msc_stages = "bottleneck"


class nnUNetTrainerMTMD_DSL_MJAP(nnUNetTrainerMTMD):
    """DSL + multi-joint anatomical priors."""

    lambda_msc = 0.0


class nnUNetTrainerMTMD_Shared(nnUNetTrainerMTMD):
    """The paper's "shared" scheme on nnU-Net: shared convolutions AND shared batch norm, one head
    over all unified labels. The domain code channel is still read and stripped (never convolved),
    so input and label space match the other schemes."""

    lambda_msc = 0.0
    lambda_mjap = 0.0

    @classmethod
    def network_overrides_for(cls, configuration_manager) -> dict:
        dim = len(configuration_manager.patch_size)
        return {"norm_op": f"torch.nn.BatchNorm{dim}d",
                "norm_op_kwargs": {"eps": 1e-5, "momentum": 0.1, "affine": True},
                "head_mode": "shared"}


class nnUNetTrainerMTMD_Shared_MJAP(nnUNetTrainerMTMD_Shared):
    """Shared scheme + multi-joint anatomical priors, with the fully shared label autoencoder (one input
    layer, batch norm and head for all domains, as the paper's Shared+MJAP)."""

    lambda_mjap = LAMBDA_MJAP
    ae_variant = "shared"


# The DSL scheme has no regularizer: defined in base.py, re-exported here. Scheme id -> trainer class of
# every multi-domain scheme of the registry (nnunetv2_mtmd/schemes.py; tests/training/test_trainers.py
# checks each class against its registry entry).
SCHEME_CLASSES: dict[str, type] = {s.name: globals()[s.trainer] for s in MULTI_DOMAIN}

__all__ = ["nnUNetTrainerMTMD_DSL", "nnUNetTrainerMTMD", "nnUNetTrainerMTMD_DSL_MSC", "nnUNetTrainerMTMD_DSL_SSC",
           "nnUNetTrainerMTMD_DSL_MJAP", "nnUNetTrainerMTMD_Shared", "nnUNetTrainerMTMD_Shared_MJAP",
           "nnUNetTrainerMTMD_DSL_MSC_LT", "nnUNetTrainerMTMD_DSL_seed2"]
