"""Tests of the domain-specific 1x1 output heads in the unified label space."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnunetv2_mtmd.architectures.dsbn import set_domain_index
from nnunetv2_mtmd.architectures.heads import OTHER_DOMAIN_LOGIT, DomainHeads, validate_domain_label_ids
from nnunetv2_mtmd.errors import DomainSpecError

IDS = [[1, 2], [3], [4, 5, 6]]  # 3 domains, 7 unified classes


def _hand_reference(heads: DomainHeads, x: torch.Tensor, d: list[int]) -> torch.Tensor:
    """Each sample through its own domain's conv, scattered into the unified channels by hand."""
    out = torch.full((x.shape[0], heads.num_classes, *x.shape[2:]), OTHER_DOMAIN_LOGIT)
    for i, k in enumerate(d):
        y = heads.heads[k](x[i : i + 1])[0]
        out[i, 0] = y[0]
        for j, c in enumerate(IDS[k]):
            out[i, c] = y[1 + j]
    return out


def test_output_matches_per_domain_convs_and_other_channels_are_exactly_minus_1000():
    torch.manual_seed(0)
    heads = DomainHeads(5, IDS, nn.Conv2d)
    x = torch.randn(4, 5, 6, 7)
    d = [2, 0, 1, 0]
    y = heads(x, torch.tensor(d))
    assert y.shape == (4, 7, 6, 7)
    torch.testing.assert_close(y, _hand_reference(heads, x, d), rtol=1e-5, atol=1e-5)
    own = {0: [0, 1, 2], 1: [0, 3], 2: [0, 4, 5, 6]}
    for i, k in enumerate(d):
        other = [c for c in range(7) if c not in own[k]]
        assert (y[i, other] == -1000.0).all()
        assert torch.isfinite(y[i, own[k]]).all() and (y[i, own[k]] != -1000.0).all()


def test_gather_table_hand_computed():
    heads = DomainHeads(3, IDS, nn.Conv2d)
    # concatenated head output channels: domain 0 -> 0 (bg), 1, 2 ; domain 1 -> 3 (bg), 4 ;
    # domain 2 -> 5 (bg), 6, 7, 8
    assert heads._gather_idx.tolist() == [
        [0, 1, 2, 0, 0, 0, 0],
        [3, 0, 0, 4, 0, 0, 0],
        [5, 0, 0, 0, 6, 7, 8],
    ]
    assert heads._valid.int().tolist() == [
        [1, 1, 1, 0, 0, 0, 0],
        [1, 0, 0, 1, 0, 0, 0],
        [1, 0, 0, 0, 1, 1, 1],
    ]
    assert [h.out_channels for h in heads.heads] == [3, 2, 4]
    assert "_gather_idx" not in heads.state_dict()


def test_domain_from_set_domain_index_and_missing_domain_error():
    torch.manual_seed(1)
    heads = DomainHeads(2, IDS, nn.Conv2d)
    x = torch.randn(2, 2, 3, 3)
    with pytest.raises(RuntimeError, match="set_domain_index"):
        heads(x)
    set_domain_index(heads, torch.tensor([1, 2]))
    torch.testing.assert_close(heads(x), heads(x, torch.tensor([1, 2])))


def test_gradients_only_reach_heads_of_present_domains():
    torch.manual_seed(2)
    heads = DomainHeads(3, IDS, nn.Conv2d)
    x = torch.randn(3, 3, 4, 4, requires_grad=True)
    heads(x, torch.tensor([0, 0, 2])).sum().backward()
    assert heads.heads[1].weight.grad is None or (heads.heads[1].weight.grad == 0).all()
    assert (heads.heads[0].weight.grad != 0).any() and (heads.heads[2].weight.grad != 0).any()
    # d(sum of outputs)/d(bias) = number of pixels of that domain's samples, per output channel
    assert heads.heads[0].bias.grad.tolist() == [32.0, 32.0, 32.0]
    assert heads.heads[2].bias.grad.tolist() == [16.0] * 4


def test_shared_head_ignores_domain():
    torch.manual_seed(3)
    heads = DomainHeads(4, IDS, nn.Conv2d, shared=True)
    assert len(heads.heads) == 1 and heads.heads[0].out_channels == 7
    x = torch.randn(2, 4, 5, 5)
    y = heads(x, torch.tensor([0, 2]))
    torch.testing.assert_close(y, F.conv2d(x, heads.heads[0].weight, heads.heads[0].bias))
    torch.testing.assert_close(heads(x), y)  # no domain needed
    assert not (y == OTHER_DOMAIN_LOGIT).any()


@pytest.mark.parametrize("conv_op,shape", [(nn.Conv1d, (2, 3, 5)), (nn.Conv3d, (2, 3, 4, 3, 2))])
def test_other_dimensionalities(conv_op, shape):
    torch.manual_seed(4)
    heads = DomainHeads(3, IDS, conv_op)
    x = torch.randn(*shape)
    y = heads(x, torch.tensor([1, 2]))
    assert y.shape == (2, 7, *shape[2:])
    assert (y[0, [1, 2, 4, 5, 6]] == OTHER_DOMAIN_LOGIT).all()
    ref = heads.heads[1](x[:1])
    torch.testing.assert_close(y[0, [0, 3]], ref[0])


def test_autocast_keeps_exact_other_logit():
    torch.manual_seed(5)
    heads = DomainHeads(3, IDS, nn.Conv2d)
    x = torch.randn(2, 3, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = heads(x, torch.tensor([0, 1]))
    assert y.dtype == torch.bfloat16
    assert (y[0, 3:] == -1000.0).all() and (y[1, [1, 2, 4, 5, 6]] == -1000.0).all()
    # softmax of the other channels is exactly 0 in half precision
    assert (torch.softmax(y.half(), 1)[0, 3:] == 0).all()


@pytest.mark.parametrize(
    "ids,match",
    [
        ([], "non-empty list"),
        ([[1, 2], []], r"\[1\]: expected a non-empty list"),
        ([[1, 2], [2, 3]], "also used by domain 0"),
        ([[1, 2], [4]], r"must be 1..3, found \[1, 2, 4\]"),
        ([[0, 1]], "integers >= 1"),
        ([[1, True]], "integers >= 1"),
        ("12", "non-empty list"),
    ],
)
def test_invalid_domain_label_ids(ids, match):
    with pytest.raises(DomainSpecError, match=match):
        validate_domain_label_ids(ids)


def test_validate_returns_tuples():
    assert validate_domain_label_ids([[2, 1], [3]]) == ((2, 1), (3,))
