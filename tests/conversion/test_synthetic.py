"""Tests of the synthetic three-joint generator (nnunetv2_mtmd.conversion.synthetic) and its CLI."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage, stats

from nnunetv2_mtmd.cli.synthetic import main as cli_main
from nnunetv2_mtmd.conversion import synthetic as syn
from nnunetv2_mtmd.conversion.synthetic import (
    DOMAINS,
    Ellipsoid,
    best_threshold,
    best_threshold_dice,
    generate_case,
    smooth_min,
    write_synthetic_datasets,
)
from nnunetv2_mtmd.errors import InputDataError, OutputExistsError

REPO = Path(__file__).resolve().parents[2]
SMALL = (6, 32, 32)

# Declared in the issue (labels, in this order) and in the module's design (spacing (x, y, z) mm).
EXPECTED = {
    "Dataset911_SynthAnkle": ({"background": 0, "calcaneus": 1, "talus": 2, "tibia": 3}, (0.8, 0.8, 3.0)),
    "Dataset912_SynthKnee": (
        {"background": 0, "femur": 1, "fibula": 2, "patella": 3, "tibia": 4}, (0.7, 0.7, 3.5)),
    "Dataset913_SynthShoulder": ({"background": 0, "humerus": 1, "scapula": 2}, (0.9, 0.9, 4.0)),
}


def _read(path: Path) -> tuple[np.ndarray, sitk.Image]:
    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), img


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("raw")
    return write_synthetic_datasets(out, cases=3, test_cases=1, seed=5, shape=SMALL)


@pytest.fixture(scope="module")
def default_cases() -> dict[str, tuple[list[np.ndarray], list[np.ndarray]]]:
    """4 cases per domain at the default shapes, in memory."""
    out = {}
    for di, dom in enumerate(DOMAINS):
        cases = [generate_case(dom, np.random.default_rng([0, di, ci])) for ci in range(4)]
        out[dom.name] = ([c[0] for c in cases], [c[1] for c in cases])
    return out


# ---------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize(
    "point, radii, expected",
    [
        ((0.0, 0.0, 0.5), (0.3, 0.3, 0.3), 0.2),  # sphere: |p| - r
        ((0.0, 0.0, 0.0), (0.3, 0.3, 0.3), -0.3),
        ((0.0, 0.3, 0.4), (0.2, 0.2, 0.2), 0.3),  # |p| = 0.5
        ((0.0, 0.0, 0.6), (0.1, 0.2, 0.4), 0.2),  # on an axis the bound is exact: x - rx
        ((0.0, 0.1, 0.0), (0.1, 0.2, 0.4), -0.1),
        ((0.5, 0.0, 0.0), (0.1, 0.2, 0.4), 0.4),
    ],
)
def test_ellipsoid_sdf_hand_values(point, radii, expected):
    w = np.array([point[0]], dtype=np.float64)[:, None, None]
    v = np.array([[[point[1]]]])
    u = np.array([[[point[2]]]])
    d = Ellipsoid((0.0, 0.0, 0.0), radii).sdf(w, v, u, margin=1.0)
    assert d.shape == (1, 1, 1)
    assert d[0, 0, 0] == pytest.approx(expected, abs=1e-6)


def test_ellipsoid_sdf_clamps_far_points_and_rotates():
    w = np.zeros((1, 1, 1))
    v = np.array([[[0.0, 0.0]]])
    u = np.array([[[0.35, 5.0]]])
    e = Ellipsoid((0.0, 0.0, 0.0), (0.1, 0.1, 0.3))
    d = e.sdf(w, v, u, margin=0.3)
    assert d[0, 0, 0] == pytest.approx(0.05, abs=1e-6)
    assert d[0, 0, 1] == pytest.approx(0.3)  # far away: clamped to the margin
    # rotated by 90 degrees the long axis points along y: (y=0.35, x=0) is 0.05 outside
    r = Ellipsoid((0.0, 0.0, 0.0), (0.1, 0.1, 0.3), angle=np.pi / 2)
    d2 = r.sdf(w, np.array([[[0.35]]]), np.array([[[0.0]]]), margin=0.3)
    assert d2[0, 0, 0] == pytest.approx(0.05, abs=1e-6)


@pytest.mark.parametrize("a, b, k, expected", [(0.0, 0.0, 0.1, -0.025), (0.0, 1.0, 0.1, 0.0),
                                               (0.3, -0.2, 0.1, -0.2), (0.2, 0.1, 0.0, 0.1)])
def test_smooth_min_hand_values(a, b, k, expected):
    assert float(smooth_min(np.array(a), np.array(b), k)) == pytest.approx(expected)


# -------------------------------------------------------------------------------------- threshold Dice
@pytest.mark.parametrize(
    "images, labels, expected",
    [
        ([np.array([1.0, 2.0, 3.0, 4.0])], [np.array([0, 0, 1, 1])], 1.0),  # separable, '>'
        ([np.array([4.0, 3.0, 2.0, 1.0])], [np.array([0, 0, 1, 2])], 1.0),  # separable, '<', two labels
        # sorted: 1(bg) 2(fg) 3(bg) 4(fg) 5(fg); best is '> 1.5': TP 3, P 4, G 3 -> 6/7
        ([np.array([1.0, 2.0, 3.0, 4.0, 5.0])], [np.array([0, 1, 0, 1, 1])], 6 / 7),
        # ties: the two 1s cannot be split; '> 1.5' gives 2/3, everything gives 2*2/(3+2) = 0.8
        ([np.array([1.0, 1.0, 2.0])], [np.array([1, 0, 1])], 0.8),
        # pooled over two cases: values 1(bg) 3(fg) 5(fg) 7(bg): '> 2' -> 2*2/(3+2) = 0.8
        ([np.array([1.0, 5.0]), np.array([3.0, 7.0])], [np.array([0, 1]), np.array([1, 0])], 0.8),
    ],
)
def test_best_threshold_dice_toys(images, labels, expected):
    assert best_threshold_dice(images, labels) == pytest.approx(expected)


def test_best_threshold_dice_normalize_and_threshold_reproduces_dice():
    # z-scored per case: case A -> [-1, 1] fg at +1, case B -> [-1, 1] fg at -1: pooled ties -> 2*2/(4+2)
    imgs = [np.array([1.0, 5.0]), np.array([3.0, 7.0])]
    labs = [np.array([0, 1]), np.array([1, 0])]
    assert best_threshold_dice(imgs, labs, normalize=True) == pytest.approx(2 / 3)
    rng = np.random.default_rng(0)
    img = rng.normal(size=(5, 20, 20))
    lab = (img + rng.normal(scale=1.0, size=img.shape) > 0.8).astype(np.uint8)
    d, t, direction = best_threshold(img, lab)
    pred = img > t if direction == ">" else img < t
    fg = lab > 0
    assert d == pytest.approx(2 * (pred & fg).sum() / (pred.sum() + fg.sum()))
    # brute force over all midpoints agrees
    vals = np.unique(img)
    best = 0.0
    for th in np.concatenate([[vals[0] - 1], (vals[1:] + vals[:-1]) / 2]):
        for p in (img > th, img < th):
            best = max(best, 2 * (p & fg).sum() / (p.sum() + fg.sum()))
    assert d == pytest.approx(best)


def test_best_threshold_dice_errors():
    with pytest.raises(InputDataError, match="no foreground"):
        best_threshold_dice([np.ones(3)], [np.zeros(3)])
    with pytest.raises(InputDataError, match="shape"):
        best_threshold_dice([np.ones(3)], [np.ones(4)])
    with pytest.raises(InputDataError, match="equally many"):
        best_threshold_dice([np.ones(3)], [])


# ------------------------------------------------------------------------------------ generated cases
def test_threshold_dice_below_0_8_per_domain(default_cases):
    for name, (imgs, labs) in default_cases.items():
        raw = best_threshold_dice(imgs, labs)
        z = best_threshold_dice(imgs, labs, normalize=True)
        assert 0.1 < raw < 0.8, (name, raw)
        assert 0.1 < z < 0.8, (name, z)


def test_cases_are_deterministic_and_seed_dependent():
    for dom in DOMAINS:
        a = generate_case(dom, np.random.default_rng([3, 1, 2]), SMALL)
        b = generate_case(dom.name, np.random.default_rng([3, 1, 2]), SMALL)
        c = generate_case(dom, np.random.default_rng([4, 1, 2]), SMALL)
        assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
        assert a[0].dtype == np.float32 and a[1].dtype == np.uint8 and a[0].shape == SMALL
        assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[1], c[1])


def test_labels_structures_and_bone_look(default_cases):
    for dom in DOMAINS:
        imgs, labs = default_cases[dom.name]
        for img, lab in zip(imgs, labs):
            assert img.shape == lab.shape == dom.default_shape
            assert set(np.unique(lab).tolist()) == set(range(len(dom.labels) + 1))  # all present, no others
            # bones in most slices
            assert np.mean([(lab[z] > 0).any() for z in range(lab.shape[0])]) >= 0.75
            # dark cortical rim: bone voxels with an in-plane background neighbour are much darker than
            # bone voxels two voxels inside
            cross = np.zeros((1, 3, 3), bool)
            cross[0, 1, :] = cross[0, :, 1] = True
            fg = lab > 0
            er = ndimage.binary_erosion(fg, cross)
            rim, inner = fg & ~er, ndimage.binary_erosion(er, cross)
            assert img[rim].mean() < 0.6 * img[inner].mean(), dom.name
            # structures barely touch (joint spaces): in-plane contacts between different bones are rare
            contacts = sum(((a[1:] > 0) & (a[:-1] > 0) & (a[1:] != a[:-1])).sum()
                           for a in (np.moveaxis(lab, 1, 0), np.moveaxis(lab, 2, 0)))
            assert contacts < 0.02 * fg.sum(), dom.name


def test_relative_placement(default_cases):
    """Centroids (z, y, x): y grows inferiorly, x posteriorly (ankle, knee) / laterally (shoulder)."""
    for dom in DOMAINS:
        for lab in default_cases[dom.name][1]:
            c = {n: np.array(ndimage.center_of_mass(lab == i + 1)) for i, n in enumerate(dom.labels)}
            if dom.name == "ankle":
                assert c["tibia"][1] < c["talus"][1] < c["calcaneus"][1]
                assert c["calcaneus"][2] > c["talus"][2]  # calcaneus posterior
            elif dom.name == "knee":
                assert c["femur"][1] < c["tibia"][1]
                assert c["patella"][2] < c["femur"][2] - 5  # patella anterior
                assert c["fibula"][0] > c["tibia"][0] + 2  # fibula lateral (through-plane)
                assert c["fibula"][2] > c["tibia"][2]  # and posterior
                assert c["fibula"][1] > c["femur"][1]
            else:
                assert c["humerus"][2] > c["scapula"][2] + 5  # humerus lateral to the scapula


def test_shape_variability_between_cases(default_cases):
    for dom in DOMAINS:
        labs = default_cases[dom.name][1]
        for k in range(1, len(dom.labels) + 1):
            vols = np.array([(lab == k).sum() for lab in labs], dtype=float)
            assert vols.std() / vols.mean() > 0.02, (dom.name, k)
        a, b = labs[0] > 0, labs[1] > 0
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) < 0.97


def test_intensity_distributions_differ_between_domains(default_cases):
    raw_fg, zs = {}, {}
    for name, (imgs, labs) in default_cases.items():
        raw_fg[name] = np.mean([img[lab > 0].mean() for img, lab in zip(imgs, labs)])
        zs[name] = np.concatenate([((img - img.mean()) / img.std()).ravel() for img in imgs])
    names = list(default_cases)
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            a, b = names[i], names[j]
            assert max(raw_fg[a], raw_fg[b]) / min(raw_fg[a], raw_fg[b]) > 1.3, (a, b)
            # different contrast/noise: the z-scored intensity histograms differ too
            assert stats.ks_2samp(zs[a], zs[b]).statistic > 0.05, (a, b)


def test_partial_volume_gives_intermediate_values_at_edges():
    """Without noise and bias, air is exactly 0; voxels at the skin-air boundary are partly air, so many
    of them take values well below the outer (fat) layer instead of being either 0 or fat."""
    for di, dom in enumerate(DOMAINS):
        rng = np.random.default_rng([0, di, 0])
        img, lab = syn._render(dom.builder(rng), dataclasses.replace(dom, noise=0.0, bias=0.0), rng,
                               dom.default_shape)
        air = img == 0
        cross = np.zeros((1, 3, 3), bool)
        cross[0, 1, :] = cross[0, :, 1] = True
        edge = img[~air & ndimage.binary_dilation(air, cross)]
        assert edge.size > 100
        assert np.mean(edge < 0.5 * np.percentile(edge, 90)) > 0.15, dom.name
        assert lab.max() == len(dom.labels)


def test_input_errors(tmp_path):
    with pytest.raises(InputDataError, match="shape"):
        generate_case("knee", np.random.default_rng(0), (3, 64, 64))
    with pytest.raises(InputDataError, match="Did you mean 'knee'"):
        generate_case("kne", np.random.default_rng(0))
    with pytest.raises(InputDataError, match="cases"):
        write_synthetic_datasets(tmp_path, cases=0)
    with pytest.raises(InputDataError, match="distinct"):
        write_synthetic_datasets(tmp_path, ids=(5, 5, 6))
    (tmp_path / "Dataset912_Other").mkdir()
    with pytest.raises(OutputExistsError, match="912"):
        write_synthetic_datasets(tmp_path, cases=1, shape=SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset912_Other"]  # nothing written


# ----------------------------------------------------------------------------------- written datasets
def test_written_layout_json_geometry(written):
    assert [p.name for p in written] == list(EXPECTED)
    for ds in written:
        labels, spacing = EXPECTED[ds.name]
        dj = json.loads((ds / "dataset.json").read_text())
        assert dj["channel_names"] == {"0": "MRI"}
        assert dj["labels"] == labels and list(dj["labels"]) == list(labels)
        assert dj["numTraining"] == 3 and dj["file_ending"] == ".nii.gz"
        assert dj["name"] == ds.name.split("_", 1)[1] and dj["description"]
        tr = [f"case00{i}" for i in range(3)]
        assert sorted(p.name for p in (ds / "imagesTr").iterdir()) == [f"{c}_0000.nii.gz" for c in tr]
        assert sorted(p.name for p in (ds / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in tr]
        assert [p.name for p in (ds / "imagesTs").iterdir()] == ["case003_0000.nii.gz"]
        assert [p.name for p in (ds / "labelsTs").iterdir()] == ["case003.nii.gz"]
        for img_p, lab_p in [(ds / "imagesTr/case001_0000.nii.gz", ds / "labelsTr/case001.nii.gz"),
                             (ds / "imagesTs/case003_0000.nii.gz", ds / "labelsTs/case003.nii.gz")]:
            arr, img = _read(img_p)
            larr, limg = _read(lab_p)
            assert img.GetPixelID() == sitk.sitkFloat32 and limg.GetPixelID() == sitk.sitkUInt8
            assert arr.shape == larr.shape == SMALL  # (Z, Y, X)
            assert img.GetSize() == (SMALL[2], SMALL[1], SMALL[0])
            assert np.allclose(img.GetSpacing(), spacing) and np.allclose(limg.GetSpacing(), spacing)
            assert set(np.unique(larr).tolist()) == set(labels.values())


def test_written_datasets_deterministic(written, tmp_path):
    again = write_synthetic_datasets(tmp_path / "a", cases=3, test_cases=1, seed=5, shape=SMALL)
    other = write_synthetic_datasets(tmp_path / "b", cases=1, seed=6, shape=SMALL)
    for ds, ds2, ds3 in zip(written, again, other):
        for rel in ("imagesTr/case000_0000.nii.gz", "labelsTr/case002.nii.gz",
                    "imagesTs/case003_0000.nii.gz"):
            assert _read(ds / rel)[0].tobytes() == _read(ds2 / rel)[0].tobytes()
        assert not np.array_equal(_read(ds / "imagesTr/case000_0000.nii.gz")[0],
                                  _read(ds3 / "imagesTr/case000_0000.nii.gz")[0])


@pytest.mark.parametrize("index", [pytest.param(0, marks=pytest.mark.slow), 1,
                                   pytest.param(2, marks=pytest.mark.slow)])
def test_written_datasets_pass_nnunet_integrity_check(written, index):
    """nnU-Net's own check (it spawns a worker process, about 10 s per dataset)."""
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(written[index]), num_processes=1)


