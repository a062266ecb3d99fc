"""Tests of domain-specific batch norm (DSBN) and domain-specific instance norm.

Reference: K separate ``torch.nn.BatchNorm`` modules, each run on its domain's samples only."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from nnunetv2_mtmd.architectures.dsbn import (
    DomainAware,
    DomainSpecificBatchNorm1d,
    DomainSpecificBatchNorm2d,
    DomainSpecificBatchNorm3d,
    DomainSpecificInstanceNorm2d,
    domain_aware_modules,
    set_domain_index,
)

K, C = 3, 4


def _random_affine(dsbn: DomainSpecificBatchNorm2d, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        dsbn.weight.copy_(torch.rand(dsbn.weight.shape, generator=g) + 0.5)
        dsbn.bias.copy_(torch.randn(dsbn.bias.shape, generator=g))


def _reference_bns(dsbn: DomainSpecificBatchNorm2d, cls=nn.BatchNorm2d) -> list[nn.Module]:
    """K torch BatchNorms with the DSBN's per-domain weights and running stats."""
    bns = []
    for k in range(dsbn.num_domains):
        bn = cls(dsbn.num_features, eps=dsbn.eps, momentum=dsbn.momentum)
        with torch.no_grad():
            bn.weight.copy_(dsbn.weight[k])
            bn.bias.copy_(dsbn.bias[k])
            bn.running_mean.copy_(dsbn.running_mean[k])
            bn.running_var.copy_(dsbn.running_var[k])
        bns.append(bn)
    return bns


def _run(m: nn.Module, x: torch.Tensor, d: list[int]) -> torch.Tensor:
    set_domain_index(m, torch.tensor(d, dtype=torch.long))
    return m(x)


def _reference_forward(bns: list[nn.Module], x: torch.Tensor, d: list[int]) -> torch.Tensor:
    dt = torch.tensor(d)
    out = torch.empty_like(x)
    for k, bn in enumerate(bns):
        sel = dt == k
        if sel.any():
            out[sel] = bn(x[sel])
    return out


# the training forward has two implementations: a hand-written autograd function (default) and plain
# autograd ops (used with the DDP all-reduce); both are checked against torch.nn.BatchNorm
PATHS = pytest.mark.parametrize("fused", [True, False], ids=["fused", "autograd"])


