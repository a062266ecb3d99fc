"""Planner rules: each domain gets one vote, batch size a multiple of K, MTMD architecture entry."""

from __future__ import annotations

import pytest

from nnunetv2_mtmd.domains import Domain, DomainLabel, DomainSpec
from nnunetv2_mtmd.planning.planners import (
    domain_balanced_batch_size,
    domain_balanced_fingerprint,
    to_multi_domain_architecture,
)


def _spec(sizes=(1, 2, 1)):
    domains, uid = [], 1
    for i, n in enumerate(sizes):
        labels = tuple(DomainLabel(f"l{j}", j + 1, uid + j) for j in range(n))
        uid += n
        domains.append(Domain(f"d{i}", i + 1, f"Dataset90{i}_X", labels, 3))
    return DomainSpec(tuple(domains), 1)


def test_each_domain_one_vote():
    # domain d0: 4 cases at 1 mm, d1: 1 case at 3 mm, d2: 1 case at 5 mm.
    ids = ["d0_a", "d0_b", "d0_c", "d0_d", "d1_a", "d2_a"]
    sp = [[2, 1, 1]] * 4 + [[2, 3, 3], [2, 5, 5]]
    sh = [[10, 100, 100]] * 4 + [[10, 40, 40], [10, 20, 20]]
    out_sp, out_sh = domain_balanced_fingerprint(ids, sp, sh, _spec())
    assert out_sp == [[2, 1, 1], [2, 3, 3], [2, 5, 5]]
    assert out_sh == [[10, 100, 100], [10, 40, 40], [10, 20, 20]]
    # nnU-Net's median over cases would be 1 mm (d0 outvotes); over domain medians it is 3 mm.
    import numpy as np

    assert np.median(np.array(sp)[:, 1]) == 1 and np.median(np.array(out_sp)[:, 1]) == 3


@pytest.mark.parametrize("bs,k,expected", [(12, 3, 12), (13, 3, 12), (14, 3, 12), (2, 3, 6), (5, 2, 4),
                                           (57, 3, 57), (7, 10, 20), (40, 10, 40), (49, 10, 40)])
def test_batch_size_multiple_of_k_with_two_per_domain(bs, k, expected):
    """Rounded down (never more memory than nnU-Net planned), at least 2 per domain."""
    assert domain_balanced_batch_size(bs, k) == expected


def test_architecture_entry():
    arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"conv_op": "torch.nn.modules.conv.Conv2d", "norm_op": "torch.nn.InstanceNorm2d",
                            "norm_op_kwargs": {"eps": 1e-5, "affine": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    out = to_multi_domain_architecture(arch, _spec())
    assert out["network_class_name"] == "nnunetv2_mtmd.architectures.unet.MultiDomainPlainConvUNet"
    kw = out["arch_kwargs"]
    assert kw["norm_op"] == "nnunetv2_mtmd.architectures.dsbn.DomainSpecificBatchNorm2d"
    assert kw["norm_op_kwargs"]["num_domains"] == 3
    assert kw["domain_label_ids"] == [[1], [2, 3], [4]]
    assert arch["arch_kwargs"]["norm_op"] == "torch.nn.InstanceNorm2d"  # input not mutated
    with pytest.raises(ValueError, match="No multi-domain version"):
        to_multi_domain_architecture(dict(arch, network_class_name="x.ResidualUNet"), _spec())


#: Every dotted class path the plugin's planner has ever written into a plans.json (git history of
#: planning/planners.py); nnU-Net resolves them with pydoc.locate when it rebuilds a network.
HISTORICAL_PLANS_PATHS = [
    "nnunetv2_mtmd.architectures.unet.MultiDomainPlainConvUNet",
    "nnunetv2_mtmd.architectures.unet.MultiDomainResEncUNet",
    "nnunetv2_mtmd.architectures.dsbn.DomainSpecificBatchNorm1d",
    "nnunetv2_mtmd.architectures.dsbn.DomainSpecificBatchNorm2d",
    "nnunetv2_mtmd.architectures.dsbn.DomainSpecificBatchNorm3d",
]


def _dotted_strings(obj) -> list[str]:
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _dotted_strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _dotted_strings(v)]
    prefixes = ("nnunetv2_mtmd.", "torch.", "dynamic_network_architectures.")
    return [obj] if isinstance(obj, str) and obj.startswith(prefixes) else []


