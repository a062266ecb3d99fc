"""Experiment planners for merged multi-domain datasets (``-pl nnUNetPlannerMTMD``).

They plan exactly like nnU-Net's planners, with three changes:

1. **Every domain gets one vote** in the target spacing and the median image shape (hence the patch
   size). nnU-Net takes medians over all cases, so a domain with 29 cases outvotes one with 9. Here
   the fingerprint's per-case spacings and shapes are first reduced to one median per domain, and
   nnU-Net's own rules (median, anisotropy rule, patch-size search) run on those K representatives.
   See :func:`domain_balanced_fingerprint`.
2. **Batch size** is a multiple of K with at least 2 samples per domain, because the trainer draws
   exactly B/K samples per domain, within nnU-Net's memory target: nnU-Net's batch is rounded *down*
   to a multiple of K (:func:`domain_balanced_batch_size`), and where nnU-Net plans fewer than 2K
   samples (3D: usually its minimum of 2) the patch is shrunk, as nnU-Net shrinks it, until the
   planned batch holds 2K (:meth:`_MTMDPlannerMixin.get_plans_for_configuration`; the log names the
   plan before and after).
3. **Architecture**: the plans' network becomes the multi-domain U-Net
   (:mod:`nnunetv2_mtmd.architectures.unet`) with domain-specific batch norm as ``norm_op`` and the
   domain label ids in its kwargs, so ``nnUNetv2_predict`` rebuilds it from plans.json alone.

The planner still writes ``nnUNetPlans`` (users run the stock command without ``-p``) and keeps the
``DefaultPreprocessor`` (preprocessor names are resolved again at prediction time).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (
    nnUNetPlannerResEncL,
    nnUNetPlannerResEncM,
)

from nnunetv2_mtmd.domains import DomainSpec

logger = logging.getLogger(__name__)

MTMD_NETWORKS = {
    "PlainConvUNet": "nnunetv2_mtmd.architectures.unet.MultiDomainPlainConvUNet",
    "ResidualEncoderUNet": "nnunetv2_mtmd.architectures.unet.MultiDomainResEncUNet",
}
DSBN_OPS = {
    1: "nnunetv2_mtmd.architectures.dsbn.DomainSpecificBatchNorm1d",
    2: "nnunetv2_mtmd.architectures.dsbn.DomainSpecificBatchNorm2d",
    3: "nnunetv2_mtmd.architectures.dsbn.DomainSpecificBatchNorm3d",
}


def domain_balanced_fingerprint(
    case_ids: list[str], spacings: list, shapes: list, spec: DomainSpec
) -> tuple[list[list[float]], list[list[float]]]:
    """Reduce per-case spacings and shapes to one median per domain (each domain one vote).

    Returns (spacings, shapes), one entry per domain present, in domain order."""
    if not (len(case_ids) == len(spacings) == len(shapes)):
        raise ValueError(
            f"fingerprint has {len(spacings)} spacings and {len(shapes)} shapes for {len(case_ids)} cases"
        )
    groups: dict[int, list[int]] = {}
    for i, c in enumerate(case_ids):
        groups.setdefault(spec.domain_of_case(c).index, []).append(i)
    out_sp, out_sh = [], []
    for d in sorted(groups):
        idx = groups[d]
        out_sp.append(np.median(np.asarray(spacings, dtype=float)[idx], 0).tolist())
        out_sh.append(np.median(np.asarray(shapes, dtype=float)[idx], 0).tolist())
    return out_sp, out_sh


def domain_balanced_batch_size(batch_size: int, num_domains: int, min_per_domain: int = 2) -> int:
    """``batch_size`` rounded down to a multiple of K (never more memory than planned), at least
    ``min_per_domain * K`` (more than planned only when the patch cannot shrink further)."""
    return max(min_per_domain, int(batch_size) // num_domains) * num_domains


def to_multi_domain_architecture(architecture: dict[str, Any], spec: DomainSpec) -> dict[str, Any]:
    """Turn a stock plans ``architecture`` entry into the multi-domain network's entry."""
    cls = architecture["network_class_name"].rsplit(".", 1)[-1]
    if cls not in MTMD_NETWORKS:
        raise ValueError(f"No multi-domain version of {cls}; supported: {', '.join(MTMD_NETWORKS)}")
    kwargs = dict(architecture["arch_kwargs"])
    dim = int(kwargs["conv_op"][-2]) if kwargs["conv_op"].endswith("d") else 2
    kwargs["norm_op"] = DSBN_OPS[dim]
    kwargs["norm_op_kwargs"] = {"num_domains": spec.num_domains, "eps": 1e-5, "momentum": 0.1, "affine": True}
    kwargs["domain_label_ids"] = spec.domain_label_ids
    kwargs["head_mode"] = "domain"
    req = tuple(architecture["_kw_requires_import"])
    return {"network_class_name": MTMD_NETWORKS[cls], "arch_kwargs": kwargs, "_kw_requires_import": req}


