"""Gradient-norm ratios of the weighted regularizers to the segmentation loss on the shared parameters
(nnunetv2_mtmd/losses/gradient_ratio.py)."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from nnunetv2_mtmd.architectures.dsbn import DomainSpecificBatchNorm
from nnunetv2_mtmd.losses.gradient_ratio import (
    GradientNormProbe,
    GradRatioSummary,
    format_ratio_line,
    shared_parameters,
)

#: The line the study report parses (issue 22): keep this pattern and format_ratio_line in step.
LINE = re.compile(r"^Gradient-norm ratios on the shared parameters \(median of (\d+) sampled iterations\): "
                  r"MSC/seg (nan|\d+\.\d{4}), MJAP/seg (nan|\d+\.\d{4})$")


def _network():
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunetv2_mtmd.training.trainers.base import nnUNetTrainerMTMD_DSL
    from tests.reliability.model_folder import plans

    pm = PlansManager(plans())
    return nnUNetTrainerMTMD_DSL.build_network_architecture(pm, pm.get_configuration("2d"), 2, 4, True)


def test_shared_parameters_are_the_backbone_convolutions_only():
    net = _network()
    shared = {id(p) for p in shared_parameters(net)}
    names = {n for n, p in net.named_parameters() if id(p) in shared}
    assert names and all(n.startswith(("encoder.", "decoder.")) for n in names), names
    assert not any(n.startswith("heads.") for n in names)
    for m in net.modules():
        if isinstance(m, DomainSpecificBatchNorm):
            assert all(id(p) not in shared for p in m.parameters())
    convs = [m for n, m in net.named_modules() if isinstance(m, nn.modules.conv._ConvNd) and not n.startswith("heads")]
    assert len(shared) == sum(len(list(m.parameters(recurse=False))) for m in convs)
    assert any(p.dim() == 4 for p in shared_parameters(net))  # conv kernels (transposed convs included)


class _Toy(nn.Module):
    """Two 'shared' linear layers and one 'head' that the probe must ignore."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.head = nn.Linear(3, 4), nn.Linear(4, 2), nn.Linear(2, 1)

    def forward(self, x):
        h = self.b(torch.tanh(self.a(x)))
        return h, self.head(h)


def _terms(model, x):
    h, out = model(x)
    seg = out.pow(2).mean() + h.pow(2).mean()
    msc = 0.5 * h.sum() ** 2
    mjap = 0.1 * torch.tanh(h).abs().mean()
    return seg, msc, mjap


def _norm(term, params):
    return math.sqrt(sum(float(g.pow(2).sum()) for g in torch.autograd.grad(term, params, retain_graph=True)))


def test_ratios_equal_an_independent_gradient_computation_and_leave_grad_untouched():
    model = _Toy()
    params = [model.a.weight, model.a.bias, model.b.weight, model.b.bias]
    probe = GradientNormProbe(params, every=1)
    x = torch.randn(5, 3)
    seg, msc, mjap = _terms(model, x)
    g_seg, g_msc, g_mjap = (_norm(t, params) for t in (seg, msc, mjap))
    assert probe.step(seg, {"msc": msc, "mjap": mjap})
    assert probe.ratios["msc"] == pytest.approx([g_msc / g_seg], rel=1e-6)
    assert probe.ratios["mjap"] == pytest.approx([g_mjap / g_seg], rel=1e-6)
    assert all(p.grad is None for p in model.parameters())  # .grad is nnU-Net's backward's business
    (seg + msc + mjap).backward()  # the graph is still there for the real backward
    s = probe.pop_epoch()
    assert s == GradRatioSummary(1, pytest.approx(g_msc / g_seg, rel=1e-6), pytest.approx(g_mjap / g_seg, rel=1e-6))


def test_loss_scale_does_not_change_the_ratios():
    model = _Toy()
    params = list(model.a.parameters()) + list(model.b.parameters())
    x = torch.randn(5, 3)
    plain, scaled = GradientNormProbe(params), GradientNormProbe(params, loss_scale=lambda: 2.0**16)
    for probe in (plain, scaled):
        seg, msc, mjap = _terms(model, x)
        probe.step(seg, {"msc": msc, "mjap": mjap})
    assert scaled.ratios["msc"] == pytest.approx(plain.ratios["msc"], rel=1e-5)
    assert scaled.ratios["mjap"] == pytest.approx(plain.ratios["mjap"], rel=1e-5)


