"""Domain-balanced batches: exactly B/K samples of every domain, forced-foreground slots spread over
domains, code channel restored after augmentation."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from nnunetv2_mtmd.training.sampling import (
    DomainBalancedDataLoader,
    balanced_domain_slots,
    pick_foreground_class,
    restore_code_channel,
)


@pytest.mark.parametrize("batch_size,domains", [(6, [0, 1, 2]), (12, [0, 1, 2]), (10, [0, 1, 2, 3, 4]),
                                                (4, [0, 1]), (20, list(range(10)))])
def test_slots_exactly_b_over_k_per_domain_over_many_batches(batch_size, domains):
    rng = np.random.RandomState(0)
    for _ in range(500):
        slots = balanced_domain_slots(batch_size, domains, rng)
        assert len(slots) == batch_size
        assert Counter(slots) == {d: batch_size // len(domains) for d in domains}


def test_slots_are_shuffled_and_oversampled_tail_covers_domains():
    rng = np.random.RandomState(1)
    orders = {tuple(balanced_domain_slots(6, [0, 1, 2], rng)) for _ in range(200)}
    assert len(orders) > 20  # not a fixed order
    # nnU-Net forces foreground in the last round(B * 0.33) = 2 slots of a batch of 6: with one
    # sample per domain per round, those two slots always hold two different domains.
    for o in orders:
        assert o[-1] != o[-2]


def test_slots_with_missing_domain_spread_over_present_ones():
    slots = balanced_domain_slots(6, [0, 2], np.random.RandomState(0))
    assert Counter(slots) == {0: 3, 2: 3}
    with pytest.raises(ValueError, match="no domain"):
        balanced_domain_slots(6, [], np.random.RandomState(0))


def test_get_indices_draws_keys_of_the_slot_domain():
    dl = DomainBalancedDataLoader.__new__(DomainBalancedDataLoader)  # logic only, no dataset I/O
    dl.batch_size = 9
    dl.keys_per_domain = {0: ["a_1", "a_2"], 1: ["b_1"], 2: ["c_1", "c_2", "c_3"]}
    dl.domains_present = [0, 1, 2]
    np.random.seed(0)
    for _ in range(100):
        keys = dl.get_indices()
        assert Counter(k[0] for k in keys) == {"a": 3, "b": 3, "c": 3}


def test_restore_code_channel_overwrites_augmented_values():
    data = torch.randn(4, 3, 8, 8)  # 2 image channels + corrupted code channel
    img_before = data[:, :2].clone()
    restore_code_channel(data, torch.tensor([0, 2, 1, 0]))
    assert torch.equal(data[:, :2], img_before)
    for b, code in enumerate([1, 3, 2, 1]):
        assert torch.all(data[b, 2] == code)


@pytest.mark.parametrize("percent, forced_slots, every_domain_forced", [
    (0.33, [4, 5], False),  # nnU-Net's default: round(6 * 0.67) = 4 -> the last 2 slots, 2 of 3 domains
    (0.66, [2, 3, 4, 5], True),  # the demo: round(6 * 0.34) = 2 -> the last 4 slots cover a full round
])
def test_forced_foreground_slots_of_nnunets_loader(percent, forced_slots, every_domain_forced):
    dl = DomainBalancedDataLoader.__new__(DomainBalancedDataLoader)
    dl.batch_size, dl.oversample_foreground_percent = 6, percent
    assert [j for j in range(6) if dl._oversample_last_XX_percent(j)] == forced_slots
    rng = np.random.RandomState(2)
    covered = [set(np.array(balanced_domain_slots(6, [0, 1, 2], rng))[forced_slots]) == {0, 1, 2}
               for _ in range(100)]
    assert all(covered) if every_domain_forced else not any(covered)



@pytest.mark.parametrize("exponent, expected", [
    # stored locations: class 1 -> 400, class 2 -> 100, class 3 -> none in this case
    (0.0, {1: 0.5, 2: 0.5}),  # nnU-Net's uniform choice
    (0.5, {1: (1 / 20) / (1 / 20 + 1 / 10), 2: (1 / 10) / (1 / 20 + 1 / 10)}),  # 1/3, 2/3
    (1.0, {1: 0.2, 2: 0.8}),  # inverse frequency: 1/400 : 1/100
])
def test_pick_foreground_class_weights(exponent, expected):
    locs = {1: np.zeros((400, 4)), 2: np.zeros((100, 4)), 3: np.zeros((0, 4)), (-1, 1, 2, 3): np.zeros((500, 4))}
    rng = np.random.RandomState(0)
    n = 20000
    counts = Counter(pick_foreground_class(locs, exponent, exclude=(-1, 1, 2, 3), rng=rng) for _ in range(n))
    assert set(counts) == set(expected)
    for c, p in expected.items():
        assert counts[c] / n == pytest.approx(p, abs=0.015)


def test_pick_foreground_class_without_classes_returns_none():
    assert pick_foreground_class({1: np.zeros((0, 4))}, 1.0) is None
    assert pick_foreground_class({(-1, 1): np.zeros((5, 4))}, 1.0, exclude=(-1, 1)) is None


@pytest.mark.parametrize("bad", [-0.5, 3.0, "1"])
def test_rare_class_exponent_is_checked(bad):
    with pytest.raises(ValueError, match="rare_class_exponent must be a number in \\[0, 2\\]"):
        DomainBalancedDataLoader.__init__(DomainBalancedDataLoader.__new__(DomainBalancedDataLoader), {}, 6,
                                          (8, 8), (8, 8), None, None, rare_class_exponent=bad)


@pytest.mark.parametrize("exponent, share_of_rare", [(0.0, 0.5), (1.0, 1000 / 1010)])
def test_get_bbox_centres_forced_samples_on_the_weighted_class(exponent, share_of_rare):
    """nnU-Net's own get_bbox picks the slice of a voxel of the chosen class: class 1 (1000 stored
    locations) lies in slice 0, class 2 (10 locations) in slice 5."""
    dl = DomainBalancedDataLoader.__new__(DomainBalancedDataLoader)
    dl.need_to_pad, dl.patch_size, dl.has_ignore = np.array([0, 0, 0]), [1, 4, 4], False
    dl.annotated_classes_key, dl.rare_class_exponent = (-1, 1, 2), exponent
    locs = {1: np.array([[0, 0, 2, 2]] * 1000), 2: np.array([[0, 5, 2, 2]] * 10)}
    np.random.seed(0)
    n = 4000
    z = [dl.get_bbox(np.array([8, 4, 4]), True, locs)[0][0] for _ in range(n)]
    assert sum(zz == 5 for zz in z) / n == pytest.approx(share_of_rare, abs=0.025)