class _MTMDPlannerMixin:
    """Shared logic of the MTMD planners; combine with an nnU-Net planner class."""

    def _mtmd_setup(self) -> None:
        self.domain_spec = DomainSpec.from_dataset_json(self.dataset_json)
        fp = self.dataset_fingerprint
        case_ids = list(self.dataset.keys())
        sp, sh = domain_balanced_fingerprint(case_ids, fp["spacings"], fp["shapes_after_crop"], self.domain_spec)
        logger.info("nnUNetPlannerMTMD: planning on per-domain median spacings %s and shapes %s", sp, sh)
        # The fingerprint is only read here, never written back: swapping in the K per-domain
        # representatives makes every nnU-Net rule (median, anisotropy, patch size) domain-balanced.
        self.per_case_fingerprint = {"spacings": fp["spacings"], "shapes_after_crop": fp["shapes_after_crop"]}
        fp["spacings"], fp["shapes_after_crop"] = sp, sh

    #: how often the patch may shrink to fit 2 samples per domain into nnU-Net's memory target
    MAX_PATCH_SHRINKS = 60

    def memory_batch_size(self, plan: dict[str, Any]) -> int:
        """The batch nnU-Net's memory target allows for ``plan``'s (stock) network and patch: nnU-Net's own
        formula, ``round(reference / estimate * reference batch)``, before its cap of 5 % of the dataset."""
        arch = plan["architecture"]
        estimate = self.static_estimate_VRAM_usage(
            tuple(plan["patch_size"]), len(self.dataset_json["channel_names"]), len(self.dataset_json["labels"]),
            arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"])
        two_d = len(plan["patch_size"]) == 2
        reference = (self.UNet_reference_val_2d if two_d else self.UNet_reference_val_3d) * (
            self.UNet_vram_target_GB / self.UNet_reference_val_corresp_GB)
        ref_bs = self.UNet_reference_val_corresp_bs_2d if two_d else self.UNet_reference_val_corresp_bs_3d
        return int(round(reference / estimate * ref_bs))

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier, approximate_n_voxels_dataset, _cache):
        def plan_for(shape):
            return super(_MTMDPlannerMixin, self).get_plans_for_configuration(
                spacing, shape, data_identifier, approximate_n_voxels_dataset, _cache)

        k = self.domain_spec.num_domains
        plan = first = plan_for(median_shape)
        shape = np.array(median_shape, dtype=float)  # a copy: nnU-Net keeps median_shape in the plan
        median = shape[: len(spacing)].copy()
        shrinks = 0
        # nnU-Net shrinks the patch until a batch of 2 fits its memory target; 2 per domain needs 2K
        # samples: shrink the patch further (the axis largest relative to the median shape, as nnU-Net
        # does) by planning on a smaller shape, until the memory target allows 2K. (nnU-Net's cap of the
        # batch at 5 % of the dataset is no memory limit: it does not shrink the patch.)
        while self.memory_batch_size(plan) < 2 * k and shrinks < self.MAX_PATCH_SHRINKS:
            patch = np.asarray(plan["patch_size"], dtype=float)
            shape[: len(spacing)] = np.minimum(shape[: len(spacing)], patch)
            axis = int(np.argmax(patch / median))
            shape[axis] = max(1.0, np.floor(shape[axis] * 0.9))
            plan = plan_for(tuple(shape))
            shrinks += 1
        if shrinks:
            fits = self.memory_batch_size(plan) >= 2 * k
            (logger.info if fits else logger.warning)(
                "nnUNetPlannerMTMD (%s): nnU-Net planned batch %d with patch %s; for 2 samples per domain (batch "
                "%d) within its memory target the patch is %s%s", data_identifier, first["batch_size"],
                list(first["patch_size"]), 2 * k, list(plan["patch_size"]),
                "" if fits else " -- still too large after shrinking: the batch exceeds the memory target")
            # the shrunk shape only steered nnU-Net's patch search: the plans keep the data's median
            plan["median_image_size_in_voxels"] = first["median_image_size_in_voxels"]
        plan["batch_size"] = domain_balanced_batch_size(plan["batch_size"], k)
        plan["architecture"] = to_multi_domain_architecture(plan["architecture"], self.domain_spec)
        return plan


class nnUNetPlannerMTMD(_MTMDPlannerMixin, ExperimentPlanner):
    """nnU-Net's default planner (PlainConvUNet) for merged multi-domain datasets; writes ``nnUNetPlans``."""

    def __init__(self, dataset_name_or_id, gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str = "nnUNetPlans",
                 overwrite_target_spacing=None, suppress_transpose: bool = False):
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing, suppress_transpose)
        self._mtmd_setup()


class nnUNetPlannerMTMDResEncM(_MTMDPlannerMixin, nnUNetPlannerResEncM):
    """ResEnc M preset for merged multi-domain datasets; writes ``nnUNetResEncUNetMPlans`` like stock."""

    def __init__(self, dataset_name_or_id, gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str = "nnUNetResEncUNetMPlans",
                 overwrite_target_spacing=None, suppress_transpose: bool = False):
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing, suppress_transpose)
        self._mtmd_setup()


class nnUNetPlannerMTMDResEncL(_MTMDPlannerMixin, nnUNetPlannerResEncL):
    """ResEnc L preset for merged multi-domain datasets; writes ``nnUNetResEncUNetLPlans`` like stock."""

    def __init__(self, dataset_name_or_id, gpu_memory_target_in_gb: float = 24,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str = "nnUNetResEncUNetLPlans",
                 overwrite_target_spacing=None, suppress_transpose: bool = False):
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing, suppress_transpose)
        self._mtmd_setup()


__all__ = ["nnUNetPlannerMTMD", "nnUNetPlannerMTMDResEncM", "nnUNetPlannerMTMDResEncL"]
