"""The MJAP losses (nnunetv2_mtmd/losses/anatomical_prior.py): the label autoencoder's training loss and
the prior loss (Boutillon et al. 2022)."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnunetv2_mtmd.losses.anatomical_prior import (
    OTHER_DOMAIN_LOGIT,
    AnatomicalPriorLoss,
    LabelAutoencoder,
    autoencoder_loss,
    code_distance,
    domain_mean,
    labels_to_onehot,
)
from nnunetv2_mtmd.losses.contrastive import MultiScaleContrastiveLoss
from tests.architectures.test_label_autoencoder import IDS, C, random_labels, small_ae

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- autoencoder loss


def test_cross_entropy_over_unified_logits_equals_domain_cross_entropy():
    ae = small_ae(seed=5)
    d = torch.tensor([0, 1, 1, 0])
    lab = random_labels(d.tolist(), 8, seed=2)
    logits, _ = ae(labels_to_onehot(lab, C), d)
    ce_unified = F.cross_entropy(logits, lab[:, 0], reduction="none")  # (B, X, Y)
    for b, k in enumerate(d.tolist()):
        chans = [0, *IDS[k]]
        local_target = torch.searchsorted(torch.tensor(chans), lab[b, 0])  # unified id -> local index
        ce_domain = F.cross_entropy(logits[b : b + 1, chans], local_target[None], reduction="none")
        assert torch.equal(ce_unified[b : b + 1], ce_domain)


def test_autoencoder_loss_is_ce_plus_lambda_msc():
    ae = small_ae(seed=6)
    d = torch.tensor([0, 0, 1, 1])
    oh = labels_to_onehot(random_labels(d.tolist(), 8, seed=3), C)
    total, ce, msc = autoencoder_loss(ae, oh, d, lambda1=0.3, temperature=0.2)
    # independent recomputation: in train mode DSBN normalises with the batch statistics, so a second
    # forward pass of the same batch gives the same outputs
    logits, feats = ae(oh, d)
    assert ce.item() == pytest.approx(F.cross_entropy(logits, oh.argmax(1)).item(), rel=1e-6)
    assert msc.item() == pytest.approx(MultiScaleContrastiveLoss(0.2, "all")(feats, d).item(), rel=1e-6)
    assert total.item() == pytest.approx(ce.item() + 0.3 * msc.item(), rel=1e-6)
    assert total.dtype == torch.float32




# ---------------------------------------------------------------------------- MJAP loss


def _trained_like_ae(seed: int = 0) -> LabelAutoencoder:
    """A small AE with populated running statistics (as after training), in eval mode."""
    ae = small_ae(seed)
    ae.train()
    with torch.no_grad():
        for s in range(3):
            d = [0, 1, 0, 1]
            ae(labels_to_onehot(random_labels(d, 8, seed=s), C), torch.tensor(d))
    return ae.eval()


def _seg_logits(target: torch.Tensor, domain_idx: torch.Tensor, scale: float = 1.0, seed: int = 0):
    """Segmentation-like unified logits: random on the domain's channels, -1000 elsewhere."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(target.shape[0], C, *target.shape[2:], generator=g) * scale
    mask = torch.zeros(target.shape[0], C, 1, 1, dtype=torch.bool)
    for b, k in enumerate(domain_idx.tolist()):
        mask[b, [0, *IDS[k]]] = True
    return logits.masked_fill(~mask, OTHER_DOMAIN_LOGIT)


def test_mjap_is_zero_for_a_perfect_prediction():
    mjap = AnatomicalPriorLoss(_trained_like_ae())
    d = torch.tensor([0, 1, 1])
    target = random_labels(d.tolist(), 8, seed=7)
    onehot = labels_to_onehot(target, C)
    assert mjap(onehot, target, d, pred_is_probabilities=True).item() == 0.0
    # logits that are +60 on the true class: softmax == one-hot in fp32
    logits = _seg_logits(target, d, 0.0) + 60 * onehot
    assert mjap(logits, target, d).item() < 1e-12
    # and a wrong prediction is penalised (small values: this autoencoder is untrained)
    assert mjap(_seg_logits(target, d, 3.0), target, d).item() > 1e-6


