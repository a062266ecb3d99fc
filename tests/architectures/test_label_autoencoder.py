"""The multi-joint label autoencoder (nnunetv2_mtmd/architectures/label_autoencoder.py): hand-computed
values, shapes and code size (the paper's shape: max-pooling stages, a 1x1-reduced code of at most a
quarter of the one-hot input), equivalence of the vectorised per-domain layers with a per-domain
computation, the fully shared variant, validation. Training to the reconstruction targets:
tests/training/test_autoencoder_phase.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnunetv2_mtmd.architectures.dsbn import DomainSpecificBatchNorm
from nnunetv2_mtmd.architectures.label_autoencoder import (
    OTHER_DOMAIN_LOGIT,
    LabelAutoencoder,
    labels_to_onehot,
    reconstruction_dice,
)
from nnunetv2_mtmd.training.autoencoder_loss import autoencoder_training_loss

# two domains in the unified space: domain 0 owns {1, 2}, domain 1 owns {3, 4, 5}
IDS = [[1, 2], [3, 4, 5]]
C = 6


def small_ae(seed: int = 0, **kw) -> LabelAutoencoder:
    torch.manual_seed(seed)
    kw = {"features": (4, 8, 8), "strides": (1, 2, 2), **kw}
    return LabelAutoencoder(IDS, **kw)


def random_labels(domain_idx: list[int], size: int = 8, seed: int = 0) -> torch.Tensor:
    """(B, 1, X, Y) unified label maps using only each sample's domain ids."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for d in domain_idx:
        choices = torch.tensor([0, *IDS[d]])
        out.append(choices[torch.randint(0, len(choices), (1, size, size), generator=g)])
    return torch.stack(out)


def test_labels_to_onehot_hand_values():
    lab = torch.tensor([[[0, 2], [1, 1]]])  # (1, 2, 2)
    oh = labels_to_onehot(lab[:, None], 3)
    expected = torch.tensor([[[[1, 0], [0, 0]], [[0, 0], [1, 1]], [[0, 1], [0, 0]]]], dtype=torch.float32)
    assert oh.shape == (1, 3, 2, 2) and torch.equal(oh, expected)
    assert torch.equal(labels_to_onehot(lab, 3), expected)


def test_shapes_and_other_domain_channels():
    ae = small_ae()
    d = torch.tensor([0, 1, 1])
    oh = labels_to_onehot(random_labels([0, 1, 1], 8), C)
    logits, feats = ae(oh, d)
    assert logits.shape == (3, C, 8, 8)
    # MSC's scales: the encoder stages (high to low resolution), then the decoder stages (low to high)
    assert [tuple(f.shape) for f in feats] == [(3, 4, 8, 8), (3, 8, 4, 4), (3, 8, 2, 2), (3, 8, 4, 4), (3, 4, 8, 8)]
    # the code is the 1x1 reduction of the bottleneck (features[-1] // 4 = 2 channels by default)
    assert ae.encode(oh, d).shape == (3, 2, 2, 2) == (3, *ae.code_shape((8, 8)))
    assert torch.equal(ae.encode(oh, d), ae.to_code(feats[2]))
    assert torch.equal(ae.decode(ae.encode(oh, d), d), logits)
    # other domains' channels hold exactly -1000, own channels are ordinary logits
    assert (logits[0, 3:] == OTHER_DOMAIN_LOGIT).all()
    assert (logits[1:, 1:3] == OTHER_DOMAIN_LOGIT).all()
    assert (logits[0, :3] > -100).all() and (logits[1:, [0, 3, 4, 5]] > -100).all()


