"""The MJAP label autoencoder's training (nnunetv2_mtmd/training/autoencoder_phase.py and its data,
loss and evaluation modules) on a small synthetic label set: it reaches the per-structure targets
(Dice pooled over the held-out label slices >= 0.90) within a test's budget, and reconstructs
corrupted masks (specks, holes, a swapped label) closer to the clean mask than the corrupted input
is. Plus the pieces: the sampler (domain balance, foreground, augmentation), the loss terms."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nnunetv2_mtmd.architectures.label_autoencoder import labels_to_onehot
from nnunetv2_mtmd.training.autoencoder_data import (
    LabelPatchSampler,
    SpatialAugmentation,
    resample_patch,
    rotation_range,
)
from nnunetv2_mtmd.training.autoencoder_eval import evaluate_reconstruction, onehot_dice, padded_stack, reconstruct
from nnunetv2_mtmd.training.autoencoder_loss import autoencoder_training_loss, per_domain_soft_dice
from nnunetv2_mtmd.training.autoencoder_phase import learning_rate
from tests.training.label_autoencoder_helpers import SIZE, _corrupt, small_autoencoder, spec, synthetic_maps  # noqa: F401

logger = logging.getLogger(__name__)

@pytest.fixture
def trained(trained_label_autoencoder):
    """The session's small trained autoencoder (tests/training/label_autoencoder_helpers.py)."""
    return trained_label_autoencoder


def test_reaches_the_reconstruction_targets_on_synthetic_labels(trained):
    """Per structure, Dice pooled over the held-out label slices >= 0.90 after 1000 iterations of 8 crops.

    Measured on the 2-core development machine (shared, one thread): every structure 0.99, 35 s of CPU."""
    dice = evaluate_reconstruction(trained["ae"], trained["held_out"], trained["spec"])
    logger.info("synthetic reconstruction Dice %s in %.1f s", dice, trained["seconds"])
    assert set(dice) == {"blob", "bars"} and set(dice["bars"]) == {"top", "middle", "bottom"}
    for dom, per in dice.items():
        for s, v in per.items():
            assert v >= 0.90, f"{dom} {s}: reconstruction Dice {v:.3f}"
    hist = trained["state"].history
    assert [h["iteration"] for h in hist] == [250, 500, 750, 1000] and hist[-1]["dice"] > hist[0]["dice"]


@pytest.mark.parametrize("kind", ["specks", "hole", "swapped"])
def test_corrupted_masks_are_reconstructed_closer_to_the_clean_mask(trained, kind):
    """The frozen autoencoder as a shape prior: its reconstruction of a corrupted mask is closer (Dice
    over the touched structures, pooled over the held-out slices) to the clean mask than the input.

    Measured (Dice to the clean mask, input -> reconstruction): specks 0.91 -> 0.99, 3 x 3 holes
    0.94-0.95 -> 0.98-0.99, swapped label 0.90 -> 0.98-0.99 in both domains. With half the training
    maps or 700 iterations the disk's hole and swap margins shrink to under 0.02: a plain autoencoder
    becomes a shape prior by seeing enough shapes, not by construction."""
    ae, held_out = trained["ae"], trained["held_out"]
    rng = np.random.default_rng(7)
    for k in (0, 1):
        clean = held_out.foreground(k)
        pairs = [_corrupt(m, kind, k, rng) for m in clean]
        touched = sorted({lab for _, labs in pairs for lab in labs})
        corrupted = padded_stack([c for c, _ in pairs], ae.total_stride)
        reference = padded_stack(clean, ae.total_stride)[:, 0]
        recon = reconstruct(ae, corrupted, k)
        before = onehot_dice(corrupted[:, 0], reference, touched)
        after = onehot_dice(recon, reference, touched)
        logger.info("%s, domain %d: Dice to the clean mask %.3f (input) -> %.3f (reconstruction)", kind, k, before,
                    after)
        assert after > before, f"{kind}, domain {k}: {after:.3f} <= {before:.3f}"


# ----------------------------------------------------------------------------------- the pieces
def test_sampler_batches_are_domain_balanced_mostly_foreground_and_in_the_domain_labels():
    sp = spec()
    maps = synthetic_maps(5, seed=3, empty=5)  # half of the maps are empty
    s = LabelPatchSampler(maps, sp.domain_label_ids, (24, 24), 12, SpatialAugmentation(), 0.95, seed=0)
    fg = []
    for _ in range(20):
        b = next(s)
        assert b["target"].shape == (12, 1, 24, 24) and b["target"].dtype == torch.float32
        assert torch.bincount(b["domain"], minlength=2).tolist() == [6, 6]
        for t, d in zip(b["target"][:, 0].long(), b["domain"].tolist()):
            assert set(t.unique().tolist()) <= {0, *sp.domain_label_ids[d]}
            fg.append(bool(t.any()))
    assert np.mean(fg) >= 0.9
    again = LabelPatchSampler(maps, sp.domain_label_ids, (24, 24), 12, SpatialAugmentation(), 0.95, seed=0)
    first = LabelPatchSampler(maps, sp.domain_label_ids, (24, 24), 12, SpatialAugmentation(), 0.95, seed=0)
    assert torch.equal(next(again)["target"], next(first)["target"])  # reproducible stream


