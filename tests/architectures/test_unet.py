"""Tests of the multi-domain U-Nets (PlainConvUNet / ResidualEncoderUNet backbones)."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
from torch import nn

from nnunetv2_mtmd.architectures.dsbn import DomainSpecificBatchNorm2d, DomainSpecificInstanceNorm2d
from nnunetv2_mtmd.architectures.heads import OTHER_DOMAIN_LOGIT, DomainHeads
from nnunetv2_mtmd.architectures.unet import (
    MultiDomainPlainConvUNet,
    MultiDomainResEncUNet,
    decode_domain,
)
from nnunetv2_mtmd.errors import DomainSpecError

IDS = [[1, 2, 3], [4, 5], [6]]  # 3 domains, 7 unified classes
NUM_CLASSES = 7
OWN = {0: [0, 1, 2, 3], 1: [0, 4, 5], 2: [0, 6]}
N_STAGES = 4


def _kwargs(**over):
    kw = dict(
        input_channels=2,  # one image channel + the code channel
        n_stages=N_STAGES,
        features_per_stage=[4, 8, 16, 16],
        conv_op=nn.Conv2d,
        kernel_sizes=[[3, 3]] * N_STAGES,
        strides=[[1, 1], [2, 2], [2, 2], [2, 2]],
        n_conv_per_stage=[2, 2, 2, 2],
        num_classes=NUM_CLASSES,
        n_conv_per_stage_decoder=[2, 2, 2],
        domain_label_ids=IDS,
        conv_bias=True,
        norm_op=DomainSpecificBatchNorm2d,
        norm_op_kwargs={"num_domains": 3, "eps": 1e-5, "momentum": 0.1, "affine": True},
        dropout_op=None,
        dropout_op_kwargs=None,
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=True,
    )
    kw.update(over)
    return kw


def _net(seed=0, **over) -> MultiDomainPlainConvUNet:
    torch.manual_seed(seed)
    net = MultiDomainPlainConvUNet(**_kwargs(**over))
    net.apply(net.initialize)
    return net


def _input(codes, size=32, seed=1, channels=1):
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(len(codes), channels, size, size, generator=g)
    code = torch.tensor(codes, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, size, size)
    return torch.cat([img, code], 1)


def test_ds_on_off_identical_state_dict_keys_and_strict_load():
    on, off = _net(deep_supervision=True), _net(seed=5, deep_supervision=False)
    assert list(on.state_dict().keys()) == list(off.state_dict().keys())
    assert all(on.state_dict()[k].shape == v.shape for k, v in off.state_dict().items())
    off.load_state_dict(on.state_dict(), strict=True)
    on.eval(), off.eval()
    x = _input([1, 2, 3])
    out_on, out_off = on(x), off(x)
    assert isinstance(out_on, list) and len(out_on) == N_STAGES - 1
    assert [tuple(o.shape[2:]) for o in out_on] == [(32, 32), (16, 16), (8, 8)]  # high -> low resolution
    torch.testing.assert_close(out_off, out_on[0])
    # nnU-Net toggles deep supervision through the decoder attribute
    on.decoder.deep_supervision = False
    assert isinstance(on(x), torch.Tensor) and not on.deep_supervision
    on.deep_supervision = True
    assert on.decoder.deep_supervision and isinstance(on(x), list)
    # the decoder's single-domain seg layers are gone; heads are always built for every decoder stage
    assert len(on.decoder.seg_layers) == 0
    assert len(off.heads) == N_STAGES - 1 and all(isinstance(h, DomainHeads) for h in off.heads)


def test_other_domain_channels_are_exactly_minus_1000_at_every_scale():
    net = _net()
    codes = [3, 1, 2, 1]
    for out in net(_input(codes)):
        assert out.shape[1] == NUM_CLASSES
        for i, c in enumerate(codes):
            own = OWN[c - 1]
            other = [ch for ch in range(NUM_CLASSES) if ch not in own]
            assert (out[i, other] == OTHER_DOMAIN_LOGIT).all()
            assert torch.isfinite(out[i, own]).all() and (out[i, own] != OTHER_DOMAIN_LOGIT).all()


@pytest.mark.parametrize(
    "code_values,expected",
    [
        ([1.0, 2.0, 3.0], [0, 1, 2]),
        ([3.0, 3.0, 1.0], [2, 2, 0]),
        ([2.0000001, 0.9999, 2.9], [1, 0, 2]),  # resampling noise rounds to the nearest code
    ],
)
def test_decode_domain_table(code_values, expected):
    x = _input(code_values, size=8)
    assert decode_domain(x, 3).tolist() == expected


def test_domain_decoded_from_zero_padded_tile():
    net = _net().eval()
    x = _input([2, 3, 1])
    x[:, :, :, 16:] = 0  # right half is zero padding (image AND code channel), as in a border tile
    x[2, :, 20:, :] = 0  # another tile padded at the bottom as well
    assert decode_domain(x, 3).tolist() == [1, 2, 0]
    with torch.no_grad():
        auto = net(x)
        explicit = net(x, domain_idx=torch.tensor([1, 2, 0]))
    for a, e in zip(auto, explicit):
        assert torch.equal(a, e)


@pytest.mark.parametrize("codes,found", [([1, 4], "[4]"), ([0, 2], "[0]"), ([5, 0, 1], "[0, 5]")])
def test_invalid_code_raises_clear_error(codes, found):
    net = _net()
    with pytest.raises(ValueError, match=r"invalid domain code\(s\) " + re.escape(found)) as e:
        net(_input(codes, size=16))
    assert "1..3" in str(e.value) and "nnUNetv2_mtmd_prepare_input" in str(e.value)


def test_invalid_explicit_domain_idx_and_channel_count():
    net = _net()
    with pytest.raises(ValueError, match=r"invalid domain index\(es\) \[3\]"):
        net(_input([1, 2], size=16), domain_idx=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="expected 2 input channels"):
        net(torch.zeros(1, 1, 16, 16))


def test_code_channel_is_never_convolved():
    net = _net().eval()
    first_conv = net.get_submodule(net.keys_to_in_proj[0])
    assert first_conv.in_channels == 1  # image channels only
    x = _input([2, 1], size=32)
    # same domains, but a code channel with a spatial pattern (zeros in places): if the code were
    # convolved, the output would change
    x_pattern = x.clone()
    x_pattern[:, -1, ::3, ::2] = 0
    x_pattern[:, -1, 5:9, 7:20] = 0.7  # rounds to 1 < max: the max still decides
    with torch.no_grad():
        ref, pat = net(x), net(x_pattern)
        x_img = x.clone()
        x_img[:, 0, 10, 10] += 1.0
        changed = net(x_img)
    for r, p in zip(ref, pat):
        assert torch.equal(r, p)
    assert not torch.equal(changed[0], ref[0])


def test_mixed_domain_batch_equals_each_group_alone_in_train_mode():
    net = _net(deep_supervision=True).train()
    codes = [1, 3, 2, 1, 3, 2]
    x = _input(codes, size=32, seed=7)
    out_mixed = copy.deepcopy(net)(x)
    for k in (1, 2, 3):
        idx = [i for i, c in enumerate(codes) if c == k]
        out_alone = copy.deepcopy(net)(x[idx])
        for m, a in zip(out_mixed, out_alone):
            torch.testing.assert_close(m[idx], a, rtol=1e-4, atol=1e-4)


def test_explicit_domain_idx_equals_code_channel():
    net = _net().eval()
    x = _input([3, 1, 2])
    with torch.no_grad():
        a = net(x)
        b = net(x, domain_idx=torch.tensor([2, 0, 1]))
    for u, v in zip(a, b):
        assert torch.equal(u, v)


def _plans_arch_2d(norm_op: str, n_domains: int = 3, class_name: str = "MultiDomainPlainConvUNet") -> dict:
    """``configurations['2d']['architecture']`` shaped like nnU-Net 2.8.1's ExperimentPlanner output."""
    arch_kwargs = {
        "n_stages": N_STAGES,
        "features_per_stage": [4, 8, 16, 16],
        "conv_op": "torch.nn.modules.conv.Conv2d",
        "kernel_sizes": [[3, 3], [3, 3], [3, 3], [3, 3]],
        "strides": [[1, 1], [2, 2], [2, 2], [2, 2]],
        "n_conv_per_stage": [2, 2, 2, 2],
        "n_conv_per_stage_decoder": [2, 2, 2],
        "conv_bias": True,
        "norm_op": norm_op,
        "norm_op_kwargs": {"num_domains": n_domains, "eps": 1e-05, "momentum": 0.1, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
        "domain_label_ids": IDS,
        "head_mode": "domain",
    }
    if class_name == "MultiDomainResEncUNet":
        arch_kwargs["n_blocks_per_stage"] = arch_kwargs.pop("n_conv_per_stage")
        arch_kwargs["n_conv_per_stage_decoder"] = [1, 1, 1]
    arch = {
        "network_class_name": f"nnunetv2_mtmd.architectures.unet.{class_name}",
        "arch_kwargs": arch_kwargs,
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    return json.loads(json.dumps(arch))  # exactly what survives plans.json


@pytest.mark.parametrize("class_name", ["MultiDomainPlainConvUNet", "MultiDomainResEncUNet"])
def test_get_network_from_plans_round_trip(class_name):
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    arch = _plans_arch_2d("nnunetv2_mtmd.architectures.dsbn.DomainSpecificBatchNorm2d", class_name=class_name)
    cm = ConfigurationManager({"architecture": arch})
    nets = {}
    for ds in (True, False):
        torch.manual_seed(0)
        nets[ds] = get_network_from_plans(
            cm.network_arch_class_name, cm.network_arch_init_kwargs, cm.network_arch_init_kwargs_req_import,
            input_channels=2, output_channels=NUM_CLASSES, allow_init=True, deep_supervision=ds,
        )
    net = nets[True]
    assert type(net).__name__ == class_name
    norms = [m for m in net.modules() if isinstance(m, DomainSpecificBatchNorm2d)]
    assert norms and all(m.num_domains == 3 and m.weight.shape[0] == 3 for m in norms)
    assert net.deep_supervision and not nets[False].deep_supervision
    nets[False].load_state_dict(net.state_dict(), strict=True)
    out = net(_input([1, 2, 3]))
    assert [tuple(o.shape) for o in out] == [(3, 7, 32, 32), (3, 7, 16, 16), (3, 7, 8, 8)]
    assert net.compute_conv_feature_map_size((32, 32)) > 0


def test_norm_op_kwargs_num_domains_checked_and_filled():
    with pytest.raises(DomainSpecError, match="num_domains'] is 2 but domain_label_ids describe 3"):
        _net(norm_op_kwargs={"num_domains": 2, "eps": 1e-5})
    net = _net(norm_op_kwargs={"eps": 1e-5, "affine": True})
    assert all(m.num_domains == 3 for m in net.modules() if isinstance(m, DomainSpecificBatchNorm2d))


@pytest.mark.parametrize(
    "over,err,match",
    [
        ({"num_classes": 6}, DomainSpecError, "num_classes is 6 but domain_label_ids"),
        ({"domain_label_ids": [[1, 2], [2, 3]]}, DomainSpecError, "also used by domain 0"),
        ({"head_mode": "joint"}, ValueError, "head_mode must be one of"),
        ({"input_channels": 1}, ValueError, "at least 2"),
    ],
)
def test_constructor_validation(over, err, match):
    with pytest.raises(err, match=match):
        MultiDomainPlainConvUNet(**_kwargs(**over))


def test_shared_head_mode():
    net = _net(head_mode="shared")
    assert all(h.shared and len(h.heads) == 1 for h in net.heads)
    out = net(_input([1, 3]))
    for o in out:
        assert torch.isfinite(o).all() and not (o == OTHER_DOMAIN_LOGIT).any()


@pytest.mark.parametrize(
    "norm_op,norm_kwargs",
    [
        (nn.BatchNorm2d, {"eps": 1e-5, "affine": True}),
        (nn.InstanceNorm2d, {"eps": 1e-5, "affine": True}),
        (DomainSpecificInstanceNorm2d, {"num_domains": 3, "eps": 1e-5, "affine": True}),
    ],
)
def test_any_norm_op_works(norm_op, norm_kwargs):
    net = _net(norm_op=norm_op, norm_op_kwargs=norm_kwargs, deep_supervision=False)
    out = net(_input([2, 1]))
    assert out.shape == (2, NUM_CLASSES, 32, 32) and (out[0, [1, 2, 3, 6]] == OTHER_DOMAIN_LOGIT).all()


def test_resenc_variant_builds_runs_and_initializes():
    kw = _kwargs()
    kw["n_blocks_per_stage"] = kw.pop("n_conv_per_stage")
    kw["n_conv_per_stage_decoder"] = [1, 1, 1]
    torch.manual_seed(0)
    net = MultiDomainResEncUNet(**kw)
    net.apply(net.initialize)
    from dynamic_network_architectures.building_blocks.residual import BasicBlockD

    blocks = [m for m in net.modules() if isinstance(m, BasicBlockD)]
    assert blocks and all((b.conv2.norm.weight == 0).all() for b in blocks)  # zero-init, all domains
    assert net.get_submodule(net.keys_to_in_proj[0]).in_channels == 1
    out = net(_input([3, 2, 1]))
    assert [tuple(o.shape) for o in out] == [(3, 7, 32, 32), (3, 7, 16, 16), (3, 7, 8, 8)]
    assert (out[0][0, :6] == OTHER_DOMAIN_LOGIT).sum() == 5 * 32 * 32


def test_features_collected_only_when_enabled():
    net = _net()
    net(_input([1, 2]))
    assert net.last_features is None
    assert net.last_domain_idx.tolist() == [0, 1]  # always kept: MJAP needs it without features
    net.collect_features = True
    net(_input([1, 2, 3]))
    feats = net.last_features
    assert len(feats) == 2 * N_STAGES - 1
    expected = [(4, 32), (8, 16), (16, 8), (16, 4), (16, 8), (8, 16), (4, 32)]  # encoder, then decoder
    assert [(f.shape[1], f.shape[2]) for f in feats] == expected
    assert all(f.shape[0] == 3 and f.requires_grad for f in feats)
    assert net.last_domain_idx.tolist() == [0, 1, 2]
    net.collect_features = False
    net(_input([1]))
    assert net.last_features is None


def test_backward_reaches_shared_weights_and_present_heads_only():
    net = _net(deep_supervision=False)
    out = net(_input([1, 1]))
    out.sum().backward()
    last = net.heads[-1]
    assert (last.heads[0].weight.grad != 0).any()
    assert last.heads[1].weight.grad is None or (last.heads[1].weight.grad == 0).all()
    stem = net.get_submodule(net.keys_to_in_proj[0])
    assert (stem.weight.grad != 0).any()
    dsbn = net.encoder.stages[0][0].convs[0].norm
    assert (dsbn.weight.grad[0] != 0).any() and (dsbn.weight.grad[1:] == 0).all()


@pytest.mark.parametrize("deep_supervision", [True, False])
def test_decoder_copy_equals_upstream_decoder_forward(deep_supervision):
    """compat.unet_decoder_forward with the decoder's own seg_layers is dynamic-network-architectures'
    UNetDecoder.forward (the installed one), plus the stage outputs."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    from nnunetv2_mtmd.architectures.unet import unwrap_network
    from nnunetv2_mtmd.compat import unet_decoder_forward

    kw = {k: v for k, v in _kwargs(deep_supervision=deep_supervision).items() if k != "domain_label_ids"}
    kw.update(input_channels=1, norm_op=nn.BatchNorm2d, norm_op_kwargs={"eps": 1e-5, "affine": True})
    torch.manual_seed(0)
    net = PlainConvUNet(**kw).eval()
    skips = net.encoder(torch.randn(2, 1, 32, 32))
    with torch.no_grad():
        expected = net.decoder(skips)
        got, stages = unet_decoder_forward(net.decoder, skips, lambda s, h: net.decoder.seg_layers[s](h))
    if deep_supervision:
        assert len(got) == len(expected) == N_STAGES - 1
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, rtol=0, atol=0)
    else:
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert [tuple(s.shape[2:]) for s in stages] == [(8, 8), (16, 16), (32, 32)]  # lowest resolution first
    assert unwrap_network(net) is net


def test_unwrap_network_looks_through_wrappers():
    from nnunetv2_mtmd.architectures.unet import unwrap_network
    from nnunetv2_mtmd.training import ddp

    net = _net()

    class Compiled(nn.Module):  # what torch.compile's OptimizedModule looks like to unwrap_network
        def __init__(self, mod):
            super().__init__()
            self._orig_mod = mod

    assert unwrap_network(Compiled(net)) is net and unwrap_network(net) is net
    assert ddp.unwrap_network is unwrap_network  # the old import path
