"""Numerical safety (issue 7, item 2): no NaN/inf in any loss term or gradient over 240 random batches.

The full training objective is run as the trainer runs it: a small multi-domain U-Net with DSBN
(deep supervision, feature collection), nnU-Net's own Dice+CE loss with its deep-supervision
wrapper, and ``RegularizedLoss`` adding MSC (all stages) and MJAP (a frozen label autoencoder);
plus the label autoencoder's own training loss (CE + lambda1 * MSC, the MJAP phase 1). Batches cycle
through the hard cases of the issue, in fp32 and under CPU autocast (bfloat16 and float16):

- a domain with a single sample in the batch, every sample of its own domain (no positive pair:
  MSC skipped and counted), a single-domain batch;
- all-background patches, constant images (zero and non-zero), extreme intensities;
- random labels of the right domain (the ordinary case).

fp16 cannot represent the first convolution's output once image values reach ~1e4 (65504 is its
largest finite value; measured here: 1e3 fine, 1e4 overflows) - true of any fp16 network, stock
nnU-Net included, whose preprocessing z-scores images to O(1). Extreme intensities are therefore
1e6 in fp32, 1e5 in bfloat16 and 1e3 in float16; :func:`test_fp16_overflow_is_left_out_and_counted`
shows what happens beyond: the regularizers are left out of the loss and counted, explicitly.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

from nnunetv2_mtmd.architectures.dsbn import DomainSpecificBatchNorm2d
from nnunetv2_mtmd.architectures.unet import MultiDomainPlainConvUNet
from nnunetv2_mtmd.losses.anatomical_prior import (
    AnatomicalPriorLoss,
    LabelAutoencoder,
    autoencoder_loss,
    labels_to_onehot,
)
from nnunetv2_mtmd.losses.combined import RegularizedLoss
from nnunetv2_mtmd.losses.contrastive import MultiScaleContrastiveLoss

IDS = [[1, 2], [3], [4, 5]]  # three domains, unified labels 1..5
NUM_CLASSES = 6
PATCH = 16
N_BATCHES = 240

# domain of every sample: (name, domain indices)
COMPOSITIONS = [
    ("balanced", [0, 0, 1, 1, 2, 2]),
    ("one-sample-domain", [0, 0, 1, 1, 1, 2]),
    ("each-domain-once", [0, 1, 2]),  # no anchor has a positive: MSC skipped (counted)
    ("single-domain", [1, 1, 1, 1]),
]
CONTENTS = ["random", "all-background", "constant-zero", "constant-five", "extreme"]
PRECISIONS = [None, torch.bfloat16, torch.float16]
EXTREME = {None: 1e6, torch.bfloat16: 1e5, torch.float16: 1e3}


def _cpu_autocast_supports(dtype: torch.dtype) -> bool:
    try:
        with torch.autocast("cpu", dtype=dtype):
            torch.nn.functional.conv2d(torch.ones(1, 1, 3, 3), torch.ones(1, 1, 1, 1))
        return True
    except (RuntimeError, AssertionError):
        return False


def build_network() -> MultiDomainPlainConvUNet:
    net = MultiDomainPlainConvUNet(
        2, 3, [4, 8, 16], torch.nn.Conv2d, 3, [1, 2, 2], 2, NUM_CLASSES, 2, IDS, conv_bias=True,
        norm_op=DomainSpecificBatchNorm2d,
        norm_op_kwargs={"num_domains": 3, "eps": 1e-5, "momentum": 0.1, "affine": True},
        nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=True,
    )
    net.apply(net.initialize)
    net.collect_features = True
    return net


def build_seg_loss() -> DeepSupervisionWrapper:
    """nnU-Net's loss exactly as nnUNetTrainer._build_loss makes it for three output scales."""
    loss = DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                          weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
    w = np.array([1, 0.5, 0.25])
    w[-1] = 0
    return DeepSupervisionWrapper(loss, w / w.sum())


