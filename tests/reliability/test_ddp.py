"""Distributed training (issue 7, item 5), without GPUs.

- per-rank batches: :func:`rank_batch` (hand-computed table; nnU-Net's oversampling split), the
  trainer's ``_set_batch_size_and_oversample`` with simulated ranks, and the domain-balanced slots
  of every simulated rank;
- DSBN survives nnU-Net's ``SyncBatchNorm.convert_sync_batchnorm`` untouched;
- two gloo processes running the multi-domain U-Net the way nnU-Net's DDP path does
  (convert_sync_batchnorm, ``DistributedDataParallel``, then the trainer's
  ``prepare_network_for_ddp``) with MSC gathered over the ranks: DSBN running statistics, the MSC
  value, the outputs and the DDP-averaged parameter gradients equal a single-process computation on
  the concatenated batch; the label autoencoder phase ends with the same weights on both ranks and
  only rank 0 writes files; epoch means of the logged terms are averaged over the ranks.
"""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nnunetv2_mtmd.architectures.dsbn import DomainSpecificBatchNorm, DomainSpecificBatchNorm2d
from nnunetv2_mtmd.architectures.unet import MultiDomainPlainConvUNet
from nnunetv2_mtmd.losses.contrastive import MultiScaleContrastiveLoss, supcon_loss
from nnunetv2_mtmd.training.ddp import balanced_global_batch_size, rank_batch
from nnunetv2_mtmd.training.sampling import DomainBalancedDataLoader

IDS = [[1, 2], [3], [4, 5]]
WORLD = 2
LAMBDA = 0.5
# global batch of 12: rank 0 gets the first 6 samples, rank 1 the last 6 (domains deliberately
# distributed unevenly over the ranks, so the per-domain statistics really need the other rank)
DOMAINS = [0, 0, 0, 1, 2, 2, 1, 1, 1, 0, 2, 2]


# ---------------------------------------------------------------------------------- batch split
@pytest.mark.parametrize("planned,world,k,p,expected", [
    # (global, per-rank batch, oversampling per rank) computed by hand with nnU-Net's rule: the last
    # B - round(B * (1 - p)) slots of the global batch force foreground
    (6, 2, 3, 0.33, (6, 3, [0.0, 2 / 3])),
    (5, 2, 3, 0.33, (6, 3, [0.0, 2 / 3])),        # rounded up to 2 x 3
    (12, 4, 2, 0.33, (16, 4, [0.0, 0.0, 0.25, 1.0])),  # round(16 * .67) = 11: slots 11..15 forced
    (9, 3, 3, 0.0, (9, 3, [0.0, 0.0, 0.0])),
    (8, 2, 2, 1.0, (8, 4, [1.0, 1.0])),
    (2, 4, 3, 0.33, (12, 3, [0.0, 0.0, 1 / 3, 1.0])),  # round(12 * .67) = 8: slots 8..11 forced
])
def test_rank_batch_table(planned, world, k, p, expected):
    g, per, pcts = expected
    got = [rank_batch(planned, world, r, k, p) for r in range(world)]
    assert all(rb.global_batch_size == g and rb.batch_size == per for rb in got)
    assert [rb.oversample_foreground_percent for rb in got] == pytest.approx(pcts)


@pytest.mark.parametrize("planned", range(1, 25))
@pytest.mark.parametrize("world,k", [(1, 3), (2, 3), (3, 2), (4, 5)])
def test_rank_batches_keep_global_foreground_count(planned, world, k):
    """Summed over the ranks, nnU-Net's data loaders force as many foreground samples as one loader
    with the global batch (``nnUNetDataLoader.get_do_oversample``)."""
    p = 0.33
    g = balanced_global_batch_size(planned, world, k)
    assert g % (world * k) == 0 and planned <= g < planned + world * k
    forced = 0
    for r in range(world):
        rb = rank_batch(planned, world, r, k, p)
        assert rb.batch_size % k == 0
        forced += rb.batch_size - round(rb.batch_size * (1 - rb.oversample_foreground_percent))
    assert forced == g - round(g * (1 - p))


@pytest.mark.parametrize("bad", [dict(global_batch_size=0), dict(world_size=0), dict(num_domains=True)])
def test_balanced_global_batch_size_rejects_bad_values(bad):
    args = dict(global_batch_size=6, world_size=2, num_domains=3) | bad
    with pytest.raises(ValueError, match=next(iter(bad))):
        balanced_global_batch_size(**args)


def _fake_trainer(planned: int, k: int, p: float = 0.33):
    from nnunetv2_mtmd.training.trainers.base import nnUNetTrainerMTMD_DSL

    t = nnUNetTrainerMTMD_DSL.__new__(nnUNetTrainerMTMD_DSL)  # wiring only: no plans, no data
    t.is_ddp = True
    t.configuration_manager = SimpleNamespace(batch_size=planned)
    t.domain_spec = SimpleNamespace(num_domains=k)
    t.oversample_foreground_percent = p
    t.print_to_log_file = lambda *a, **kw: None
    return t