@pytest.mark.parametrize("path", HISTORICAL_PLANS_PATHS)
def test_every_dotted_path_ever_written_resolves(path):
    import pydoc

    obj = pydoc.locate(path)
    assert obj is not None and obj.__name__ == path.rsplit(".", 1)[1]


def test_every_dotted_path_of_todays_plans_resolves():
    """The architecture entry today's planner writes (class, norm op, conv op, ...) resolves with nnU-Net's
    pydoc.locate, and is one of the paths old results folders hold."""
    import pydoc

    from nnunetv2_mtmd.planning.planners import DSBN_OPS, MTMD_NETWORKS

    stock = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
             "arch_kwargs": {"n_stages": 2, "conv_op": "torch.nn.modules.conv.Conv2d",
                             "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
                             "nonlin": "torch.nn.LeakyReLU", "dropout_op": None},
             "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    arch = to_multi_domain_architecture(stock, _spec())
    paths = _dotted_strings(arch)
    assert arch["network_class_name"] in paths and arch["arch_kwargs"]["norm_op"] in paths
    for p in paths:
        assert pydoc.locate(p) is not None, f"{p} does not resolve"
    written = set(MTMD_NETWORKS.values()) | set(DSBN_OPS.values())
    assert written <= set(HISTORICAL_PLANS_PATHS)
    assert {p for p in paths if p.startswith("nnunetv2_mtmd.")} <= set(HISTORICAL_PLANS_PATHS)


@pytest.mark.slow
def test_3d_patch_shrinks_so_that_two_samples_per_domain_fit_the_memory_target(nnunet_dirs, caplog):
    """With a memory target so small that nnU-Net fits only its minimum batch of 2 into the 3d_fullres
    patch, the MTMD planner shrinks the patch (nnU-Net's own patch search, on a smaller shape) until
    2 per domain fit: checked independently with stock nnU-Net's batch formula on the final patch (the
    5 % dataset cap lifted in both, it is no memory limit); the plans keep the data's median shape."""
    import logging
    import subprocess

    import numpy as np
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    from nnunetv2_mtmd.planning.planners import nnUNetPlannerMTMD
    from tests.conftest import venv_bin
    from tests.datagen import make_raw_dataset

    raw = nnunet_dirs["raw"]
    for i, (did, name) in enumerate(((901, "A"), (902, "B"), (903, "C"))):
        make_raw_dataset(raw, did, name, [f"s{i}"], n_cases=2, shape=(24, 64, 64), seed=i, spacing=(1.0, 1.0, 1.5))
    env = dict(__import__("os").environ)
    for cmd in (["nnUNetv2_mtmd_merge", "-d", "901", "902", "903", "--domains", "a", "b", "c", "-o", "950"],
                ["nnUNetv2_extract_fingerprint", "-d", "950", "-np", "1"]):
        proc = subprocess.run([venv_bin(cmd[0]), *cmd[1:]], env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]

    def plan(cls, shape=None):
        pl = cls(950, gpu_memory_target_in_gb=0.05, plans_name=f"probe_{cls.__name__}")
        pl.max_dataset_covered = 1e9
        if shape is None:
            return pl, pl.plan_experiment()["configurations"]["3d_fullres"]
        fp = pl.dataset_fingerprint
        spacing = pl.determine_fullres_target_spacing()
        n_vox = float(np.prod(np.median(fp["shapes_after_crop"], 0)) * len(pl.dataset))
        return pl, pl.get_plans_for_configuration(spacing, shape, "x", n_vox, {})

    with caplog.at_level(logging.INFO, logger="nnunetv2_mtmd.planning.planners"):
        _, mtmd = plan(nnUNetPlannerMTMD)
    _, stock = plan(ExperimentPlanner)
    assert stock["batch_size"] < 6, "the memory target must bind for this test"
    assert mtmd["batch_size"] % 3 == 0 and mtmd["batch_size"] >= 6
    assert np.prod(mtmd["patch_size"]) < np.prod(stock["patch_size"])
    assert mtmd["median_image_size_in_voxels"] == stock["median_image_size_in_voxels"]
    # stock nnU-Net, planning exactly the final patch, allows at least 2 per domain
    _, check = plan(ExperimentPlanner, shape=tuple(mtmd["patch_size"]))
    assert list(check["patch_size"]) == list(mtmd["patch_size"]) and check["batch_size"] >= 6
    assert any("2 samples per domain" in r.getMessage() for r in caplog.records)