def test_default_architecture_is_the_papers_shape_and_compresses():
    """Default (Boutillon et al. 2022, Table 1, at half the width): 5 stages of 2 convolutions, 4
    max-poolings, channels doubling 16 -> 256, DSBN only, a code of 64 channels at 1/16 resolution:
    at most a quarter of the one-hot input, for the unified input and for every domain's own channels."""
    ae = LabelAutoencoder(IDS)
    assert ae.total_stride == (16, 16) and ae.features == [16, 32, 64, 128, 256]
    assert sum(isinstance(m, nn.MaxPool2d) for m in ae.modules()) == 4
    convs = [m for m in ae.encoder.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2 * 5 - 1  # + the domain-specific input layer = 2 per stage
    oh = labels_to_onehot(random_labels([0, 1], 64), C)
    code = ae.encode(oh, torch.tensor([0, 1]))
    assert code.shape == (2, 64, 4, 4)
    assert code[0].numel() <= oh[0].numel() / 4
    assert all(code[0].numel() <= (1 + len(ids)) * 64 * 64 / 4 for ids in IDS)
    n_params = sum(p.numel() for p in ae.parameters())
    assert 1_000_000 < n_params < 3_000_000
    assert sum(isinstance(m, DomainSpecificBatchNorm) for m in ae.modules()) > 0
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in ae.modules())


def test_job_architecture_compresses_the_study_input():
    """The MJAP trainers' autoencoder (training/autoencoder_job.py defaults) on the study's data
    (three domains with 5, 1 and 4 structures, 64 x 64 patches): code <= 1/4 of every domain's one-hot."""
    from nnunetv2_mtmd.training.autoencoder_job import AutoencoderSettings, build_autoencoder

    ids = [[1, 2, 3, 4, 5], [6], [7, 8, 9, 10]]
    ae = build_autoencoder(ids, 2, "multi_domain", AutoencoderSettings())
    size = math.prod(ae.code_shape((64, 64)))
    assert all(size <= (1 + len(k)) * 64 * 64 / 4 for k in ids)
    shared = build_autoencoder(ids, 2, "shared", AutoencoderSettings())
    assert shared.shared and math.prod(shared.code_shape((64, 64))) == size


def test_input_layer_reads_only_the_domain_channels():
    ae = small_ae().eval()
    d = torch.tensor([0, 1])
    oh = labels_to_onehot(random_labels([0, 1], 8), C)
    code = ae.encode(oh, d)
    noisy = oh.clone()
    noisy[0, 3:] = torch.rand(3, 8, 8)  # sample 0 (domain 0) must ignore channels 3-5
    noisy[1, 1:3] = torch.rand(2, 8, 8)  # sample 1 (domain 1) must ignore channels 1-2
    assert torch.equal(ae.encode(noisy, d), code)


def test_vectorised_input_layer_equals_per_domain_convolution():
    """The grouped conv equals an explicit conv of each domain's (1 + n_k) channels."""
    ae = small_ae(seed=3)
    with torch.no_grad():
        ae.input_weight.normal_()  # also fill the masked entries: they must not act
    oh = torch.rand(3, C, 8, 8)
    d = torch.tensor([1, 0, 1])
    captured = {}
    handle = ae.input_norm.register_forward_hook(lambda m, i, o: captured.update(x=i[0]))
    ae.encode(oh, d)
    handle.remove()
    for b, k in enumerate(d.tolist()):
        chans = [0, *IDS[k]]
        ref = F.conv2d(oh[b : b + 1, chans], ae.input_weight[k][:, chans], padding=1)
        assert torch.allclose(captured["x"][b : b + 1], ref, atol=1e-5)


def test_output_layer_equals_per_domain_head():
    ae = small_ae(seed=4)
    code = torch.randn(2, *ae.code_shape((8, 8)))
    d = torch.tensor([1, 0])
    captured = {}
    handle = ae.output_conv.register_forward_hook(lambda m, i, o: captured.update(h=i[0]))
    logits = ae.decode(code, d)
    handle.remove()
    w, bias = ae.output_conv.weight, ae.output_conv.bias
    offsets = {0: 0, 1: 3}  # heads: domain 0 -> rows 0..2, domain 1 -> rows 3..6
    for b, k in enumerate(d.tolist()):
        rows = slice(offsets[k], offsets[k] + 1 + len(IDS[k]))
        ref = F.conv2d(captured["h"][b : b + 1], w[rows], bias[rows])
        assert torch.allclose(logits[b : b + 1, [0, *IDS[k]]], ref, atol=1e-6)


