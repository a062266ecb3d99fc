"""Tests of the supervised contrastive losses (SupCon, MSC, SSC) against independent computations."""

from __future__ import annotations

import math

import pytest
import torch

from nnunetv2_mtmd.losses.contrastive import (
    MultiScaleContrastiveLoss,
    embed,
    select_stages,
    supcon_loss,
)


def reference_supcon(z: torch.Tensor, labels: list[int], tau: float) -> tuple[float, int]:
    """Plain double loop over anchors and positives in float64 (Khosla et al. 2020, L_out)."""
    z = torch.nn.functional.normalize(z.double(), dim=1)
    b = z.shape[0]
    total, n_valid = 0.0, 0
    for i in range(b):
        positives = [p for p in range(b) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denom = sum(math.exp(float(z[i] @ z[a]) / tau) for a in range(b) if a != i)
        li = 0.0
        for p in positives:
            li -= math.log(math.exp(float(z[i] @ z[p]) / tau) / denom)
        total += li / len(positives)
        n_valid += 1
    return (total / n_valid if n_valid else 0.0), n_valid


COMPOSITIONS = {
    "balanced": [0, 0, 1, 1, 2, 2],
    "unbalanced": [0, 0, 0, 0, 1, 1, 2, 2, 2],
    "one_domain_single_sample": [0, 0, 0, 1, 1, 2],
    "single_domain": [1, 1, 1, 1, 1],
    "all_distinct": [0, 1, 2, 3],
    "pair": [0, 0],
    "one_sample": [0],
}


@pytest.mark.parametrize("name", sorted(COMPOSITIONS))
@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_supcon_matches_double_loop_reference(name, tau):
    labels = COMPOSITIONS[name]
    g = torch.Generator().manual_seed(len(labels) * 7 + int(tau * 10))
    z = torch.randn(len(labels), 8, generator=g)
    expected, expected_valid = reference_supcon(z, labels, tau)
    loss, n_valid = supcon_loss(z, torch.tensor(labels), tau, return_num_valid=True)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert int(n_valid) == expected_valid
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


# Hand-computed values. z = [e1, e1, e2, e2], labels [0, 0, 1, 1]: each anchor has one positive
# at cosine 1 and two negatives at cosine 0 -> L = log(1 + 2 exp(-1/tau)).
@pytest.mark.parametrize(
    "tau, expected",
    [
        (0.1, math.log(1 + 2 * math.exp(-10))),
        (0.5, math.log(1 + 2 * math.exp(-2))),
        (1.0, math.log(1 + 2 / math.e)),
    ],
)
def test_temperature_hand_computed(tau, expected):
    e1, e2 = torch.eye(2)
    z = torch.stack([e1, e1, e2, e2])
    loss = supcon_loss(z, torch.tensor([0, 0, 1, 1]), tau)
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)  # fp32: |error| ~ 1e-7 * 1/tau


def test_lower_temperature_sharpens_separated_embeddings():
    """For well-separated domains a lower temperature gives a lower loss (0.55 at tau=1, 9e-5 at 0.1)."""
    e1, e2 = torch.eye(2)
    z = torch.stack([e1, e1, e2, e2])
    labels = torch.tensor([0, 0, 1, 1])
    losses = [supcon_loss(z, labels, t).item() for t in (1.0, 0.5, 0.1)]
    assert losses[0] > losses[1] > losses[2]


def test_single_domain_batch_hand_computed():
    """z = [e1, e1, e2], one domain: L_i = logsumexp_{a!=i}(s_ia) - mean_{a!=i}(s_ia), floor log(B-1)."""
    tau = 0.1
    e1, e2 = torch.eye(2)
    z = torch.stack([e1, e1, e2])
    s = 1 / tau
    l0 = math.log(math.exp(s) + 1) - s / 2  # anchors 0 and 1: similarities (1, 0) / tau
    l2 = math.log(2.0)  # anchor 2: similarities (0, 0): equal -> the floor log(2)
    expected = (2 * l0 + l2) / 3
    loss, n_valid = supcon_loss(z, torch.tensor([3, 3, 3]), tau, return_num_valid=True)
    assert int(n_valid) == 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # floor log(B-1) reached by collapsed embeddings; never below it
    collapsed = supcon_loss(torch.ones(4, 5), torch.zeros(4, dtype=torch.long), tau)
    assert collapsed.item() == pytest.approx(math.log(3), rel=1e-6)
    rnd = supcon_loss(torch.randn(4, 5), torch.zeros(4, dtype=torch.long), tau)
    assert rnd.item() >= math.log(3) - 1e-6