def test_mjap_matches_independent_eq7_computation():
    """Eq. 7 through the autoencoder, recomputed sample by sample in float64 (unequal domain counts:
    two ankle samples, one knee). Replaces the old assertion on the per-element mean, which is now the
    explicitly named legacy form (still checked here against the same independent codes)."""
    ae = _trained_like_ae(1)
    d = torch.tensor([0, 1, 0])
    target = random_labels(d.tolist(), 8, seed=8)
    logits = _seg_logits(target, d, 2.0, seed=1)
    diffs = []
    with torch.no_grad():
        for b, k in enumerate(d.tolist()):
            chans = [0, *IDS[k]]
            probs = torch.zeros(1, C, 8, 8)
            probs[:, chans] = torch.softmax(logits[b : b + 1, chans], 1)  # softmax over the domain head
            code_pred = ae.encode(probs, d[b : b + 1])
            code_gt = ae.encode(labels_to_onehot(target[b : b + 1], C), d[b : b + 1])
            diffs.append((code_pred - code_gt).double().flatten())
    norms = [math.sqrt(float((x**2).sum())) for x in diffs]  # summed over ALL code elements
    eq7 = ((norms[0] + norms[2]) / 2 + norms[1]) / 2  # 1/K sum_k 1/n_k sum_{i in k}
    squared = ((norms[0] ** 2 + norms[2] ** 2) / 2 + norms[1] ** 2) / 2
    legacy = sum(float((x**2).mean()) for x in diffs) / 3
    assert eq7 > 0 and eq7 != pytest.approx(sum(norms) / 3, rel=1e-3)  # the domain averaging matters here
    assert AnatomicalPriorLoss(ae)(logits, target, d).item() == pytest.approx(eq7, rel=1e-5)
    assert AnatomicalPriorLoss(ae, "l2")(logits, target, d).item() == pytest.approx(eq7, rel=1e-5)
    assert AnatomicalPriorLoss(ae, "squared_l2")(logits, target, d).item() == pytest.approx(squared, rel=1e-5)
    assert AnatomicalPriorLoss(ae, "legacy_element_mean")(logits, target, d).item() == pytest.approx(legacy, rel=1e-5)


# Hand-computed Eq. 7 values: per-sample code differences whose norms are whole numbers.
# Codes (B, 2, 2, 1): each difference is written out as its 4 elements (channels x positions).
EQ7_TABLE = [
    # domains, differences, Eq. 7 (l2), squared_l2, legacy_element_mean
    ([0, 0, 0, 1], [[3, 4, 0, 0], [6, 0, 0, 8], [0, 0, 0, 0], [5, 0, 12, 0]],
     (15 / 3 + 13) / 2, (125 / 3 + 169) / 2, (25 + 100 + 0 + 169) / 4 / 4),
    ([1, 0, 1], [[1, 1, 1, 1], [1, 2, 2, 4], [2, 2, 2, 2]],
     (5 + (2 + 4) / 2) / 2, (25 + (4 + 16) / 2) / 2, (4 + 25 + 16) / 4 / 3),
    ([2, 0, 2, 2, 1], [[0, 0, 3, 4], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [2, 2, 2, 2]],
     ((5 + 0 + 0) / 3 + 1 + 4) / 3, ((25 + 0 + 0) / 3 + 1 + 16) / 3, (25 + 1 + 0 + 0 + 16) / 4 / 5),
]


@pytest.mark.parametrize("domains, differences, l2, squared, legacy", EQ7_TABLE)
def test_code_distance_hand_computed(domains, differences, l2, squared, legacy):
    g = torch.Generator().manual_seed(len(domains))
    code_gt = torch.randn(len(domains), 2, 2, 1, generator=g, dtype=torch.float64)
    code_pred = code_gt + torch.tensor(differences, dtype=torch.float64).view(-1, 2, 2, 1)
    d = torch.tensor(domains)
    assert code_distance(code_pred, code_gt, d, "l2").item() == pytest.approx(l2, rel=1e-6)
    assert code_distance(code_pred, code_gt, d, "squared_l2").item() == pytest.approx(squared, rel=1e-6)
    assert code_distance(code_pred, code_gt, d, "legacy_element_mean").item() == pytest.approx(legacy, rel=1e-6)


def test_domain_mean_weights_each_present_domain_equally():
    v = torch.tensor([1.0, 2.0, 3.0, 10.0])
    assert domain_mean(v, torch.tensor([0, 0, 0, 5])).item() == pytest.approx((2.0 + 10.0) / 2)
    assert domain_mean(v, torch.tensor([4, 4, 4, 4])).item() == pytest.approx(4.0)  # one domain: plain mean
    assert domain_mean(v, torch.tensor([0, 1, 0, 1])).item() == pytest.approx(v.mean().item())  # balanced


def test_eq7_gradient_is_finite_at_a_perfect_prediction():
    """The L2 norm's derivative at a zero difference: 0, not NaN (a perfect sample in the batch)."""
    code_gt = torch.randn(3, 2, 2, 2)
    code_pred = code_gt.clone().requires_grad_()
    with torch.no_grad():
        code_pred[1] += 1.0
    code_distance(code_pred, code_gt, torch.tensor([0, 1, 1]), "l2").backward()
    assert torch.isfinite(code_pred.grad).all()
    assert torch.equal(code_pred.grad[0], torch.zeros_like(code_pred.grad[0]))
    assert code_pred.grad[1].abs().sum() > 0