def test_resample_patch_crops_mirrors_rotates_and_pads_with_background():
    m = np.zeros((10, 10), np.int16)
    m[2:5, 3:8] = 1
    classes = np.array([0, 1])
    # centre (3, 5) of a (4, 6) patch: map rows 1.5 .. 4.5, half-pixel positions rounded up -> rows 2..5
    crop = resample_patch(m, np.array([3.0, 5.0]), np.eye(2), (4, 6), classes)
    assert torch.equal(crop, torch.from_numpy(m[2:6, 3:9].astype(np.int64)))
    mirrored = resample_patch(m, np.array([3.0, 5.0]), np.diag([1.0, -1.0]), (4, 6), classes)
    assert torch.equal(mirrored, crop.flip(1))
    a = math.pi / 2  # a quarter turn of a square patch centred on the map: the rotated map
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    turned = resample_patch(m, np.array([4.5, 4.5]), rot, (10, 10), classes)
    assert turned.sum() == m.sum() and torch.equal(turned, torch.from_numpy(np.rot90(m, -1).astype(np.int64)))
    outside = resample_patch(m, np.array([-20.0, -20.0]), rot * 1.1, (6, 6), classes)
    assert not outside.any()
    assert rotation_range((-0.5, 0.5)) == (-0.5, 0.5) and rotation_range(0.25) == (0.25, 0.25)
    with pytest.raises(ValueError, match="rotation_for_DA"):
        rotation_range("180")


def test_soft_dice_is_pooled_per_domain_over_its_own_classes():
    own = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 1]], dtype=torch.bool)  # domain 0: {1, 2}; domain 1: {3}
    gt = torch.zeros(3, 4, 2, 2)
    gt[:, 0] = 1
    gt[0, 1, 0, 0], gt[0, 0, 0, 0] = 1, 0  # sample 0 (domain 0): class 1 on one pixel
    gt[1, 2, 1, 1], gt[1, 0, 1, 1] = 1, 0  # sample 1 (domain 0): class 2 on one pixel
    gt[2, 3, 0, 1], gt[2, 0, 0, 1] = 1, 0  # sample 2 (domain 1): class 3 on one pixel
    d = torch.tensor([0, 0, 1])
    assert per_domain_soft_dice(gt, gt, d, own).item() == pytest.approx(1.0)
    probs = gt.clone()
    probs[1, 2, 1, 1], probs[1, 0, 1, 1] = 0.5, 0.5  # half of class 2 -> Dice 2 * 0.5 / 1.5 = 2/3
    expected = (1.0 + 2 / 3 + 1.0) / 3  # mean over (domain 0: class 1, class 2), (domain 1: class 3)
    assert per_domain_soft_dice(probs, gt, d, own).item() == pytest.approx(expected, rel=1e-4)


def test_training_loss_terms_and_gradients():
    ae = small_autoencoder().train()
    maps = synthetic_maps(4, seed=4)
    b = next(LabelPatchSampler(maps, spec().domain_label_ids, (SIZE, SIZE), 4, None, 1.0, seed=0))
    oh = labels_to_onehot(b["target"], ae.num_classes)
    total, terms = autoencoder_training_loss(ae, oh, b["domain"], lambda1=0.3, dice_weight=2.0)
    assert total.item() == pytest.approx(
        terms["ce"].item() + 2.0 * (1 - terms["dice"].item()) + 0.3 * terms["msc"].item(), rel=1e-5)
    assert terms["msc"].item() > 0 and 0 < terms["dice"].item() < 1
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in ae.parameters() if p.grad is not None)
    logits, _ = ae(oh, b["domain"])
    assert terms["ce"].item() == pytest.approx(F.cross_entropy(logits, oh.argmax(1)).item(), rel=1e-5)
    _, no_msc = autoencoder_training_loss(ae, oh, b["domain"], lambda1=0.0)
    assert no_msc["msc"].item() == 0.0


def test_learning_rate_warms_up_then_decays_to_zero():
    assert learning_rate(0, 100, 1e-3, 10) == pytest.approx(1e-4)
    assert learning_rate(9, 100, 1e-3, 10) == pytest.approx(1e-3 * (1 - 9 / 100) ** 0.9)
    assert learning_rate(99, 100, 1e-3, 10) < 2e-5
    assert learning_rate(0, 100, 1e-3, 0) == pytest.approx(1e-3)
