"""Tests of the embedding analysis (intra/inter-domain cosine similarity, t-SNE) and its command."""

from __future__ import annotations

import csv
import itertools
import math
import subprocess
import time

import numpy as np
import pytest
import torch
from torch import nn

from nnunetv2_mtmd.architectures.dsbn import DomainSpecificBatchNorm2d
from nnunetv2_mtmd.architectures.unet import MultiDomainPlainConvUNet
from nnunetv2_mtmd.cli.embeddings import main as cli_main
from nnunetv2_mtmd.errors import InputDataError
from nnunetv2_mtmd.evaluation.embeddings import (
    SliceRecord,
    _colex_pairs,
    compute_embeddings,
    cosine_similarity_stats,
    crop_or_pad_slice,
    domain_pair_indices,
    fold_split,
    plot_tsne,
    select_slices,
    similarity_markdown,
    stage_names,
    tsne_2d,
)
from nnunetv2_mtmd.losses.contrastive import embed
from tests.conftest import venv_bin
from tests.datagen import make_raw_dataset

S2 = math.sqrt(0.5)


def _unit(deg: float, scale: float = 1.0) -> list[float]:
    r = math.radians(deg)
    return [scale * math.cos(r), scale * math.sin(r)]


# --------------------------------------------------------------------- cosine_similarity_stats
# (vectors as angles in degrees (scale), domains, intra mean/std/n, inter mean/std/n), by hand:
SIM_TABLE = [
    # A: 0, 90; B: 0 (length 2), 180. intra: cos90 = 0, cos180 = -1.
    # inter: (0,0) = 1, (0,180) = -1, (90,0) = 0, (90,180) = 0.
    ([(0, 1), (90, 1), (0, 2), (180, 1)], [0, 0, 1, 1], (-0.5, 0.5, 2), (0.0, S2, 4)),
    # A: 0, 60; B: 120. intra: cos60 = 0.5; inter: cos120 = -0.5, cos60 = 0.5.
    ([(0, 1), (60, 3), (120, 1)], [0, 0, 1], (0.5, 0.0, 1), (0.0, 0.5, 2)),
    # one domain, 0 / 90 / 180: cos 0, -1, 0 -> mean -1/3, std sqrt(2/9); no inter pairs.
    ([(0, 1), (90, 1), (180, 1)], [5, 5, 5], (-1 / 3, math.sqrt(2 / 9), 3), (math.nan, math.nan, 0)),
    # three domains with one sample each: no intra pairs; inter cos90, cos180, cos90.
    ([(0, 1), (90, 1), (180, 1)], [0, 1, 2], (math.nan, math.nan, 0), (-1 / 3, math.sqrt(2 / 9), 3)),
]


@pytest.mark.parametrize("vectors, domains, intra, inter", SIM_TABLE)
def test_cosine_similarity_stats_hand_computed(vectors, domains, intra, inter):
    emb = np.array([_unit(a, s) for a, s in vectors])
    st = cosine_similarity_stats(emb, np.array(domains), max_pairs=100)
    for kind, (mean, std, n) in (("intra", intra), ("inter", inter)):
        assert st[f"n_{kind}"] == n == st[f"n_{kind}_total"]
        if n:
            assert st[f"{kind}_mean"] == pytest.approx(mean, abs=1e-12)
            assert st[f"{kind}_std"] == pytest.approx(std, abs=1e-12)
        else:
            assert math.isnan(st[f"{kind}_mean"]) and math.isnan(st[f"{kind}_std"])


def test_cosine_similarity_zero_vector_counts_as_zero():
    emb = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    st = cosine_similarity_stats(emb, np.array([0, 0, 1]))
    assert st["intra_mean"] == 0.0  # (v0, zero) -> 0
    assert st["inter_mean"] == 0.0  # (v0, v2) = cos90 = 0, (zero, v2) = 0