def test_masked_input_weights_get_zero_gradient():
    ae = small_ae()
    d = torch.tensor([0, 1])
    oh = labels_to_onehot(random_labels([0, 1], 8), C)
    total, _ = autoencoder_training_loss(ae, oh, d)
    total.backward()
    g = ae.input_weight.grad  # (K, F0, C, 3, 3)
    assert g[0][:, 3:].abs().sum() == 0 and g[1][:, 1:3].abs().sum() == 0
    assert g[0][:, :3].abs().sum() > 0 and g[1][:, [0, 3, 4, 5]].abs().sum() > 0


def test_eval_mode_samples_are_independent_of_batch():
    ae = small_ae()
    ae.train()
    oh = labels_to_onehot(random_labels([0, 1, 0, 1], 8), C)
    d = torch.tensor([0, 1, 0, 1])
    ae(oh, d)  # populate running stats of both domains
    ae.eval()
    full, _ = ae(oh, d)
    single, _ = ae(oh[1:2], d[1:2])
    assert torch.allclose(full[1:2], single, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"domain_label_ids": [[1, 2], [2, 3]]}, "unique"),
        ({"domain_label_ids": [[0, 1]]}, "unique"),
        ({"domain_label_ids": [[1], []]}, "at least one"),
        ({"domain_label_ids": [[1, 7]], "num_classes": 5}, "num_classes"),
        ({"domain_label_ids": [[1]], "features": (4, 8), "strides": (1,)}, "equal length"),
        ({"domain_label_ids": [[1]], "conv_op": nn.Conv1d}, "conv_op"),
        ({"domain_label_ids": [[1]], "kernel_size": 2}, "odd"),
        ({"domain_label_ids": [[1]], "features": (4, 8), "strides": (2, 2)}, "strides\\[0\\] must be 1"),
        ({"domain_label_ids": [[1]], "code_channels": 0}, "code_channels"),
    ],
)
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LabelAutoencoder(**kwargs)


def test_input_validation():
    ae = small_ae()
    with pytest.raises(ValueError, match="divisible"):
        ae.encode(torch.zeros(1, C, 6, 8), torch.tensor([0]))
    with pytest.raises(ValueError, match="unified label space"):
        ae.encode(torch.zeros(1, C - 1, 8, 8), torch.tensor([0]))
    with pytest.raises(ValueError, match="domain_idx"):
        ae.encode(torch.zeros(2, C, 8, 8), torch.tensor([0]))


def test_3d_autoencoder_smoke():
    torch.manual_seed(0)
    ae = LabelAutoencoder([[1], [2]], features=(2, 4), strides=(1, 2), conv_op=nn.Conv3d)
    lab = torch.randint(0, 2, (2, 1, 4, 4, 4))
    lab[1][lab[1] == 1] = 2
    logits, feats = ae(labels_to_onehot(lab, 3), torch.tensor([0, 1]))
    assert logits.shape == (2, 3, 4, 4, 4) and feats[1].shape == (2, 4, 2, 2, 2) and feats[2].shape == (2, 2, 4, 4, 4)
    assert sum(isinstance(m, nn.MaxPool3d) for m in ae.modules()) == 1
    assert (logits[0, 2] == OTHER_DOMAIN_LOGIT).all() and (logits[1, 1] == OTHER_DOMAIN_LOGIT).all()