def test_each_dataset_is_written_all_or_nothing(tmp_path, monkeypatch):
    real = syn.generate_case
    calls = {"n": 0}

    def failing(dom, rng, shape=None, **kw):
        calls["n"] += 1
        if syn.get_domain(dom).name == "knee" and calls["n"] > 3:
            raise RuntimeError("boom")
        return real(dom, rng, shape, **kw)

    monkeypatch.setattr(syn, "generate_case", failing)
    with pytest.raises(RuntimeError, match="boom"):
        write_synthetic_datasets(tmp_path, cases=2, shape=SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset911_SynthAnkle"]  # no partial knee, no temp
    assert len(list((tmp_path / "Dataset911_SynthAnkle" / "labelsTr").iterdir())) == 2


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_writes_refuses_overwrite_and_defaults_to_nnunet_raw(nnunet_dirs, capsys):
    args = ["--cases", "1", "--shape", "5", "24", "24", "--ids", "301", "302", "303"]
    assert cli_main(args) == 0
    names = sorted(p.name for p in nnunet_dirs["raw"].iterdir())
    assert names == ["Dataset301_SynthAnkle", "Dataset302_SynthKnee", "Dataset303_SynthShoulder"]
    assert str(nnunet_dirs["raw"] / "Dataset302_SynthKnee") in capsys.readouterr().out
    assert cli_main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli_main(args + ["--overwrite", "--seed", "2", "--report"]) == 0
    out = capsys.readouterr().out
    assert "best threshold Dice" in out and "Dataset303_SynthShoulder" in out
    assert cli_main(["--cases", "0"]) == 2


def test_dataset_conversion_script_help():
    script = REPO / "dataset_conversion" / "make_synthetic_three_joints.py"
    r = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "--test-cases" in r.stdout and "Dataset912_SynthKnee" in r.stdout