@PATHS
@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
def test_equals_separate_batchnorms_train_then_eval(momentum, fused):
    torch.manual_seed(0)
    dsbn = DomainSpecificBatchNorm2d(C, num_domains=K, momentum=momentum)
    dsbn.use_fused_function = fused
    _random_affine(dsbn)
    bns = _reference_bns(dsbn)
    domain_lists = [[0, 1, 1, 2, 0], [2, 2, 0, 0, 0], [1, 0, 1, 1, 2, 2]]
    for it, d in enumerate(domain_lists * 2):
        x = torch.randn(len(d), C, 6, 5) * (it + 1) + it
        y = _run(dsbn, x, d)
        y_ref = _reference_forward(bns, x, d)
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for k, bn in enumerate(bns):
        torch.testing.assert_close(dsbn.running_mean[k], bn.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(dsbn.running_var[k], bn.running_var, rtol=1e-5, atol=1e-6)
        assert int(dsbn.num_batches_tracked[k]) == int(bn.num_batches_tracked)
    # eval mode: every sample uses its own domain's running stats
    dsbn.eval()
    for bn in bns:
        bn.eval()
    d = [2, 0, 1, 0]
    x = torch.randn(4, C, 3, 3)
    torch.testing.assert_close(_run(dsbn, x, d), _reference_forward(bns, x, d), rtol=1e-5, atol=1e-5)


def test_eval_uses_per_domain_running_stats_hand_computed():
    dsbn = DomainSpecificBatchNorm2d(1, num_domains=2, eps=0.0).eval()
    with torch.no_grad():
        dsbn.running_mean.copy_(torch.tensor([[1.0], [10.0]]))
        dsbn.running_var.copy_(torch.tensor([[4.0], [0.25]]))
        dsbn.weight.copy_(torch.tensor([[1.0], [2.0]]))
        dsbn.bias.copy_(torch.tensor([[0.0], [-1.0]]))
    x = torch.full((2, 1, 1, 1), 3.0)
    y = _run(dsbn, x, [0, 1]).flatten().tolist()
    # domain 0: (3 - 1) / 2 * 1 + 0 = 1 ; domain 1: (3 - 10) / 0.5 * 2 - 1 = -29
    assert y == pytest.approx([1.0, -29.0])


def test_only_present_domains_running_stats_change():
    dsbn = DomainSpecificBatchNorm2d(C, num_domains=4)
    before = copy.deepcopy(dsbn.state_dict())
    _run(dsbn, torch.randn(4, C, 5, 5) + 3, [1, 3, 3, 1])
    after = dsbn.state_dict()
    for k in (0, 2):
        assert torch.equal(after["running_mean"][k], before["running_mean"][k])
        assert torch.equal(after["running_var"][k], before["running_var"][k])
    for k in (1, 3):
        assert not torch.equal(after["running_mean"][k], before["running_mean"][k])
        assert not torch.equal(after["running_var"][k], before["running_var"][k])
    assert after["num_batches_tracked"].tolist() == [0, 1, 0, 1]


@PATHS
def test_mixed_batch_equals_each_group_alone(fused):
    torch.manual_seed(1)
    dsbn = DomainSpecificBatchNorm2d(C, num_domains=K)
    dsbn.use_fused_function = fused
    _random_affine(dsbn, seed=3)
    x = torch.randn(6, C, 4, 4)
    d = [0, 2, 1, 2, 0, 1]
    y_mixed = _run(copy.deepcopy(dsbn), x, d)
    for k in range(K):
        idx = [i for i, dk in enumerate(d) if dk == k]
        y_alone = _run(copy.deepcopy(dsbn), x[idx], [k] * len(idx))
        torch.testing.assert_close(y_mixed[idx], y_alone, rtol=1e-6, atol=1e-6)


@PATHS
def test_gradients_match_separate_batchnorms(fused):
    torch.manual_seed(2)
    dsbn = DomainSpecificBatchNorm2d(C, num_domains=K).double()
    dsbn.use_fused_function = fused
    _random_affine(dsbn)
    bns = [bn.double() for bn in _reference_bns(dsbn)]
    d = [0, 1, 0, 2, 1]
    x1 = torch.randn(5, C, 3, 4, dtype=torch.double, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    g = torch.randn(5, C, 3, 4, dtype=torch.double)
    (_run(dsbn, x1, d) * g).sum().backward()
    (_reference_forward(bns, x2, d) * g).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-10, atol=1e-10)
    for k, bn in enumerate(bns):
        torch.testing.assert_close(dsbn.weight.grad[k], bn.weight.grad, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(dsbn.bias.grad[k], bn.bias.grad, rtol=1e-10, atol=1e-10)


@PATHS
@pytest.mark.parametrize("affine", [True, False])
def test_gradcheck_double(fused, affine):
    torch.manual_seed(3)
    dsbn = DomainSpecificBatchNorm2d(2, num_domains=2, affine=affine).double()
    dsbn.use_fused_function = fused
    if affine:
        _random_affine(dsbn)
    set_domain_index(dsbn, torch.tensor([0, 1, 0, 1, 1]))
    x = torch.randn(5, 2, 2, 3, dtype=torch.double, requires_grad=True)
    if affine:  # gradients w.r.t. input AND the (K, C) affine parameters
        assert torch.autograd.gradcheck(lambda inp, w, b: _functional(dsbn, inp, w, b), (x, dsbn.weight, dsbn.bias))
    else:
        assert torch.autograd.gradcheck(dsbn, (x,))


def _functional(dsbn, x, w, b):
    """Run ``dsbn`` with parameters replaced by ``w``, ``b`` (so gradcheck perturbs them)."""
    return torch.func.functional_call(dsbn, {"weight": w, "bias": b}, (x,))


@PATHS
def test_single_value_domain_allowed_no_nan(fused):
    dsbn = DomainSpecificBatchNorm2d(2, num_domains=2)
    dsbn.use_fused_function = fused
    with torch.no_grad():
        dsbn.bias.copy_(torch.tensor([[0.5, -0.5], [7.0, 8.0]]))
    x = torch.randn(3, 2, 1, 1, requires_grad=True)
    y = _run(dsbn, x, [0, 0, 1])
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all() and torch.isfinite(dsbn.weight.grad).all()
    # the lone sample of domain 1 normalises to 0 -> output = its bias
    torch.testing.assert_close(y[2].flatten(), torch.tensor([7.0, 8.0]), rtol=0, atol=1e-4)
    assert torch.equal(dsbn.running_var[1], torch.ones(2))  # variance update skipped
    torch.testing.assert_close(dsbn.running_mean[1], 0.1 * x[2].detach().flatten())
    assert dsbn.num_batches_tracked.tolist() == [1, 1]
    assert torch.isfinite(dsbn.running_var).all()


def test_no_domain_set_raises_clear_error():
    dsbn = DomainSpecificBatchNorm2d(C, num_domains=K)
    with pytest.raises(RuntimeError, match="set_domain_index"):
        dsbn(torch.randn(2, C, 3, 3))
    set_domain_index(dsbn, torch.tensor([0, 1, 2]))
    with pytest.raises(RuntimeError, match="3 entries but the input batch has 2"):
        dsbn(torch.randn(2, C, 3, 3))
    with pytest.raises(TypeError, match="int64"):
        set_domain_index(dsbn, torch.tensor([0.0, 1.0]))


def test_bad_constructor_args():
    with pytest.raises(ValueError, match="num_domains"):
        DomainSpecificBatchNorm2d(4, num_domains=0)
    with pytest.raises(ValueError, match="expected a 4D"):
        _run(DomainSpecificBatchNorm2d(4, num_domains=2), torch.randn(2, 4, 3), [0, 1])


def test_set_domain_index_tree_and_cache():
    net = nn.Sequential(
        nn.Conv2d(1, C, 3, padding=1), DomainSpecificBatchNorm2d(C, num_domains=2), nn.ReLU(),
        nn.Sequential(nn.Conv2d(C, C, 1), DomainSpecificInstanceNorm2d(C, num_domains=2)),
    )
    mods = domain_aware_modules(net)
    assert [type(m) for m in mods] == [DomainSpecificBatchNorm2d, DomainSpecificInstanceNorm2d]
    assert all(isinstance(m, DomainAware) for m in mods)
    idx = torch.tensor([1, 0])
    set_domain_index(net, idx)
    assert net[1].domain_idx is idx and net[3][1].domain_idx is idx
    assert domain_aware_modules(net) is mods  # cached
    assert net(torch.randn(2, 1, 5, 5)).shape == (2, C, 5, 5)
    assert "_mtmd_domain_aware_modules" not in "".join(net.state_dict().keys())
    set_domain_index(net, None)
    with pytest.raises(RuntimeError):
        net(torch.randn(2, 1, 5, 5))


@pytest.mark.parametrize(
    "cls,ref,shape",
    [
        (DomainSpecificBatchNorm1d, nn.BatchNorm1d, (5, C)),
        (DomainSpecificBatchNorm1d, nn.BatchNorm1d, (5, C, 7)),
        (DomainSpecificBatchNorm3d, nn.BatchNorm3d, (5, C, 3, 4, 2)),
    ],
)
def test_other_dimensionalities(cls, ref, shape):
    torch.manual_seed(4)
    dsbn = cls(C, num_domains=2)
    _random_affine(dsbn)
    bns = _reference_bns(dsbn, ref)
    d = [0, 1, 1, 0, 0]
    x = torch.randn(*shape)
    torch.testing.assert_close(_run(dsbn, x, d), _reference_forward(bns, x, d), rtol=1e-5, atol=1e-5)


@PATHS
def test_fp16_and_autocast_keep_dtype_and_match_fp32(fused):
    torch.manual_seed(5)
    dsbn = DomainSpecificBatchNorm2d(C, num_domains=2)
    dsbn.use_fused_function = fused
    x = torch.randn(4, C, 8, 8) * 50 + 100  # large offset: a naive fp16 variance would be far off
    d = [0, 1, 1, 0]
    y32 = _run(copy.deepcopy(dsbn), x, d)
    y16 = _run(copy.deepcopy(dsbn), x.half(), d)
    assert y16.dtype == torch.float16
    torch.testing.assert_close(y16.float(), y32, rtol=1e-2, atol=1e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conv = nn.Conv2d(C, C, 1)
        h = conv(x)
        assert h.dtype == torch.bfloat16
        yb = _run(copy.deepcopy(dsbn), h, d)
    assert yb.dtype == torch.bfloat16 and torch.isfinite(yb.float()).all()
    # backward through an fp16 input gives an fp16 gradient close to the fp32 one
    x16 = x.half().requires_grad_(True)
    x32 = x.clone().requires_grad_(True)
    g = torch.randn_like(x)
    (_run(copy.deepcopy(dsbn), x16, d).float() * g).sum().backward()
    (_run(copy.deepcopy(dsbn), x32, d) * g).sum().backward()
    assert x16.grad.dtype == torch.float16
    torch.testing.assert_close(x16.grad.float(), x32.grad, rtol=2e-2, atol=2e-3)


def test_track_running_stats_false_uses_batch_stats_in_eval():
    dsbn = DomainSpecificBatchNorm2d(C, num_domains=2, track_running_stats=False).eval()
    assert dsbn.running_mean is None
    x = torch.randn(4, C, 3, 3)
    d = [0, 1, 1, 0]
    bns = [nn.BatchNorm2d(C, track_running_stats=False).eval() for _ in range(2)]
    torch.testing.assert_close(_run(dsbn, x, d), _reference_forward(bns, x, d), rtol=1e-5, atol=1e-5)


def test_state_dict_shapes():
    sd = DomainSpecificBatchNorm2d(C, num_domains=K).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == {
        "weight": (K, C), "bias": (K, C), "running_mean": (K, C), "running_var": (K, C),
        "num_batches_tracked": (K,),
    }


def test_domain_specific_instance_norm_matches_per_domain_instancenorm():
    torch.manual_seed(6)
    dsin = DomainSpecificInstanceNorm2d(C, num_domains=2)
    _random_affine(dsin)
    x = torch.randn(4, C, 5, 5) * 3 + 1
    d = [1, 0, 1, 1]
    y = _run(dsin, x, d)
    for i, k in enumerate(d):
        ref = nn.InstanceNorm2d(C, affine=True)
        with torch.no_grad():
            ref.weight.copy_(dsin.weight[k])
            ref.bias.copy_(dsin.bias[k])
        torch.testing.assert_close(y[i : i + 1], ref(x[i : i + 1]), rtol=1e-5, atol=1e-5)
    assert set(dsin.state_dict()) == {"weight", "bias"}
    with pytest.raises(ValueError, match="track_running_stats"):
        DomainSpecificInstanceNorm2d(C, num_domains=2, track_running_stats=True)


def test_dropin_norm_op_for_dynamic_network_architectures():
    from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU

    norm_kwargs = {"num_domains": K, "eps": 1e-5, "momentum": 0.1, "affine": True}
    block = ConvDropoutNormReLU(
        nn.Conv2d, 2, C, 3, 1, False, DomainSpecificBatchNorm2d, norm_kwargs, None, None,
        nn.LeakyReLU, {"inplace": True},
    )
    assert isinstance(block.norm, DomainSpecificBatchNorm2d) and block.norm.num_domains == K
    set_domain_index(block, torch.tensor([0, 2]))
    assert block(torch.randn(2, 2, 6, 6)).shape == (2, C, 6, 6)


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str, compiled: bool = False) -> None:
    import torch.distributed as dist
    from torch._dynamo.backends.debugging import aot_eager

    from nnunetv2_mtmd.architectures.dsbn import set_dsbn_sync

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        x, d, g, state = torch.load(f"{out_dir}/inputs.pt")
        dsbn = DomainSpecificBatchNorm2d(C, num_domains=K)
        dsbn.load_state_dict(state)
        set_dsbn_sync(dsbn, True)
        sl = slice(rank * 3, rank * 3 + 3)
        xr = x[sl].clone().requires_grad_(True)
        graphs = []  # one graph per compiled region: more than one = a graph break

        def counting(gm, example_inputs):
            graphs.append(gm)
            return aot_eager(gm, example_inputs)

        run = torch.compile(_run, backend=counting) if compiled else _run
        y = run(dsbn, xr, d[sl].tolist())
        (y * g[sl]).sum().backward()
        torch.save((y.detach(), xr.grad, dsbn.weight.grad, dsbn.bias.grad, dsbn.state_dict(), len(graphs)),
                   f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_distributed_sync_matches_single_process_full_batch(tmp_path, compiled):
    """Two gloo processes with 3 samples each == one process with all 6 samples; also under
    ``torch.compile`` (aot_eager), where the all-reduce must not break the graph."""
    import torch.multiprocessing as mp

    torch.manual_seed(8)
    dsbn = DomainSpecificBatchNorm2d(C, num_domains=K)
    _random_affine(dsbn)
    x = torch.randn(6, C, 4, 4) * 2 + 1
    d = torch.tensor([0, 1, 0, 2, 0, 1])
    g = torch.randn(6, C, 4, 4)
    torch.save((x, d, g, dsbn.state_dict()), tmp_path / "inputs.pt")
    # fork: no re-import of torch in the children (spawn takes ~15 s on a loaded 2-core machine)
    mp.start_processes(
        _ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path), compiled), nprocs=2, join=True,
        start_method="fork",
    )

    ref = copy.deepcopy(dsbn)
    xf = x.clone().requires_grad_(True)
    y_full = _run(ref, xf, d.tolist())
    (y_full * g).sum().backward()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    torch.testing.assert_close(torch.cat([r[0] for r in ranks]), y_full.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([r[1] for r in ranks]), xf.grad, rtol=1e-4, atol=1e-5)
    # DDP sums/averages parameter gradients; the sum of the local ones is the full-batch gradient
    torch.testing.assert_close(ranks[0][2] + ranks[1][2], ref.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ranks[0][3] + ranks[1][3], ref.bias.grad, rtol=1e-4, atol=1e-5)
    assert [r[5] for r in ranks] == ([1, 1] if compiled else [0, 0])  # compiled: one graph, no break
    for r in ranks:
        for key in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(r[4][key], ref.state_dict()[key], rtol=1e-5, atol=1e-6)
