"""L = L_seg + lambda2 * MSC + lambda3 * MJAP, only L_seg in eval mode, per-term epoch means."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nnunetv2_mtmd.losses.anatomical_prior import AnatomicalPriorLoss, LabelAutoencoder
from nnunetv2_mtmd.losses.combined import LossTermTracker, RegularizedLoss
from nnunetv2_mtmd.losses.contrastive import MultiScaleContrastiveLoss

IDS = [[1, 2], [3]]


class _Seg(nn.Module):
    """A stand-in segmentation loss with a known value: mean of the first output."""

    def forward(self, output, target):
        return output[0].mean() if isinstance(output, list) else output.mean()


def _state(training, feats, dom):
    return lambda: (training, feats, dom)


@pytest.mark.parametrize("lam_msc,lam_mjap", [(0.1, 0.1), (0.5, 0.0), (0.0, 0.2), (0.0, 0.0)])
def test_total_is_weighted_sum(lam_msc, lam_mjap):
    torch.manual_seed(0)
    feats = [torch.randn(4, 8, 4, 4), torch.randn(4, 16, 2, 2), torch.randn(4, 8, 4, 4)]
    dom = torch.tensor([0, 0, 1, 1])
    ae = LabelAutoencoder(IDS, features=(4, 8), strides=(1, 2))
    msc, mjap = MultiScaleContrastiveLoss(), AnatomicalPriorLoss(ae)
    out = [torch.randn(4, 4, 8, 8), torch.randn(4, 4, 4, 4)]
    tgt = [torch.tensor([1, 2, 3, 0]).view(4, 1, 1, 1).expand(4, 1, 8, 8).float(), torch.zeros(4, 1, 4, 4)]
    loss = RegularizedLoss(_Seg(), _state(True, feats, dom), msc, mjap, lam_msc, lam_mjap)
    expected = out[0].mean() + lam_msc * msc(feats, dom) + lam_mjap * mjap(out[0], tgt[0], dom)
    assert torch.allclose(loss(out, tgt), expected)
    means = loss.tracker.pop_means()
    assert set(means) == {"seg"} | ({"msc"} if lam_msc else set()) | ({"mjap"} if lam_mjap else set())


def test_eval_mode_returns_segmentation_loss_only():
    feats = [torch.randn(2, 4, 2, 2)]
    loss = RegularizedLoss(_Seg(), _state(False, feats, torch.tensor([0, 1])), MultiScaleContrastiveLoss(), None, 1.0)
    out = torch.randn(2, 4, 4, 4)
    assert torch.equal(loss(out, None), out.mean())
    assert loss.tracker.pop_means() == {}


def test_msc_without_positive_is_counted_as_skipped():
    feats = [torch.randn(2, 4, 2, 2)]
    loss = RegularizedLoss(_Seg(), _state(True, feats, torch.tensor([0, 1])), MultiScaleContrastiveLoss(), None, 1.0)
    out = torch.randn(2, 4, 4, 4)
    total = loss(out, None)
    assert torch.isfinite(total) and torch.allclose(total, out.mean())  # MSC is exactly 0
    assert loss.tracker.pop_means()["msc_skipped"] == 1


def test_tracker_means_and_counters():
    t = LossTermTracker()
    for v in (1.0, 2.0, 6.0):
        t.add("seg", torch.tensor(v))
    t.count("skipped")
    t.count("skipped")
    assert t.pop_means() == {"seg": 3.0, "skipped": 2.0}
    assert t.pop_means() == {}


def test_gradient_probe_sees_the_weighted_terms_and_leaves_the_step_unchanged():
    from nnunetv2_mtmd.losses.gradient_ratio import GradientNormProbe

    torch.manual_seed(1)
    conv = nn.Conv2d(2, 4, 1)
    dom = torch.tensor([0, 0, 1, 1])
    x = torch.randn(4, 2, 8, 8)
    tgt = torch.tensor([1, 2, 3, 0]).view(4, 1, 1, 1).expand(4, 1, 8, 8).float()
    ae = LabelAutoencoder(IDS, features=(4, 8), strides=(1, 2))
    grads = []
    for with_probe in (False, True):
        conv.zero_grad()
        out = conv(x)
        feats = [out, out[:, :, ::2, ::2]]
        probe = GradientNormProbe([conv.weight, conv.bias], every=1) if with_probe else None
        loss = RegularizedLoss(_Seg(), _state(True, feats, dom), MultiScaleContrastiveLoss(), AnatomicalPriorLoss(ae),
                               0.5, 0.1, grad_probe=probe)
        loss(out, tgt).backward()
        grads.append(conv.weight.grad.clone())
    assert torch.equal(grads[0], grads[1])  # the probe does not alter nnU-Net's backward
    # the probe's ratios are those of the WEIGHTED terms: recompute them independently
    out = conv(x)
    feats = [out, out[:, :, ::2, ::2]]
    params = [conv.weight, conv.bias]

    def norm(t):
        return sum(float(g.pow(2).sum()) for g in torch.autograd.grad(t, params, retain_graph=True)) ** 0.5

    msc = 0.5 * MultiScaleContrastiveLoss()(feats, dom)
    mjap = 0.1 * AnatomicalPriorLoss(ae)(out, tgt, dom)
    seg = out.mean()
    assert probe.ratios["msc"] == pytest.approx([norm(msc) / norm(seg)], rel=1e-4)
    assert probe.ratios["mjap"] == pytest.approx([norm(mjap) / norm(seg)], rel=1e-4)