def test_two_sample_single_domain_is_identically_zero():
    z = torch.randn(2, 6, requires_grad=True)
    loss = supcon_loss(z, torch.tensor([0, 0]))
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(z.grad, torch.zeros_like(z), atol=1e-6)


@pytest.mark.parametrize(
    "labels, n_valid",
    [([0, 1, 2, 3], 0), ([0], 0), ([0, 0, 0, 1, 1, 2], 5), ([4, 4, 4], 3), ([0, 1], 0)],
)
def test_edge_cases_finite_loss_and_gradients(labels, n_valid):
    z = torch.randn(len(labels), 4, requires_grad=True)
    loss, nv = supcon_loss(z, torch.tensor(labels), 0.1, return_num_valid=True)
    loss.backward()
    assert int(nv) == n_valid
    assert torch.isfinite(loss)
    assert z.grad is not None and torch.isfinite(z.grad).all()
    if n_valid == 0:
        assert loss.item() == 0.0
        assert torch.equal(z.grad, torch.zeros_like(z))


def test_anchor_without_positive_is_excluded_but_still_a_negative():
    """The lone sample of domain 2 is not an anchor, but moving it changes the other anchors' loss."""
    torch.manual_seed(0)
    z = torch.randn(5, 4, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2])
    loss, nv = supcon_loss(z, labels, 0.1, return_num_valid=True)
    assert int(nv) == 4
    loss.backward()
    assert z.grad[4].abs().sum() > 0  # it is in the denominators
    expected, _ = reference_supcon(z.detach(), labels.tolist(), 0.1)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_zero_embedding_gives_no_nan():
    z = torch.zeros(4, 3, requires_grad=True)
    with torch.no_grad():
        z[2:] = torch.randn(2, 3)
    loss = supcon_loss(z, torch.tensor([0, 0, 1, 1]), 0.1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def test_extreme_temperature_is_stable():
    z = torch.randn(6, 4, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = supcon_loss(z, labels, 1e-3)  # logits up to 1000: exp overflows without logsumexp
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def test_permutation_invariance():
    torch.manual_seed(1)
    z = torch.randn(9, 6)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2])
    perm = torch.randperm(9)
    a = supcon_loss(z, labels)
    b = supcon_loss(z[perm], labels[perm])
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_label_values_only_matter_through_equality():
    torch.manual_seed(2)
    z = torch.randn(6, 4)
    a = supcon_loss(z, torch.tensor([0, 0, 1, 1, 2, 2]))
    b = supcon_loss(z, torch.tensor([7, 7, 3, 3, 0, 0]))
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_scale_invariance_of_embeddings():
    torch.manual_seed(3)
    z = torch.randn(6, 4)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    assert supcon_loss(z, labels).item() == pytest.approx(supcon_loss(5 * z, labels).item(), rel=1e-6)


