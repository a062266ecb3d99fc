"""The learnable MSC temperatures (nnunetv2_mtmd/losses/temperature.py): start value, range, gradients,
checkpoint entry."""

from __future__ import annotations

import math

import pytest
import torch

from nnunetv2_mtmd.errors import InputDataError
from nnunetv2_mtmd.losses.temperature import BoundedTemperature


@pytest.mark.parametrize("init, rng", [(0.1, (0.03, 1.0)), (0.5, (0.03, 1.0)), (0.07, (0.05, 0.2))])
def test_starts_at_the_given_temperature(init, rng):
    t = BoundedTemperature(4, init, rng)
    assert t().dtype == torch.float32 and t().shape == (4,)
    assert t.values() == pytest.approx([init] * 4, rel=1e-6)


def test_sigmoid_in_log_space_hand_computed():
    t = BoundedTemperature(3, 0.1, (0.03, 1.0))
    with torch.no_grad():
        t.theta.copy_(torch.tensor([0.0, 50.0, -50.0]))
    assert t.values() == pytest.approx([math.sqrt(0.03 * 1.0), 1.0, 0.03], rel=1e-6)  # geometric midpoint, bounds


def test_gradient_and_range_under_a_huge_learning_rate():
    t = BoundedTemperature(2, 0.1, (0.03, 1.0))
    opt = torch.optim.SGD(t.parameters(), lr=1e6)
    for step in range(100):
        opt.zero_grad()
        v = t()
        (v[0] - v[1] * (1 if step % 2 else -1)).backward()  # pushes theta back and forth
        assert t.theta.grad is not None and torch.isfinite(t.theta.grad).all()
        opt.step()
        assert ((t() >= 0.03) & (t() <= 1.0)).all() and torch.isfinite(t()).all()


def test_checkpoint_entry_round_trip_with_weights_only(tmp_path):
    t = BoundedTemperature(3, 0.1, (0.03, 1.0))
    with torch.no_grad():
        t.theta.add_(torch.tensor([0.5, -1.0, 2.0]))
    torch.save({"key": t.checkpoint_entry()}, tmp_path / "c.pth")
    entry = torch.load(tmp_path / "c.pth", weights_only=True)["key"]
    u = BoundedTemperature(3, 0.1, (0.03, 1.0))
    param = u.theta
    u.load_checkpoint_entry(entry)
    assert u.theta is param  # in place: an optimizer keeps training the same tensor
    assert u.values() == pytest.approx(t.values(), rel=1e-7)
    with pytest.raises(InputDataError, match="range"):
        BoundedTemperature(3, 0.1, (0.01, 1.0)).load_checkpoint_entry(entry, "ckpt")
    with pytest.raises(InputDataError, match="3 MSC temperature"):
        BoundedTemperature(2, 0.1, (0.03, 1.0)).load_checkpoint_entry(entry, "ckpt")
    with pytest.raises(InputDataError, match="must be a dict"):
        u.load_checkpoint_entry([1, 2], "ckpt")


@pytest.mark.parametrize("init, rng", [(0.03, (0.03, 1.0)), (1.0, (0.03, 1.0)), (0.1, (0.0, 1.0)),
                                       (0.1, (1.0, 0.03)), (0.1, (0.03, math.inf)), (0.1, "ab")])
def test_bad_settings_are_refused(init, rng):
    with pytest.raises(ValueError):
        BoundedTemperature(2, init, rng)


def test_bad_number_of_scales_is_refused():
    for n in (0, True, 1.5):
        with pytest.raises(ValueError, match="num_scales"):
            BoundedTemperature(n)
