"""The stock reference of the same size (:func:`stock_plans`) and the synthetic K-domain specs of the
domain-scaling measurement (:func:`k_domain_spec`)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from nnunetv2_mtmd.apps.benchmark.settings import STOCK_PLANS_NAME
from nnunetv2_mtmd.domains import CODE_CHANNEL_NAME, Domain, DomainLabel, DomainSpec
from nnunetv2_mtmd.errors import InputDataError

#: Stock dynamic-network-architectures classes of the plugin's multi-domain networks.
STOCK_NETWORKS: dict[str, str] = {
    "nnunetv2_mtmd.architectures.unet.MultiDomainPlainConvUNet":
        "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "nnunetv2_mtmd.architectures.unet.MultiDomainResEncUNet":
        "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
}
#: Keyword arguments that only the multi-domain networks take.
MTMD_ONLY_KWARGS = ("domain_label_ids", "head_mode")


def stock_architecture(architecture: dict[str, Any]) -> dict[str, Any]:
    """The plans ``architecture`` entry stock nnU-Net's planner writes for the same network.

    Inverse of :func:`nnunetv2_mtmd.planning.planners.to_multi_domain_architecture`: the backbone
    class of dynamic-network-architectures, ``InstanceNorm{1,2,3}d`` with ``eps=1e-5, affine=True``
    (nnU-Net's default), no domain kwargs. Everything else (stages, features, kernels, strides,
    convolutions per stage) is kept, so the network has the same size."""
    name = architecture["network_class_name"]
    if name not in STOCK_NETWORKS:
        raise InputDataError(
            f"plans architecture 'network_class_name' is {name!r}; expected one of the multi-domain networks "
            f"{', '.join(STOCK_NETWORKS)} (plans written by nnUNetPlannerMTMD)."
        )
    kwargs = {k: v for k, v in architecture["arch_kwargs"].items() if k not in MTMD_ONLY_KWARGS}
    conv_op = str(kwargs["conv_op"])
    dim = int(conv_op[-2]) if conv_op.endswith("d") and conv_op[-2].isdigit() else 2
    kwargs["norm_op"] = f"torch.nn.modules.instancenorm.InstanceNorm{dim}d"
    kwargs["norm_op_kwargs"] = {"eps": 1e-05, "affine": True}
    return {"network_class_name": STOCK_NETWORKS[name], "arch_kwargs": kwargs,
            "_kw_requires_import": list(architecture["_kw_requires_import"])}


def stock_plans(plans: dict[str, Any], plans_name: str = STOCK_PLANS_NAME) -> dict[str, Any]:
    """Deep copy of MTMD ``plans`` with every configuration's architecture made stock
    (:func:`stock_architecture`) and ``plans_name`` replaced. Patch size, batch size, spacing and
    normalization stay identical."""
    out = copy.deepcopy(plans)
    out["plans_name"] = plans_name
    for cfg in out["configurations"].values():
        if "architecture" in cfg:
            cfg["architecture"] = stock_architecture(cfg["architecture"])
    return out


def k_domain_spec(k: int, total_labels: int, code_channel: int = 1) -> DomainSpec:
    """A synthetic domain spec with ``k`` domains sharing ``total_labels`` unified labels evenly
    (domain ``i`` owns ids ``i*L/k + 1 .. (i+1)*L/k``). Keeping the number of unified classes fixed
    makes the network output, the Dice+CE loss and the heads the same size for every K, so the
    measured difference is the cost of the domains themselves (DSBN statistics, head gathering)."""
    if k < 1 or total_labels % k:
        raise ValueError(f"total_labels ({total_labels}) must be a positive multiple of k ({k})")
    per = total_labels // k
    domains = []
    for i in range(k):
        labels = tuple(DomainLabel(f"s{j + 1}", j + 1, i * per + j + 1) for j in range(per))
        domains.append(Domain(f"dom{i + 1}", i + 1, f"Dataset000_Synthetic{i + 1}", labels, num_cases=1))
    return DomainSpec(tuple(domains), code_channel)


def dataset_json_for_spec(spec: DomainSpec, image_channels: Sequence[str] = ("MRI",),
                          file_ending: str = ".nii.gz") -> dict[str, Any]:
    """A merged-dataset dataset.json for ``spec`` (image channels, then the code channel)."""
    chans = {str(i): c for i, c in enumerate(image_channels)}
    chans[str(len(image_channels))] = CODE_CHANNEL_NAME
    return {"channel_names": chans, "labels": spec.label_names(),
            "numTraining": sum(d.num_cases for d in spec.domains), "file_ending": file_ending,
            "mtmd": spec.to_json()}