def make_batch(rng: np.random.Generator, domains: list[int], content: str, extreme: float
               ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """``data`` (B, 2, P, P) with the code channel last, targets at 3 scales (B, 1, ., .), domains (B,)."""
    b = len(domains)
    d = torch.tensor(domains)
    img = torch.from_numpy(rng.normal(0, 1, (b, 1, PATCH, PATCH)).astype(np.float32))
    seg = np.zeros((b, 1, PATCH, PATCH), np.float32)
    if content == "random":
        for i, k in enumerate(domains):
            labels = [0, *IDS[k]]
            seg[i, 0] = rng.choice(labels, size=(PATCH, PATCH))
    elif content == "constant-zero":
        img.zero_()
    elif content == "constant-five":
        img.fill_(5.0)
    elif content == "extreme":
        img = img.sign() * extreme * torch.from_numpy(rng.uniform(0.5, 1, img.shape).astype(np.float32))
        for i, k in enumerate(domains):
            seg[i, 0, 4:10, 4:10] = IDS[k][0]
    seg_t = torch.from_numpy(seg)
    data = torch.cat([img, (d + 1).float().view(b, 1, 1, 1).expand(b, 1, PATCH, PATCH)], 1)
    targets = [seg_t, seg_t[:, :, ::2, ::2].contiguous(), seg_t[:, :, ::4, ::4].contiguous()]
    return data, targets, d


def _nonfinite_grads(module: torch.nn.Module) -> list[str]:
    return [n for n, p in module.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]


@pytest.mark.slow  # ~15 s on 2 free cores: 480 forward/backward passes
def test_no_nan_or_inf_over_240_random_batches():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    precisions = [p for p in PRECISIONS if p is None or _cpu_autocast_supports(p)]
    assert None in precisions and len(precisions) >= 2, "CPU autocast unavailable: fp16/bf16 cases not run"
    net = build_network()
    ae = LabelAutoencoder(IDS, features=(4, 8, 8), strides=(1, 2, 2))
    ae_train = LabelAutoencoder(IDS, features=(4, 8, 8), strides=(1, 2, 2))
    loss = RegularizedLoss(build_seg_loss(), lambda: (net.training, net.last_features, net.last_domain_idx),
                           MultiScaleContrastiveLoss(0.1, "all"), AnatomicalPriorLoss(ae), 0.1, 0.1)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
    ae_opt = torch.optim.Adam(ae_train.parameters(), lr=1e-3)
    cases = list(itertools.product(COMPOSITIONS, CONTENTS, precisions))
    seen: set[tuple[str, str, str]] = set()
    n_skipped_expected = 0
    for i in range(N_BATCHES):
        (cname, domains), content, dtype = cases[i % len(cases)]
        tag = (cname, content, str(dtype))
        seen.add(tag)
        data, targets, d = make_batch(rng, domains, content, EXTREME[dtype])
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            out = net(data)
            total = loss(out, targets)
        total.backward()
        terms = loss.tracker.pop_means()
        assert torch.isfinite(total), (i, tag, terms)
        assert all(np.isfinite(v) for v in terms.values()), (i, tag, terms)
        assert "msc_nonfinite" not in terms and "mjap_nonfinite" not in terms, (i, tag, terms)
        assert {"seg", "msc", "mjap"} <= set(terms), (i, tag, terms)
        n_skipped_expected += len(set(domains)) == len(domains)
        assert terms.get("msc_skipped", 0) == (1 if len(set(domains)) == len(domains) else 0), (i, tag, terms)
        assert not _nonfinite_grads(net), (i, tag, _nonfinite_grads(net))
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
        opt.step()
        assert all(torch.isfinite(p).all() for p in net.parameters()), (i, tag)

        # MJAP phase 1: the autoencoder's own loss on the same (ground-truth) labels
        ae_opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            ae_total, ce, msc = autoencoder_loss(ae_train, labels_to_onehot(targets[0], NUM_CLASSES), d)
        ae_total.backward()
        assert all(torch.isfinite(v) for v in (ae_total, ce, msc)), (i, tag, float(ce), float(msc))
        assert not _nonfinite_grads(ae_train), (i, tag, _nonfinite_grads(ae_train))
        ae_opt.step()
    assert len(seen) == len(cases)  # every (composition, content, precision) combination ran
    assert n_skipped_expected > 0


@pytest.mark.skipif(not _cpu_autocast_supports(torch.float16), reason="no float16 CPU autocast in this torch")
def test_fp16_overflow_is_left_out_and_counted():
    """Beyond fp16's range the segmentation loss itself is NaN (as in stock nnU-Net, whose GradScaler
    then skips the step); the regularizers are left out of the loss explicitly and counted."""
    torch.manual_seed(1)
    net = build_network()
    loss = RegularizedLoss(build_seg_loss(), lambda: (net.training, net.last_features, net.last_domain_idx),
                           MultiScaleContrastiveLoss(), AnatomicalPriorLoss(LabelAutoencoder(IDS, (4, 8), (1, 2))),
                           0.1, 0.1)
    data, targets, _ = make_batch(np.random.default_rng(1), [0, 0, 1, 1, 2, 2], "extreme", 1e5)
    with torch.autocast("cpu", dtype=torch.float16):
        loss(net(data), targets)
    terms = loss.tracker.pop_means()
    assert terms["msc_nonfinite"] == 1 and terms["mjap_nonfinite"] == 1
    assert "msc" not in terms and "mjap" not in terms