@pytest.mark.parametrize("planned,world,k", [(6, 2, 3), (7, 2, 3), (10, 4, 2), (4, 3, 5)])
def test_trainer_gives_every_simulated_rank_a_balanced_batch(monkeypatch, planned, world, k):
    """The trainer's batch-size hook on every simulated rank, then the domain-balanced loader logic
    of that rank: each rank draws exactly B_rank / K samples of every domain in every batch."""
    sizes = []
    for r in range(world):
        monkeypatch.setattr(torch.distributed, "get_world_size", lambda: world)
        monkeypatch.setattr(torch.distributed, "get_rank", lambda r=r: r)
        t = _fake_trainer(planned, k)
        t._set_batch_size_and_oversample()
        sizes.append(t.batch_size)
        assert t.oversample_foreground_percent == rank_batch(planned, world, r, k, 0.33).oversample_foreground_percent
        dl = DomainBalancedDataLoader.__new__(DomainBalancedDataLoader)
        dl.batch_size = t.batch_size
        dl.keys_per_domain = {d: [f"d{d}_{i}" for i in range(d + 1)] for d in range(k)}
        dl.domains_present = list(range(k))
        np.random.seed(r)
        for _ in range(50):
            keys = dl.get_indices()
            assert Counter(key.split("_")[0] for key in keys) == {f"d{d}": t.batch_size // k for d in range(k)}
    assert len(set(sizes)) == 1 and sum(sizes) == balanced_global_batch_size(planned, world, k)


# ------------------------------------------------------------------------------------- network
def build_network(seed: int = 0) -> MultiDomainPlainConvUNet:
    torch.manual_seed(seed)
    net = MultiDomainPlainConvUNet(
        2, 3, [4, 8, 8], torch.nn.Conv2d, 3, [1, 2, 2], 1, 6, 1, IDS, conv_bias=True,
        norm_op=DomainSpecificBatchNorm2d,
        norm_op_kwargs={"num_domains": 3, "eps": 1e-5, "momentum": 0.1, "affine": True},
        nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": False}, deep_supervision=True,
    )
    net.apply(net.initialize)
    with torch.no_grad():  # non-trivial DSBN affine parameters
        for m in net.modules():
            if isinstance(m, DomainSpecificBatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    net.collect_features = True
    return net


def test_convert_sync_batchnorm_leaves_dsbn_alone():
    net = build_network()
    before = {n: m for n, m in net.named_modules() if isinstance(m, DomainSpecificBatchNorm)}
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    after = {n: m for n, m in converted.named_modules() if isinstance(m, DomainSpecificBatchNorm)}
    assert before and after.keys() == before.keys() and all(after[n] is before[n] for n in before)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules())
    assert all(m.running_mean.shape == (3, m.num_features) for m in after.values())


def make_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    d = torch.tensor(DOMAINS)
    img = torch.randn(len(DOMAINS), 1, 16, 16, generator=g) * (1 + d.view(-1, 1, 1, 1)) + d.view(-1, 1, 1, 1)
    x = torch.cat([img, (d + 1).float().view(-1, 1, 1, 1).expand(-1, 1, 16, 16)], 1)
    weights = [torch.randn(len(DOMAINS), 6, s, s, generator=g) for s in (16, 8, 4)]
    return x, d, weights


def objective(out: list[torch.Tensor], weights: list[torch.Tensor], msc: torch.Tensor) -> torch.Tensor:
    """A stand-in segmentation loss (mean over the local batch, like nnU-Net's) + lambda * MSC."""
    seg = sum((o * w).tanh().mean() for o, w in zip(out, weights))
    return seg + LAMBDA * msc


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from nnunetv2_mtmd.losses.anatomical_prior import LabelAutoencoder
    from nnunetv2_mtmd.training.autoencoder_phase import train_autoencoder
    from nnunetv2_mtmd.training.ddp import prepare_network_for_ddp, reduce_term_means

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        x, d, weights = make_inputs()
        sl = slice(rank * 6, rank * 6 + 6)
        net = build_network()
        # nnU-Net's DDP path (nnUNetTrainer.initialize), then the MTMD trainer's addition
        ddp = DDP(torch.nn.SyncBatchNorm.convert_sync_batchnorm(net))
        n_dsbn = prepare_network_for_ddp(ddp, lambda m: None)
        msc_loss = MultiScaleContrastiveLoss(0.1, "all", gather_distributed=True)
        out = ddp(x[sl])
        msc = msc_loss(net.last_features, net.last_domain_idx)
        objective(out, [w[sl] for w in weights], msc).backward()
        grads = {n: p.grad.clone() for n, p in net.named_parameters()}
        buffers = {n: b.clone() for n, b in net.named_buffers()}

        # unequal local batches: rank 0 has 3 rows, rank 1 has 2
        z = torch.randn(5, 4, generator=torch.Generator().manual_seed(5)).requires_grad_(True)
        lab = torch.tensor([0, 1, 0, 1, 1])
        rows = slice(0, 3) if rank == 0 else slice(3, 5)
        from nnunetv2_mtmd.losses.contrastive import gather_across_ranks

        (z_all,), lab_all = gather_across_ranks([z[rows]], lab[rows])
        uneven = supcon_loss(z_all, lab_all)
        uneven.backward()

        # MJAP phase 1 on both ranks with different batches: one autoencoder in the end
        torch.manual_seed(100 + rank)  # different initialisation per rank, as without a common seed
        ae = LabelAutoencoder(IDS, features=(4, 8), strides=(1, 2))
        gen = torch.Generator().manual_seed(rank)

        def stream():
            while True:
                t = torch.zeros(6, 1, 8, 8)
                for i, k in enumerate([0, 0, 1, 1, 2, 2]):
                    ids = torch.tensor([0, *IDS[k]])
                    t[i, 0] = ids[torch.randint(0, len(ids), (8, 8), generator=gen)].float()
                yield {"target": t, "domain": torch.tensor([0, 0, 1, 1, 2, 2])}

        folder = f"{out_dir}/ae_rank{rank}"
        import os

        os.makedirs(folder)
        train_autoencoder(ae, stream(), stream(), 4, torch.device("cpu"), folder, lambda m: None, save_every=2,
                          val_batches_per_check=1, train_cases=["a_1"])
        means = reduce_term_means({"seg": float(rank + 1), "msc_skipped": 1.0}, counters=("msc_skipped",))
        torch.save({"out": [o.detach() for o in out], "msc": msc.detach(), "grads": grads, "buffers": buffers,
                    "n_dsbn": n_dsbn, "uneven": uneven.detach(), "uneven_grad": z.grad, "uneven_labels": lab_all,
                    "ae": ae.state_dict(), "means": means}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_match_single_process_on_concatenated_batch(tmp_path):
    import torch.multiprocessing as mp

    # fork: no re-import of torch in the children (spawn takes ~15 s on a loaded 2-core machine)
    mp.start_processes(_worker, args=(WORLD, str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True,
                       start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    # single process, concatenated batch of 12
    x, d, weights = make_inputs()
    ref = build_network()
    out = ref(x)
    msc = MultiScaleContrastiveLoss(0.1, "all")(ref.last_features, ref.last_domain_idx)
    # the local objective averages over each rank's 6 samples; over the global batch that is the mean
    # of the two ranks' objectives
    halves = [objective([o[s] for o in out], [w[s] for w in weights], msc) for s in (slice(0, 6), slice(6, 12))]
    (sum(halves) / WORLD).backward()

    assert all(r["n_dsbn"] > 0 for r in ranks)
    for r in ranks:  # MSC over the global batch, on every rank
        torch.testing.assert_close(r["msc"], msc.detach(), rtol=1e-5, atol=1e-6)
    for o_ref, *o_ranks in zip(out, *(r["out"] for r in ranks)):  # per-domain statistics of the global batch
        torch.testing.assert_close(torch.cat(o_ranks), o_ref.detach(), rtol=1e-4, atol=1e-5)
    ref_buffers = dict(ref.named_buffers())
    dsbn_keys = [k for k in ref_buffers if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert dsbn_keys
    for r in ranks:
        for k in dsbn_keys:
            torch.testing.assert_close(r["buffers"][k], ref_buffers[k], rtol=1e-5, atol=1e-6, msg=k)
    for n, p in ref.named_parameters():  # DDP's averaged gradients == full-batch gradients
        for r in ranks:
            torch.testing.assert_close(r["grads"][n], p.grad, rtol=1e-4, atol=1e-6, msg=n)

    # unequal local batch sizes: gathered in rank order, loss and gradients of the global computation
    z = torch.randn(5, 4, generator=torch.Generator().manual_seed(5)).requires_grad_(True)
    lab = torch.tensor([0, 1, 0, 1, 1])
    ref_uneven = supcon_loss(z, lab)
    ref_uneven.backward()
    for r in ranks:
        torch.testing.assert_close(r["uneven"], ref_uneven.detach())
        assert torch.equal(r["uneven_labels"], lab)
    # each rank's rows receive the sum over the ranks of the gradients (DDP then divides by W)
    torch.testing.assert_close(ranks[0]["uneven_grad"][:3], WORLD * z.grad[:3], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ranks[1]["uneven_grad"][3:], WORLD * z.grad[3:], rtol=1e-5, atol=1e-6)

    # one autoencoder for all ranks, written by rank 0 only
    for k, v in ranks[0]["ae"].items():
        assert torch.equal(v, ranks[1]["ae"][k]), k
    assert (tmp_path / "ae_rank0" / "label_autoencoder.pth").is_file()
    assert not any((tmp_path / "ae_rank1").iterdir())
    for r in ranks:
        assert r["means"] == {"seg": 1.5, "msc_skipped": 2.0}


def test_gather_is_a_no_op_in_a_single_process():
    from nnunetv2_mtmd.losses.contrastive import gather_across_ranks

    z = [torch.randn(4, 3)]
    lab = torch.tensor([0, 1, 0, 1])
    zs, lab2 = gather_across_ranks(z, lab)
    assert zs[0] is z[0] and lab2 is lab
    feats = [torch.randn(4, 3, 2, 2)]
    a = MultiScaleContrastiveLoss(gather_distributed=True)(feats, lab)
    b = MultiScaleContrastiveLoss()(feats, lab)
    assert torch.equal(a, b)