def test_unified_softmax_equals_domain_softmax():
    d = torch.tensor([0, 1])
    target = random_labels(d.tolist(), 8)
    logits = _seg_logits(target, d, 5.0)
    unified = torch.softmax(logits, 1)
    for b, k in enumerate(d.tolist()):
        chans = [0, *IDS[k]]
        others = [c for c in range(C) if c not in chans]
        assert torch.equal(unified[b, others], torch.zeros_like(unified[b, others]))
        assert torch.allclose(unified[b, chans], torch.softmax(logits[b, chans], 0), rtol=0, atol=1e-7)
    # the loss gives the same value from logits and from the unified softmax probabilities ...
    mjap = AnatomicalPriorLoss(_trained_like_ae())
    a = mjap(logits, target, d)
    b = mjap(unified, target, d, pred_is_probabilities=True)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    # ... and the other domains' channels do not matter even when they are not -1000
    garbage = logits.clone()
    garbage[0, 3:] = 4.0
    garbage[1, 1:3] = 4.0
    assert mjap(garbage, target, d).item() == pytest.approx(a.item(), rel=1e-6)


def test_gradients_reach_the_prediction_but_never_the_autoencoder():
    ae = _trained_like_ae()
    mjap = AnatomicalPriorLoss(ae)
    parent = nn.ModuleDict({"seg": nn.Conv2d(1, C, 1), "mjap": mjap})
    parent.train()
    assert not ae.training and all(not m.training for m in ae.modules())
    assert mjap.training  # the wrapper itself follows the parent
    stats_before = {k: v.clone() for k, v in ae.state_dict().items()}
    d = torch.tensor([0, 1])
    target = random_labels(d.tolist(), 8)
    logits = _seg_logits(target, d, 2.0).requires_grad_()
    loss = mjap(logits, target, d)
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0 and torch.isfinite(logits.grad).all()
    # no gradient into the other domains' channels (they are masked before the softmax)
    assert logits.grad[0, 3:].abs().sum() == 0 and logits.grad[1, 1:3].abs().sum() == 0
    assert all(p.grad is None and not p.requires_grad for p in ae.parameters())
    for k, v in ae.state_dict().items():
        assert torch.equal(v, stats_before[k]), f"{k} changed"
    parent.train()
    mjap.train(True)
    assert not ae.training


def test_ae_switched_to_train_directly_is_reset_on_forward():
    ae = _trained_like_ae()
    mjap = AnatomicalPriorLoss(ae)
    ae.train()
    before = {k: v.clone() for k, v in ae.state_dict().items()}
    d = torch.tensor([0, 1])
    target = random_labels(d.tolist(), 8)
    mjap(_seg_logits(target, d), target, d)
    assert not ae.training
    assert all(torch.equal(v, before[k]) for k, v in ae.state_dict().items())


def test_mjap_under_autocast_is_fp32():
    mjap = AnatomicalPriorLoss(_trained_like_ae())
    d = torch.tensor([0, 1])
    target = random_labels(d.tolist(), 8)
    logits = _seg_logits(target, d, 2.0).bfloat16()
    ref = mjap(logits.float(), target, d)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = mjap(logits, target, d)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref.item(), rel=1e-6)


def test_mjap_rejects_bad_form():
    with pytest.raises(ValueError, match="form must be one of"):
        AnatomicalPriorLoss(small_ae(), form="max")
    with pytest.raises(ValueError, match="form must be one of"):
        code_distance(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), "sum")


def test_state_dict_round_trip_with_weights_only(tmp_path):
    ae = _trained_like_ae(2)
    path = tmp_path / "ae.pt"
    torch.save({"config": ae.get_config(), "state_dict": ae.state_dict()}, path)
    (tmp_path / "ae.json").write_text(json.dumps(ae.get_config()))  # the config is JSON-serialisable
    ckpt = torch.load(path, weights_only=True)
    clone = LabelAutoencoder.from_config(json.loads((tmp_path / "ae.json").read_text()))
    clone.load_state_dict(ckpt["state_dict"], strict=True)
    assert ckpt["config"] == ae.get_config()
    clone.eval()
    d = torch.tensor([0, 1])
    oh = labels_to_onehot(random_labels([0, 1], 8), C)
    assert torch.equal(clone(oh, d)[0], ae(oh, d)[0])
    # the running statistics travel too (a fresh AE in eval mode gives different codes)
    assert not torch.equal(small_ae(2).eval().encode(oh, d), ae.encode(oh, d))