class _FixedLogits(nn.Module):
    """Stand-in autoencoder returning fixed logits (to hand-compute reconstruction Dice)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        mask = torch.zeros(2, C, dtype=torch.bool)
        mask[0, [0, 1, 2]] = True
        mask[1, [0, 3, 4, 5]] = True
        self.domain_channel_mask = mask

    def forward(self, onehot, domain_idx):
        return self.logits, []


def test_reconstruction_dice_hand_computed():
    # sample 0 (domain 0): gt class 1 on 4 pixels, prediction hits 2 of them and 2 extra -> 2*2/8 = 0.5
    #                      class 2 absent from both -> left out
    # sample 1 (domain 1): gt class 3 on 2 pixels, predicted exactly -> 1.0; class 4 predicted on 1 pixel,
    #                      absent in gt -> 0.0; class 5 absent from both -> left out
    gt = torch.zeros(2, 1, 4, 4, dtype=torch.long)
    gt[0, 0, 0, :4] = 1
    gt[1, 0, 1, :2] = 3
    pred = torch.zeros(2, 4, 4, dtype=torch.long)
    pred[0, 0, :2] = 1
    pred[0, 1, :2] = 1
    pred[1, 1, :2] = 3
    pred[1, 3, 3] = 4
    logits = F.one_hot(pred, C).movedim(-1, 1).float() * 10
    dice = reconstruction_dice(_FixedLogits(logits), labels_to_onehot(gt, C), torch.tensor([0, 1]))
    assert dice == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    empty = reconstruction_dice(
        _FixedLogits(torch.zeros(1, C, 4, 4)), labels_to_onehot(gt[:1] * 0, C), torch.tensor([0])
    )
    assert math.isnan(empty)


def test_reconstruction_dice_restores_training_mode():
    ae = small_ae().train()
    d = torch.tensor([0, 1])
    oh = labels_to_onehot(random_labels([0, 1], 8), C)
    ae(oh, d)
    reconstruction_dice(ae, oh, d)
    assert ae.training


# ---------------------------------------------------------------------------- the fully shared variant
def test_shared_variant_shares_every_parameter():
    """Shared+MJAP (Boutillon et al. 2022): one input layer over all unified channels, one batch norm
    for all domains, one output head over all unified channels; the domain index changes nothing."""
    torch.manual_seed(0)
    ae = LabelAutoencoder(IDS, features=(4, 8, 8), strides=(1, 2, 2), shared=True)
    assert ae.input_weight.shape == (1, 4, C, 3, 3) and bool((ae._input_weight_mask == 1).all())
    assert ae.output_conv.out_channels == C
    assert all(m.num_domains == 1 for m in ae.modules() if isinstance(m, DomainSpecificBatchNorm))
    assert bool(ae.domain_channel_mask.all()) and ae.domain_channel_mask.shape == (2, C)
    assert torch.equal(ae.own_channel_mask, LabelAutoencoder(IDS, features=(4, 8), strides=(1, 2)).own_channel_mask)
    oh = labels_to_onehot(random_labels([0, 1, 1], 8), C)
    ae.train()
    ae(oh, torch.tensor([0, 1, 1]))
    ae.eval()
    logits, _ = ae(oh, torch.tensor([0, 1, 1]))
    assert (logits > -100).all()  # no -1000 fill: every channel is an ordinary logit
    same, _ = ae(oh, torch.tensor([1, 0, 0]))
    assert torch.equal(logits, same)
    # every input channel is read, whatever the domain
    noisy = oh.clone()
    noisy[0, 3:] = torch.rand(3, 8, 8)
    assert not torch.equal(ae.encode(noisy, torch.tensor([0, 1, 1])), ae.encode(oh, torch.tensor([0, 1, 1])))
    n_multi = sum(p.numel() for p in LabelAutoencoder(IDS, features=(4, 8, 8), strides=(1, 2, 2)).parameters())
    assert sum(p.numel() for p in ae.parameters()) < n_multi
    assert LabelAutoencoder.from_config(ae.get_config()).shared


def test_shared_variant_trains_one_batch_norm_for_all_domains():
    ae = LabelAutoencoder(IDS, features=(4, 8), strides=(1, 2), shared=True).train()
    oh = labels_to_onehot(random_labels([0, 1], 8), C)
    total, _ = autoencoder_training_loss(ae, oh, torch.tensor([0, 1]))
    total.backward()
    assert all(p.grad is not None for p in ae.parameters())
    assert int(ae.input_norm.num_batches_tracked[0]) == 1