def test_sampled_every_n_iterations_of_each_epoch_and_median():
    model = _Toy()
    params = list(model.a.parameters()) + list(model.b.parameters())
    probe = GradientNormProbe(params, every=3)
    measured = []
    for i in range(7):
        seg, msc, _ = _terms(model, torch.randn(5, 3, generator=torch.Generator().manual_seed(i)))
        measured.append(probe.step(seg, {"msc": msc, "mjap": None}))
    assert measured == [True, False, False, True, False, False, True]
    ratios = list(probe.ratios["msc"])
    s = probe.pop_epoch()
    assert s.samples == 3 and s.msc == pytest.approx(sorted(ratios)[1]) and math.isnan(s.mjap)
    # a new epoch starts counting again at its first iteration
    seg, msc, _ = _terms(model, torch.randn(5, 3))
    assert probe.step(seg, {"msc": msc, "mjap": None})
    empty = GradientNormProbe(params).pop_epoch()
    assert empty.samples == 0 and math.isnan(empty.msc) and math.isnan(empty.mjap)


def test_non_finite_or_zero_segmentation_gradient_drops_the_sample():
    model = _Toy()
    params = list(model.a.parameters()) + list(model.b.parameters())
    probe = GradientNormProbe(params, every=1)
    seg, msc, mjap = _terms(model, torch.randn(5, 3))
    assert not probe.step(seg, {"msc": msc * float("nan"), "mjap": mjap})
    assert not probe.step(seg * 0.0, {"msc": msc, "mjap": mjap})  # zero segmentation gradient: no ratio
    assert not probe.step(seg, {"msc": None, "mjap": None})  # a scheme without regularizers: nothing to do
    assert probe.skipped == 2 and probe.pop_epoch().samples == 0


def test_probe_settings_are_checked():
    for every in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="every"):
            GradientNormProbe([], every=every)


@pytest.mark.parametrize("summary, text", [
    (GradRatioSummary(5, 0.12344, 0.0567), "median of 5 sampled iterations): MSC/seg 0.1234, MJAP/seg 0.0567"),
    (GradRatioSummary(3, 0.5, math.nan), "median of 3 sampled iterations): MSC/seg 0.5000, MJAP/seg nan"),
    (GradRatioSummary(0, math.nan, math.nan), "median of 0 sampled iterations): MSC/seg nan, MJAP/seg nan"),
])
def test_log_line_has_the_parsed_form(summary, text):
    line = format_ratio_line(summary)
    assert line.endswith(text) and LINE.match(line), line
    assert summary.as_log_values()["grad_ratio_samples"] == summary.samples


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """nnU-Net's DDP path with MSC gathered over the ranks; the probe samples before the backward."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from nnunetv2_mtmd.losses.contrastive import MultiScaleContrastiveLoss
    from nnunetv2_mtmd.training.ddp import prepare_network_for_ddp
    from tests.reliability.test_ddp import build_network, make_inputs, objective

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        x, _, weights = make_inputs()
        sl = slice(rank * 6, rank * 6 + 6)
        net = build_network()
        ddp = DDP(torch.nn.SyncBatchNorm.convert_sync_batchnorm(net))
        prepare_network_for_ddp(ddp, lambda m: None)
        probe = GradientNormProbe(shared_parameters(net), every=1)
        out = ddp(x[sl])
        msc = MultiScaleContrastiveLoss(0.1, "all", gather_distributed=True)(net.last_features, net.last_domain_idx)
        total = objective(out, [w[sl] for w in weights], msc)
        seg = total - 0.5 * msc
        sampled = probe.step(seg, {"msc": 0.5 * msc, "mjap": None})  # collectives in these backward passes
        total.backward()
        torch.save({"sampled": sampled, "grads": {n: p.grad.clone() for n, p in net.named_parameters()}},
                   f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_probe_under_ddp_leaves_the_averaged_gradients_unchanged(tmp_path):
    """Two gloo ranks: sampling (three autograd.grad passes through DSBN's and MSC's collectives) does not
    hang and does not change DDP's averaged gradients, which still equal the full-batch ones."""
    import torch.multiprocessing as mp

    from nnunetv2_mtmd.losses.contrastive import MultiScaleContrastiveLoss
    from tests.reliability.test_ddp import WORLD, build_network, make_inputs, objective

    mp.start_processes(_ddp_worker, args=(WORLD, str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True,
                       start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    x, _, weights = make_inputs()
    ref = build_network()
    out = ref(x)
    msc = MultiScaleContrastiveLoss(0.1, "all")(ref.last_features, ref.last_domain_idx)
    halves = [objective([o[s] for o in out], [w[s] for w in weights], msc) for s in (slice(0, 6), slice(6, 12))]
    (sum(halves) / WORLD).backward()
    assert all(r["sampled"] for r in ranks)
    for n, p in ref.named_parameters():
        for r in ranks:
            torch.testing.assert_close(r["grads"][n], p.grad, rtol=1e-4, atol=1e-6, msg=n)