def test_cosine_similarity_sampled_pairs_exact_when_constant():
    # every sample of a domain is the same vector: each intra pair has similarity 1, each inter pair
    # cos(angle between domains), whichever pairs are sampled
    rng = np.random.default_rng(3)
    dom = rng.integers(0, 3, 200)
    base = np.array([_unit(0), _unit(90), _unit(180)])
    emb = base[dom] * rng.uniform(0.5, 2.0, (200, 1))
    st = cosine_similarity_stats(emb, dom, max_pairs=500, rng=np.random.default_rng(0))
    assert st["n_intra"] == 500 < st["n_intra_total"]
    assert st["n_inter"] == 500 < st["n_inter_total"]
    assert st["n_intra_total"] + st["n_inter_total"] == 200 * 199 // 2
    assert st["intra_mean"] == pytest.approx(1.0) and st["intra_std"] == pytest.approx(0.0, abs=1e-7)
    # inter pairs: 0-1 and 1-2 have cos 0, 0-2 has cos -1
    assert -1.0 < st["inter_mean"] < 0.0


def test_cosine_similarity_bad_input():
    with pytest.raises(ValueError, match="3 embeddings but 2"):
        cosine_similarity_stats(np.ones((3, 2)), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        cosine_similarity_stats(np.ones(3), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="NaN"):
        cosine_similarity_stats(np.array([[np.nan, 1.0], [1.0, 0.0]]), np.array([0, 1]))


# ------------------------------------------------------------------------------ pair indices
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_domain_pair_indices_match_brute_force(seed):
    dom = np.random.default_rng(seed).integers(0, 4, 23)
    brute = {"intra": set(), "inter": set()}
    for i, j in itertools.combinations(range(len(dom)), 2):
        brute["intra" if dom[i] == dom[j] else "inter"].add((i, j))
    for kind in ("intra", "inter"):
        i, j, total = domain_pair_indices(dom, kind, None, None)
        got = {(min(a, b), max(a, b)) for a, b in zip(i.tolist(), j.tolist())}
        assert total == len(brute[kind]) == len(i) == len(got)
        assert got == brute[kind]
        # sampled: distinct, valid pairs, reproducible with the same seed
        k = max(1, total // 3)
        i1, j1, _ = domain_pair_indices(dom, kind, k, np.random.default_rng(7))
        i2, j2, _ = domain_pair_indices(dom, kind, k, np.random.default_rng(7))
        s1 = {(min(a, b), max(a, b)) for a, b in zip(i1.tolist(), j1.tolist())}
        assert len(i1) == len(s1) == k and s1 <= brute[kind]
        assert np.array_equal(i1, i2) and np.array_equal(j1, j2)


def test_domain_pair_sampling_is_uniform():
    # intra pairs of [0,0,0,1,1]: (0,1) (0,2) (1,2) (3,4); choosing 2 of 4 -> each pair with p = 1/2
    dom = np.array([0, 0, 0, 1, 1])
    rng = np.random.default_rng(0)
    counts: dict[tuple[int, int], int] = {}
    n_draws = 4000
    for _ in range(n_draws):
        i, j, _ = domain_pair_indices(dom, "intra", 2, rng)
        for p in zip(i.tolist(), j.tolist()):
            counts[p] = counts.get(p, 0) + 1
    assert set(counts) == {(0, 1), (0, 2), (1, 2), (3, 4)}
    for c in counts.values():
        assert 0.46 < c / n_draws < 0.54


@pytest.mark.parametrize("k", [0, 1, 2, 3, 10**6, 10**12 + 12345, 2**52])
def test_colex_pairs_inverse(k):
    i, j = _colex_pairs(np.array([k]))
    i, j = int(i[0]), int(j[0])
    assert 0 <= i < j and j * (j - 1) // 2 + i == k


# ---------------------------------------------------------------------------------- slices
@pytest.mark.parametrize(
    "fg_slices, max_slices, expected",
    [
        ([1, 2, 3, 7, 8], 3, [1, 3, 8]),  # positions linspace(0, 4, 3) = 0, 2, 4
        ([1, 2, 3, 7, 8], 2, [1, 8]),
        ([1, 2, 3, 7, 8], 5, [1, 2, 3, 7, 8]),
        ([1, 2, 3, 7, 8], 0, [1, 2, 3, 7, 8]),  # 0 = all
        ([0, 9], 8, [0, 9]),
        ([], 8, []),
    ],
)
def test_select_slices(fg_slices, max_slices, expected):
    seg = np.zeros((10, 4, 4), dtype=np.int16)
    for z in fg_slices:
        seg[z, z % 4, 1] = 2
    assert select_slices(seg, max_slices).tolist() == expected


def test_crop_or_pad_slice_hand_checked():
    # (C + 1 = 2, Y = 3, X = 5) -> patch (5, 3): Y padded by 1 on each side, X cropped to 3
    img = np.zeros((2, 3, 5), dtype=np.float32)
    img[0] = np.arange(15).reshape(3, 5)
    img[1] = 7.0  # stale code value, overwritten
    seg = np.zeros((3, 5), dtype=np.int16)
    seg[1, 4] = 1  # foreground at x = 4: window centre 4.5 -> start 3, clamped to 2
    out = crop_or_pad_slice(img, seg, (5, 3), code=2.0)
    assert out.shape == (2, 5, 3) and out.dtype == np.float32
    assert np.all(out[0, 0] == 0) and np.all(out[0, 4] == 0)
    assert out[0, 1:4].tolist() == [[2, 3, 4], [7, 8, 9], [12, 13, 14]]
    assert np.all(out[1] == 2.0)  # code everywhere, padding included
    seg[:] = 0
    seg[0, 0] = 1  # foreground at x = 0 -> window [0, 3)
    assert crop_or_pad_slice(img, seg, (5, 3), 1.0)[0, 1].tolist() == [0, 1, 2]
    # no segmentation: centre crop, start round(2.5 - 1.5) = 1
    assert crop_or_pad_slice(img, None, (5, 3), 1.0)[0, 1].tolist() == [1, 2, 3]
    # odd padding: 3 -> 6 puts 1 row before and 2 after
    out = crop_or_pad_slice(img, None, (6, 5), 3.0)
    assert np.all(out[0, 0] == 0) and out[0, 1].tolist() == [0, 1, 2, 3, 4] and np.all(out[0, 4:] == 0)


def test_stage_names():
    assert stage_names(9) == ["enc0", "enc1", "enc2", "enc3", "enc4", "dec0", "dec1", "dec2", "dec3"]
    assert stage_names(1) == ["enc0"]
    with pytest.raises(ValueError, match="2 \\* n_stages - 1"):
        stage_names(8)


# ------------------------------------------------------------------------- network + batches
def _tiny_net() -> MultiDomainPlainConvUNet:
    torch.manual_seed(0)
    net = MultiDomainPlainConvUNet(
        input_channels=2, n_stages=3, features_per_stage=[4, 8, 16], conv_op=nn.Conv2d,
        kernel_sizes=[[3, 3]] * 3, strides=[[1, 1], [2, 2], [2, 2]], n_conv_per_stage=[1, 1, 1],
        num_classes=4, n_conv_per_stage_decoder=[1, 1], domain_label_ids=[[1], [2, 3]], conv_bias=True,
        norm_op=DomainSpecificBatchNorm2d, norm_op_kwargs={"num_domains": 2, "eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
    )
    net.apply(net.initialize)
    # give the two domains different running statistics, then freeze them (eval mode)
    net.train()
    with torch.no_grad():
        for code, shift in ((1, 0.0), (2, 3.0)):
            x = torch.randn(4, 2, 16, 16) + shift
            x[:, -1] = code
            net(x)
    return net.eval()


def test_compute_embeddings_matches_direct_forward_and_is_batch_independent():
    net = _tiny_net()
    rng = np.random.default_rng(0)
    items = []
    for n in range(5):
        x = rng.normal(size=(2, 16, 16)).astype(np.float32)
        x[-1] = 1 + n % 2
        items.append((SliceRecord(f"case{n}", n % 2, "train", n), x))
    recs, embs = compute_embeddings(net, iter(items), batch_size=2)
    recs1, embs1 = compute_embeddings(net, iter(items), batch_size=1)
    assert [r.case_id for r in recs] == [f"case{n}" for n in range(5)] == [r.case_id for r in recs1]
    assert [e.shape for e in embs] == [(5, 4), (5, 8), (5, 16), (5, 8), (5, 4)]
    for a, b in zip(embs, embs1):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # independent computation: a plain forward pass with feature collection and embed()
    net.collect_features = True
    with torch.no_grad():
        net(torch.from_numpy(np.stack([x for _, x in items])))
    direct = [z.numpy() for z in embed(net.last_features)]
    for a, b in zip(embs, direct):
        np.testing.assert_allclose(a, b, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert net.collect_features is True  # restored to what it was before the call


def test_compute_embeddings_rejects_wrong_code():
    net = _tiny_net()
    x = np.zeros((2, 16, 16), dtype=np.float32)
    x[-1] = 2.0  # code 2 = domain index 1, but the record says domain 0
    with pytest.raises(RuntimeError, match="different domain"):
        compute_embeddings(net, iter([(SliceRecord("c", 0, "train", 0), x)]))


# ------------------------------------------------------------------------------------ t-SNE
def test_tsne_and_plot(tmp_path):
    rng = np.random.default_rng(0)
    emb = np.concatenate([rng.normal(0, 0.1, (6, 8)) + 3, rng.normal(0, 0.1, (6, 8)) - 3])
    xy = tsne_2d(emb, seed=0)
    assert xy.shape == (12, 2) and np.all(np.isfinite(xy))
    # the two well separated clusters stay separated: every point is closer to its own cluster's centroid
    c0, c1 = xy[:6].mean(0), xy[6:].mean(0)
    assert np.all(np.linalg.norm(xy[:6] - c0, axis=1) < np.linalg.norm(xy[:6] - c1, axis=1))
    assert np.array_equal(xy, tsne_2d(emb, seed=0))  # seeded
    dom = np.array([0] * 6 + [1] * 6)
    split = np.array(["train", "val"] * 6)
    p = plot_tsne(xy, dom, split, ["ankle", "knee"], tmp_path / "t.png", "title")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    p2 = plot_tsne(None, dom, split, ["ankle", "knee"], tmp_path / "n.png", "title", note="too few")
    assert p2.stat().st_size > 0
    with pytest.raises(ValueError, match="at least 4"):
        tsne_2d(emb[:3])


def test_similarity_markdown():
    rows = [{"stage_name": "enc0", "channels": 32, "intra_mean": 0.91234, "intra_std": 0.0449,
             "inter_mean": float("nan"), "inter_std": float("nan"), "n_intra": 10, "n_inter": 0}]
    md = similarity_markdown(rows, ["# title"])
    assert md.splitlines()[0] == "# title"
    assert "| enc0 | 32 | 0.912 ± 0.045 | - | 10 | 0 |" in md


# ---------------------------------------------------------------------------------- the split
# (locating and loading the model: tests/inference/test_model.py)
def test_fold_split(tmp_path):
    ids = [f"a_{i}" for i in range(5)] + [f"b_{i}" for i in range(5)]
    assert fold_split(tmp_path, "all", ids) == (sorted(ids), [])
    with pytest.raises(InputDataError, match="splits_final.json does not exist"):
        fold_split(tmp_path, 0, ids)
    import json

    (tmp_path / "splits_final.json").write_text(json.dumps([
        {"train": ids[2:], "val": ids[:2]},
        {"train": ids[:8], "val": ids[8:]},
    ]))
    assert fold_split(tmp_path, 1, ids) == (sorted(ids[:8]), sorted(ids[8:]))
    # beyond the file: nnU-Net's seeded 80:20 split
    tr, val = fold_split(tmp_path, 4, ids)
    assert len(tr) == 8 and len(val) == 2 and sorted(tr + val) == sorted(ids)
    assert fold_split(tmp_path, 4, ids) == (tr, val)
    with pytest.raises(InputDataError, match="a_0"):
        fold_split(tmp_path, 0, ids[2:])


# ---------------------------------------------------------------------------------------- CLI
def test_cli_refuses_existing_output_and_unknown_model(nnunet_dirs, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    assert cli_main(["-d", "950", "-tr", "X", "-f", "0", "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli_main(["-d", "950", "-tr", "X", "-f", "0", "-o", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err
    assert "950" in err and str(nnunet_dirs["results"]) in err
    assert not (tmp_path / "new").exists()


# --------------------------------------------------------------------------------- end to end
def _run(cmd, env, timeout=900):
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{cmd[0]} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


@pytest.mark.slow
def test_embeddings_command_on_tiny_trained_model(nnunet_dirs, tmp_path):
    # one thread per process: on a loaded 2-core machine two spinning OpenMP threads per process only slow
    # every step down (measured: nnU-Net's epoch 10 s with 1 thread, 26 s with 2)
    env = {**nnunet_dirs["env"], "OMP_NUM_THREADS": "1"}
    make_raw_dataset(nnunet_dirs["raw"], 11, "Alpha", ["a1"], n_cases=3, shape=(4, 32, 32), seed=1)
    make_raw_dataset(nnunet_dirs["raw"], 12, "Beta", ["b1", "b2"], n_cases=3, shape=(4, 32, 32), seed=2)
    t0 = time.perf_counter()
    _run([venv_bin("nnUNetv2_mtmd_merge"), "-d", "11", "12", "-o", "950"], env)
    _run([venv_bin("nnUNetv2_plan_and_preprocess"), "-d", "950", "-pl", "nnUNetPlannerMTMD", "-c", "2d",
          "-np", "1"], env)
    trainer = "nnUNetTrainerMTMD_DSL_debug"
    _run([venv_bin("nnUNetv2_train"), "950", "2d", "0", "-tr", trainer, "-device", "cpu"],
         {**env, "nnUNet_n_proc_DA": "0"})
    t1 = time.perf_counter()
    out = tmp_path / "emb"
    p = _run([venv_bin("nnUNetv2_mtmd_embeddings"), "-d", "950", "-c", "2d", "-tr", trainer, "-f", "0",
              "-o", str(out), "--no_progress"], env)
    t2 = time.perf_counter()
    print(f"pipeline {t1 - t0:.1f} s, embeddings {t2 - t1:.1f} s\n{p.stdout}")

    with open(out / "similarity.csv") as f:
        rows = list(csv.DictReader(f))
    data = np.load(out / "embeddings.npz")
    names = data["stage_names"].tolist()
    n_stages = (len(names) + 1) // 2
    assert len(rows) == 2 * n_stages - 1 and n_stages >= 2
    assert [r["stage_name"] for r in rows] == names == stage_names(len(names))
    for name in names:
        assert (out / f"tsne_{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "similarity.md").is_file() and (out / "settings.json").is_file()
    # fold 0 of the domain-stratified split validates on 2 of the 6 cases; every slice has a structure
    dom, split = data["domain"], data["split"]
    assert len(dom) == 6 * 4 and (split == "val").sum() == 2 * 4
    assert len(set(data["case_id"][split == "val"].tolist())) == 2
    assert data["domain_names"].tolist() == ["Alpha", "Beta"]
    for r, name in zip(rows, names):
        for k in ("intra_mean", "inter_mean"):
            assert -1.0 <= float(r[k]) <= 1.0
        # independent recomputation from the stored embeddings: every intra-domain pair, by hand
        e = data[name].astype(np.float64)
        assert e.shape[1] == int(r["channels"])
        sims = [
            float(e[i] @ e[j] / (np.linalg.norm(e[i]) * np.linalg.norm(e[j])))
            for i, j in itertools.combinations(range(len(e)), 2)
            if dom[i] == dom[j]
        ]
        assert int(r["n_intra"]) == len(sims) == 2 * (12 * 11 // 2)
        assert float(r["intra_mean"]) == pytest.approx(np.mean(sims), abs=2e-6)
        assert float(r["intra_std"]) == pytest.approx(np.std(sims), abs=2e-6)
        assert int(r["n_inter"]) == 12 * 12
    assert not list(tmp_path.glob(".emb.tmp-*"))