def test_input_validation():
    with pytest.raises(ValueError, match="temperature"):
        supcon_loss(torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), 0.0)
    with pytest.raises(ValueError, match="one label"):
        supcon_loss(torch.randn(4, 3), torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        supcon_loss(torch.randn(4, 3, 2), torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="integer"):
        supcon_loss(torch.randn(4, 3), torch.tensor([0.0, 0.0, 1.0, 1.0]))


def test_fp16_input_is_computed_in_fp32():
    torch.manual_seed(4)
    z = torch.randn(6, 16).half()
    labels = [0, 0, 1, 1, 2, 2]
    loss = supcon_loss(z, torch.tensor(labels), 0.1)
    assert loss.dtype == torch.float32
    expected, _ = reference_supcon(z.double(), labels, 0.1)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_autocast_does_not_lower_precision():
    """Under CPU autocast a bf16 matmul would be off by ~1e-2 at tau=0.1; fp32 matches to 1e-5."""
    torch.manual_seed(5)
    feats = [torch.randn(6, 32, 4, 4) for _ in range(3)]
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    msc = MultiScaleContrastiveLoss(0.1)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss = msc(feats, labels)
    assert loss.dtype == torch.float32
    expected = sum(reference_supcon(f.mean((2, 3)), labels.tolist(), 0.1)[0] for f in feats) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_embed_is_gap_then_l2_norm():
    f = torch.zeros(2, 3, 2, 2)
    f[0, 0] = 3.0  # GAP (3, 0, 0) -> (1, 0, 0)
    f[1, 1, 0, 0] = 4.0  # GAP (0, 1, 0)
    f[1, 2] = 1.0  # GAP (0, 1, 1) -> (0, .7071, .7071)
    (z,) = embed([f.half()])
    assert z.dtype == torch.float32
    r = 1 / math.sqrt(2)
    assert torch.allclose(z, torch.tensor([[1.0, 0, 0], [0, r, r]]), atol=1e-6)


def _stage_features(n_stages=3, b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    chans = [4, 8, 16][:n_stages]
    sizes = [16, 8, 4][:n_stages]
    enc = [torch.randn(b, c, s, s, generator=g) for c, s in zip(chans, sizes)]
    dec = [torch.randn(b, c, s, s, generator=g) for c, s in zip(chans[:-1][::-1], sizes[:-1][::-1])]
    return enc + dec


def test_msc_is_mean_of_per_stage_losses():
    feats = _stage_features()
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    msc = MultiScaleContrastiveLoss(0.1, stages="all")
    loss = msc(feats, labels)
    per_stage = [reference_supcon(f.mean((2, 3)), labels.tolist(), 0.1)[0] for f in feats]
    assert len(per_stage) == 5
    assert loss.item() == pytest.approx(sum(per_stage) / 5, rel=1e-5)
    assert msc.last_stage_losses.tolist() == pytest.approx(per_stage, rel=1e-5)
    assert msc.last_num_valid_anchors == 6


def test_ssc_uses_only_the_bottleneck():
    feats = _stage_features()
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    ssc = MultiScaleContrastiveLoss(0.1, stages="bottleneck")
    expected = reference_supcon(feats[2].mean((2, 3)), labels.tolist(), 0.1)[0]
    assert ssc(feats, labels).item() == pytest.approx(expected, rel=1e-5)
    # changing any other stage leaves SSC unchanged
    feats2 = [f if i == 2 else torch.randn_like(f) for i, f in enumerate(feats)]
    assert ssc(feats2, labels).item() == pytest.approx(expected, rel=1e-6)
    # the bottleneck can be given explicitly
    ssc_explicit = MultiScaleContrastiveLoss(0.1, stages="bottleneck", bottleneck_index=2)
    assert ssc_explicit(feats, labels).item() == pytest.approx(expected, rel=1e-6)


def test_msc_gradients_reach_every_stage_and_count_skipped():
    feats = [f.requires_grad_() for f in _stage_features()]
    msc = MultiScaleContrastiveLoss()
    msc(feats, torch.tensor([0, 0, 1, 1, 2, 2])).backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)
    loss = msc([f.detach().requires_grad_() for f in feats], torch.tensor([0, 1, 2, 3, 4, 5]))
    assert loss.item() == 0.0 and msc.last_num_valid_anchors == 0


@pytest.mark.parametrize(
    "n, stages, bottleneck, expected",
    [
        (9, "all", None, list(range(9))),
        (9, "bottleneck", None, [4]),
        (5, "bottleneck", None, [2]),
        (1, "bottleneck", None, [0]),
        (6, "bottleneck", 3, [3]),
        (9, [0, -1, 4], None, [0, 8, 4]),
    ],
)
def test_select_stages(n, stages, bottleneck, expected):
    assert select_stages(n, stages, bottleneck) == expected


@pytest.mark.parametrize(
    "n, stages, match",
    [
        (6, "bottleneck", "bottleneck_index"),
        (5, [5], "out of range"),
        (5, "middle", "stages"),
        (0, "all", "empty"),
    ],
)
def test_select_stages_errors(n, stages, match):
    with pytest.raises(ValueError, match=match):
        select_stages(n, stages)


# ------------------------------------------------------------------------------ loss floor (issue 22)


@pytest.mark.parametrize(
    "b, k, tau, cos_between",
    [(6, 2, 0.1, 0.0), (6, 3, 0.1, 0.0), (8, 2, 0.1, -1.0), (12, 3, 0.5, 0.0), (9, 3, 0.1, 1.0)],
)
def test_floor_when_every_embedding_equals_its_domains(b, k, tau, cos_between):
    """Every sample's embedding equals its domain's: L_i = log((n-1) + (B-n) exp((c-1)/tau)) with
    n = B/K (hand-computed), never below the floor log(B/K - 1) and close to it once domains separate."""
    n = b // k
    if cos_between == -1.0:  # two antipodal domain embeddings
        protos = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    elif cos_between == 1.0:  # collapsed: all domains on one vector (start of training)
        protos = torch.ones(k, 3)
    else:  # orthogonal domain embeddings
        protos = torch.eye(k)
    labels = torch.arange(k).repeat_interleave(n)
    z = protos[labels]
    expected = math.log((n - 1) + (b - n) * math.exp((cos_between - 1) / tau))
    loss = supcon_loss(z, labels, tau)
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    floor = math.log(b / k - 1)
    assert loss.item() >= floor - 1e-6
    if cos_between == 1.0:
        assert loss.item() == pytest.approx(math.log(b - 1), rel=1e-6)  # the starting value
    elif tau == 0.1:
        assert loss.item() - floor < 1e-3  # separated at tau = 0.1: within e^-10 of the floor


def test_floor_holds_for_random_balanced_batches():
    labels = torch.arange(3).repeat_interleave(4)  # B = 12, K = 3: floor log(3)
    for seed in range(5):
        z = torch.randn(12, 6, generator=torch.Generator().manual_seed(seed))
        assert supcon_loss(z, labels, 0.1).item() >= math.log(12 / 3 - 1) - 1e-6


def test_msc_averages_not_sums_the_scales():
    """Same features at every stage -> MSC equals the one-stage (SSC) value, whatever the stage count."""
    f = _stage_features(b=6)[2]
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    one = MultiScaleContrastiveLoss(0.1, stages=[0])([f], labels).item()
    for s in (3, 9):
        assert MultiScaleContrastiveLoss(0.1, "all")([f] * s, labels).item() == pytest.approx(one, rel=1e-6)


# ------------------------------------------------------------------- learnable temperature (issue 22)


def test_tensor_temperature_equals_float_temperature_and_gets_a_gradient():
    torch.manual_seed(6)
    z = torch.randn(6, 5)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    tau = torch.tensor(0.2, requires_grad=True)
    loss = supcon_loss(z, labels, tau)
    assert loss.item() == pytest.approx(supcon_loss(z, labels, 0.2).item(), rel=1e-6)
    loss.backward()
    assert tau.grad is not None and torch.isfinite(tau.grad) and tau.grad != 0
    with pytest.raises(ValueError, match="0-dim"):
        supcon_loss(z, labels, torch.tensor([0.1, 0.2]))


def test_learnable_msc_starts_at_the_fixed_loss_and_has_one_temperature_per_scale():
    feats = _stage_features()
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    fixed = MultiScaleContrastiveLoss(0.1, "all")
    lt = MultiScaleContrastiveLoss(0.1, "all", learnable_temperature=True, num_features=5)
    assert [n for n, _ in lt.named_parameters()] == ["temperatures.theta"] and lt.temperatures.num_scales == 5
    assert lt(feats, labels).item() == pytest.approx(fixed(feats, labels).item(), rel=1e-5)
    assert lt.temperature_values() == pytest.approx([0.1] * 5, rel=1e-5)
    assert fixed.temperature_values() == [0.1] and list(fixed.parameters()) == []
    ssc = MultiScaleContrastiveLoss(0.1, "bottleneck", learnable_temperature=True)
    assert ssc.temperatures.num_scales == 1 and ssc(feats, labels).item() > 0


def test_learnable_temperatures_are_positive_get_gradients_and_stay_in_range():
    """Plain SGD with a huge learning rate, both directions: every temperature stays in [0.03, 1.0]."""
    feats = [f.requires_grad_() for f in _stage_features()]
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    ends = []
    for sign in (1.0, -1.0):
        msc = MultiScaleContrastiveLoss(0.1, "all", learnable_temperature=True, temperature_range=(0.03, 1.0),
                                        num_features=5)
        opt = torch.optim.SGD(msc.parameters(), lr=1e4, momentum=0.99, nesterov=True)
        for _ in range(200):
            opt.zero_grad()
            (sign * msc(feats, labels)).backward()
            g = msc.temperatures.theta.grad
            assert g is not None and torch.isfinite(g).all()
            opt.step()
            t = msc.temperatures()
            assert torch.isfinite(t).all() and (t > 0).all() and (t >= 0.03).all() and (t <= 1.0).all()
        assert torch.isfinite(msc(feats, labels))
        # pushed all the way to a bound (the sigmoid saturates there), opposite bounds for the two directions
        end = msc.temperature_values()
        assert all(v == pytest.approx(end[0], rel=1e-3) for v in end) and end[0] in (
            pytest.approx(0.03, rel=1e-3), pytest.approx(1.0, rel=1e-3)), end
        ends.append(end[0])
    assert ends[0] != pytest.approx(ends[1], rel=1e-2)


def test_learnable_temperature_needs_the_number_of_features():
    with pytest.raises(ValueError, match="num_features"):
        MultiScaleContrastiveLoss(0.1, "all", learnable_temperature=True)
    msc = MultiScaleContrastiveLoss(0.1, "all", learnable_temperature=True, num_features=5)
    with pytest.raises(ValueError, match="built for 5 feature maps"):
        msc(_stage_features()[:3], torch.tensor([0, 0, 1, 1, 2, 2]))
    with pytest.raises(ValueError, match="strictly inside"):
        MultiScaleContrastiveLoss(0.1, "all", learnable_temperature=True, temperature_range=(0.1, 1.0), num_features=5)
