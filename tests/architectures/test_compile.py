"""``torch.compile`` of the multi-domain U-Nets (issue 25): one graph, one compilation per mode and shape.

nnU-Net compiles the network on CUDA only, so these CPU tests call ``torch.compile`` directly. The
graph-break and recompilation tests use dynamo with the cheap "eager" / "aot_eager" backends (the
graph capture is what is tested; "aot_eager" also traces the backward, including DSBN's hand-written
autograd function); one small test runs the default inductor backend end to end. Every compiling test
runs in a forked child (tests/forked.py: AOTAutograd would otherwise break later fork-based tests).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo as dynamo
from torch import nn

from nnunetv2_mtmd.architectures.dsbn import DomainSpecificBatchNorm2d
from nnunetv2_mtmd.architectures.unet import MultiDomainPlainConvUNet, MultiDomainResEncUNet
from tests.forked import forked

IDS = [[1, 2], [3], [4, 5]]  # 3 domains, 6 unified classes
K = len(IDS)
N_STAGES = 3
SIZE = 16

#: (backbone, head mode, norm): the DSL network (DSBN + one head per domain) and the Shared one
#: (nnU-Net's plain BatchNorm + one head over all classes), for both backbones.
VARIANTS = [
    ("plain", "domain", "dsbn"), ("plain", "shared", "bn"), ("resenc", "domain", "dsbn"), ("resenc", "shared", "bn"),
]


def _net(backbone: str = "plain", head_mode: str = "domain", norm: str = "dsbn", seed: int = 0) -> nn.Module:
    """A tiny multi-domain U-Net (3 stages, 4-16 features), nnU-Net-initialised, deep supervision on."""
    torch.manual_seed(seed)
    if norm == "dsbn":
        norm_op, norm_kw = DomainSpecificBatchNorm2d, {"num_domains": K, "eps": 1e-5, "momentum": 0.1, "affine": True}
    else:
        norm_op, norm_kw = nn.BatchNorm2d, {"eps": 1e-5, "momentum": 0.1, "affine": True}
    common = dict(
        input_channels=2, n_stages=N_STAGES, features_per_stage=[4, 8, 16], conv_op=nn.Conv2d,
        kernel_sizes=[[3, 3]] * N_STAGES, strides=[[1, 1], [2, 2], [2, 2]], num_classes=6,
        n_conv_per_stage_decoder=[1, 1], domain_label_ids=IDS, conv_bias=True, norm_op=norm_op,
        norm_op_kwargs=norm_kw, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=True,
        head_mode=head_mode,
    )
    if backbone == "plain":
        net = MultiDomainPlainConvUNet(n_conv_per_stage=[1, 1, 1], **common)
    else:
        net = MultiDomainResEncUNet(n_blocks_per_stage=[1, 1, 1], **common)
    net.apply(net.initialize)
    return net


def _input(codes: list[int], seed: int = 1, size: int = SIZE) -> torch.Tensor:
    """``(B, 2, size, size)``: a random image channel and the constant domain code channel."""
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(len(codes), 1, size, size, generator=g)
    code = torch.tensor(codes, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, size, size)
    return torch.cat([img, code], 1)


class CountingBackend:
    """A ``torch.compile`` backend that counts the graphs it is given (one per compilation) and runs
    them through ``aot_eager`` (forward and backward traced by AOTAutograd, executed eagerly)."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> object:
        from torch._dynamo.backends.debugging import aot_eager

        self.graphs += 1
        return aot_eager(gm, example_inputs)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Every test starts and ends with empty dynamo caches (compilations of other tests do not count)."""
    dynamo.reset()
    yield
    dynamo.reset()


# ------------------------------------------------------------------------------------- graph breaks
@pytest.mark.parametrize("backbone, head_mode, norm", VARIANTS)
@pytest.mark.parametrize("collect", [False, True], ids=["no_features", "features"])
@forked  # compiles: keeps autograd's threads out of the pytest process (tests/forked.py)
def test_no_graph_break_in_training_and_eval(backbone, head_mode, norm, collect):
    net = _net(backbone, head_mode, norm)
    net.collect_features = collect
    x = _input([1, 2, 3, 1, 3, 2])
    for training in (True, False):
        net.train(training)
        explanation = dynamo.explain(net)(x)
        reasons = [str(b.reason).splitlines()[0] for b in explanation.break_reasons]
        assert explanation.graph_break_count == 0, reasons
        assert explanation.graph_count == 1
    # the side effects reached the module as in eager mode
    assert (net.last_features is not None) == collect
    if collect:
        assert len(net.last_features) == 2 * N_STAGES - 1


# ------------------------------------------------------------------------------------ recompilation
DOMAIN_MIXES = [[1, 2, 3, 1, 2, 3], [1, 1, 1, 1, 1, 1], [3, 3, 2, 2, 1, 1], [2, 1, 2, 1, 2, 1], [3, 3, 3, 3, 3, 2]]


@pytest.mark.parametrize("backbone, head_mode, norm", VARIANTS[:1] + VARIANTS[2:3])
@forked  # compiles: keeps autograd's threads out of the pytest process (tests/forked.py)
def test_one_compilation_per_mode_whatever_the_domain_mix(backbone, head_mode, norm):
    net = _net(backbone, head_mode, norm)
    net.collect_features = True
    backend = CountingBackend()
    compiled = torch.compile(net, backend=backend)
    net.train()
    for i, codes in enumerate(DOMAIN_MIXES):
        out = compiled(_input(codes, seed=i))
        sum(o.sum() for o in out).backward()
        assert torch.equal(net.last_domain_idx, torch.tensor(codes) - 1)  # this batch's, not a stale one
    assert backend.graphs == 1
    net.eval()
    with torch.no_grad():
        for i, codes in enumerate(DOMAIN_MIXES):
            compiled(_input(codes, seed=10 + i))
    assert backend.graphs == 2  # one more for eval mode, none for the domain mixes


# --------------------------------------------------------------------------- compiled == eager
def _loss(out: list[torch.Tensor], features: list[torch.Tensor]) -> torch.Tensor:
    """A loss touching every output scale and every stage feature (gradients flow through both)."""
    w = torch.linspace(0.5, 1.5, out[0].shape[1]).view(1, -1, 1, 1)
    seg = sum(((o.clamp(min=-20) * w) ** 2).mean() * (s + 1) for s, o in enumerate(out))
    return seg + sum(f.square().mean() for f in features)


def _run(net: nn.Module, model: nn.Module, batches: list[torch.Tensor]) -> tuple[list, list]:
    """Two training steps (forward, loss on outputs + ``last_features``, backward, SGD) on ``batches[:2]``,
    then an eval forward of ``batches[2]`` if given; returns the outputs and the gradients of every
    parameter after each step. ``model`` is ``net`` or its compiled wrapper."""
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    outs, grads = [], []
    net.train()
    for x in batches[:2]:
        opt.zero_grad()
        out = model(x)
        _loss(out, net.last_features).backward()
        outs.append([o.detach() for o in out])
        grads.append({n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None})
        opt.step()
    if len(batches) > 2:
        net.eval()
        with torch.no_grad():
            outs.append([o.detach() for o in model(batches[2])])
    return outs, grads


@pytest.mark.parametrize("backbone, head_mode, norm", VARIANTS[:3])
@forked  # compiles: keeps autograd's threads out of the pytest process (tests/forked.py)
def test_compiled_outputs_gradients_and_running_stats_equal_eager(backbone, head_mode, norm):
    eager = _net(backbone, head_mode, norm)
    twin = copy.deepcopy(eager)
    eager.collect_features = twin.collect_features = True
    batches = [_input([1, 2, 3, 1, 2, 3], seed=1), _input([3, 3, 1, 1, 1, 2], seed=2), _input([2, 1, 3], seed=3)]
    out_e, grad_e = _run(eager, eager, batches)
    out_c, grad_c = _run(twin, torch.compile(twin, backend="aot_eager"), batches)
    for a, b in zip(out_e, out_c):
        for oa, ob in zip(a, b):
            torch.testing.assert_close(ob, oa, rtol=1e-4, atol=1e-5)
    for ga, gb in zip(grad_e, grad_c):
        assert ga.keys() == gb.keys() and len(ga) == len(list(eager.parameters()))
        for name in ga:
            torch.testing.assert_close(gb[name], ga[name], rtol=1e-4, atol=1e-6, msg=name)
    # the other domains' channels are still exactly -1000 and the running statistics moved identically
    if head_mode == "domain":
        assert torch.all(out_c[2][0][1, 3:] == -1000.0)  # sample 1 (code 1) has channels 0..2 only
    for (name, be), bc in zip(eager.named_buffers(), twin.buffers()):
        torch.testing.assert_close(bc, be, rtol=1e-5, atol=1e-6, msg=name)
    assert any(float(b.abs().sum()) > 0 for n, b in twin.named_buffers() if n.endswith("running_mean"))


@pytest.mark.slow  # about 40-100 s on a busy 2-core machine: inductor generates and builds C++ kernels
@forked  # compiles: keeps autograd's threads out of the pytest process (tests/forked.py)
def test_inductor_on_a_tiny_network_matches_eager():
    """The default backend (inductor, CPU C++ kernels): two training steps of the DSL network with the
    stage features in the loss (forward and backward graphs; eval mode is covered by aot_eager above)."""
    eager = _net("plain", "domain", "dsbn")
    twin = copy.deepcopy(eager)
    eager.collect_features = twin.collect_features = True
    batches = [_input([1, 2, 3, 3], seed=4), _input([1, 1, 2, 2], seed=5)]
    out_e, grad_e = _run(eager, eager, batches)
    out_c, grad_c = _run(twin, torch.compile(twin), batches)
    for a, b in zip(out_e, out_c):
        for oa, ob in zip(a, b):
            torch.testing.assert_close(ob, oa, rtol=1e-3, atol=1e-4)
    for ga, gb in zip(grad_e, grad_c):
        assert ga.keys() == gb.keys()
        for name in ga:
            torch.testing.assert_close(gb[name], ga[name], rtol=1e-3, atol=1e-5, msg=name)


# ------------------------------------------------------------------------------------- bad input
@forked  # compiles: keeps autograd's threads out of the pytest process (tests/forked.py)
def test_invalid_domain_code_is_refused_eager_and_compiled():
    net = _net().eval()
    bad = _input([1, 4, 2])  # 4 > K
    with pytest.raises(ValueError, match=r"invalid domain code\(s\) \[4\]"):
        net(bad)
    compiled = torch.compile(net, backend="aot_eager")
    compiled(_input([1, 2, 3]))  # compiles with a valid batch ...
    with pytest.raises(RuntimeError, match="invalid domain code"):  # ... and the graph's assert refuses a bad one
        compiled(bad)
    with pytest.raises(RuntimeError, match="invalid domain code"):
        compiled(_input([0, 1, 2]))  # code channel missing / padding only
    with pytest.raises(RuntimeError, match=r"invalid domain index\(es\); valid are 0\.\.2"):
        compiled(_input([1, 2, 3]), domain_idx=torch.tensor([0, 3, 1]))
    with pytest.raises(ValueError, match=r"invalid domain index\(es\) \[-1\]"):
        net(_input([1, 2, 3]), domain_idx=torch.tensor([0, -1, 1]))
