"""nnUNetv2_mtmd_merge on tiny synthetic datasets: layout, label remapping, voxel identity, dataset.json."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_mtmd.cli.merge import main as merge_main
from nnunetv2_mtmd.conversion.merge import merge_datasets, remap_labels
from nnunetv2_mtmd.domains import DomainSpec
from nnunetv2_mtmd.errors import InputDataError, OutputExistsError
from tests.conftest import venv_bin
from tests.datagen import make_raw_dataset

SHAPE = (3, 16, 16)
DOMAINS = ["alpha", "beta", "gamma"]
#: hand-computed: unified id = original id + offset of the domain (labels 1..n of each source)
OFFSETS = {"alpha": 0, "beta": 2, "gamma": 3}
EXPECTED_LABELS = {
    "background": 0,
    "alpha_a": 1,
    "alpha_b": 2,
    "beta_c": 3,
    "gamma_x": 4,
    "gamma_y": 5,
    "gamma_z": 6,
}
SOURCE_NAMES = {"alpha": "Dataset901_Alpha", "beta": "Dataset902_Beta", "gamma": "Dataset903_Gamma"}


def make_sources(raw: Path, channels: tuple[str, ...] = ("MRI",)) -> dict[str, Path]:
    """Three small sources: Alpha (a, b; 3 cases + 2 test), Beta (c; 2 cases), Gamma (x, y, z; 2 cases)."""
    return {
        "alpha": make_raw_dataset(raw, 901, "Alpha", ["a", "b"], 3, SHAPE, channels, n_test=2, seed=0),
        "beta": make_raw_dataset(raw, 902, "Beta", ["c"], 2, SHAPE, channels, seed=1),
        "gamma": make_raw_dataset(
            raw, 903, "Gamma", ["x", "y", "z"], 2, SHAPE, channels, (1.0, 1.0, 3.0), seed=2
        ),
    }


def merged(raw: Path, **kw) -> tuple[dict[str, Path], Path]:
    src = make_sources(raw)
    res = merge_datasets(
        [901, 902, 903], 950, "Merged", domain_names=DOMAINS, raw_root=raw, progress=False, **kw
    )
    return src, res.folder


def arr(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_case_ids_and_files(nnunet_dirs):
    raw = nnunet_dirs["raw"]
    src, out = merged(raw)
    assert out == raw / "Dataset950_Merged"
    expected_tr = {
        f"{d}_{c}"
        for d, cs in {
            "alpha": ["alp000", "alp001", "alp002"],
            "beta": ["bet000", "bet001"],
            "gamma": ["gam000", "gam001"],
        }.items()
        for c in cs
    }
    labels = {p.name[: -len(".nii.gz")] for p in (out / "labelsTr").iterdir()}
    assert labels == expected_tr
    images = sorted(p.name for p in (out / "imagesTr").iterdir())
    assert images == sorted(f"{c}_{ch:04d}.nii.gz" for c in expected_tr for ch in (0, 1))
    ts = sorted(p.name for p in (out / "imagesTs").iterdir())
    assert ts == [
        "alpha_alp000_0000.nii.gz",
        "alpha_alp000_0001.nii.gz",
        "alpha_alp001_0000.nii.gz",
        "alpha_alp001_0001.nii.gz",
    ]
    assert not (out / "labelsTs").exists()
    # nothing else in the raw root: no temp folder left
    assert sorted(p.name for p in raw.iterdir()) == [
        "Dataset901_Alpha",
        "Dataset902_Beta",
        "Dataset903_Gamma",
        "Dataset950_Merged",
    ]


def test_dataset_json(nnunet_dirs):
    _, out = merged(nnunet_dirs["raw"])
    dj = json.loads((out / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "MRI", "1": "noNorm"}
    assert dj["labels"] == EXPECTED_LABELS
    assert dj["numTraining"] == 7
    assert dj["file_ending"] == ".nii.gz"
    assert dj["name"] == "Merged"
    for name in SOURCE_NAMES.values():
        assert name in dj["description"]
    block = dj["mtmd"]
    assert block["code_channel"] == 1
    assert [d["name"] for d in block["domains"]] == DOMAINS
    assert [d["code"] for d in block["domains"]] == [1, 2, 3]
    assert [d["source_dataset"] for d in block["domains"]] == list(SOURCE_NAMES.values())
    assert [d["num_cases"] for d in block["domains"]] == [3, 2, 2]
    assert [d["num_test_cases"] for d in block["domains"]] == [2, 0, 0]
    assert block["domains"][2]["labels"] == {
        "x": {"unified": 4, "original": 1},
        "y": {"unified": 5, "original": 2},
        "z": {"unified": 6, "original": 3},
    }
    spec = DomainSpec.from_dataset_json(out / "dataset.json")
    assert spec.num_classes == 7


def test_images_byte_and_voxel_identical(nnunet_dirs):
    src, out = merged(nnunet_dirs["raw"])
    for dom, folder in src.items():
        for split in ("Tr", "Ts"):
            for f in (
                sorted((folder / f"images{split}").glob("*.nii.gz"))
                if (folder / f"images{split}").is_dir()
                else []
            ):
                g = out / f"images{split}" / f"{dom}_{f.name}"
                assert g.read_bytes() == f.read_bytes()
                a, b = sitk.ReadImage(str(f)), sitk.ReadImage(str(g))
                np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
                assert a.GetSpacing() == b.GetSpacing() and a.GetOrigin() == b.GetOrigin()


def test_code_channel_constant_with_image_geometry(nnunet_dirs):
    _, out = merged(nnunet_dirs["raw"])
    for split in ("Tr", "Ts"):
        for f in sorted((out / f"images{split}").glob("*_0001.nii.gz")):
            dom = f.name.split("_", 1)[0]
            code_img = sitk.ReadImage(str(f))
            img = sitk.ReadImage(str(f).replace("_0001.nii.gz", "_0000.nii.gz"))
            a = sitk.GetArrayFromImage(code_img)
            assert a.shape == sitk.GetArrayFromImage(img).shape
            assert np.all(a == DOMAINS.index(dom) + 1)
            assert code_img.GetSpacing() == img.GetSpacing()
            assert code_img.GetOrigin() == img.GetOrigin()
            assert code_img.GetDirection() == img.GetDirection()


def test_labels_remapped_voxel_by_voxel(nnunet_dirs):
    src, out = merged(nnunet_dirs["raw"])
    n = 0
    for dom, folder in src.items():
        for f in sorted((folder / "labelsTr").glob("*.nii.gz")):
            orig = arr(f)
            expected = np.where(orig > 0, orig.astype(np.int64) + OFFSETS[dom], 0)
            got_img = sitk.ReadImage(str(out / "labelsTr" / f"{dom}_{f.name}"))
            got = sitk.GetArrayFromImage(got_img)
            assert got.dtype == np.uint8
            np.testing.assert_array_equal(got, expected)
            assert got_img.GetSpacing() == sitk.ReadImage(str(f)).GetSpacing()
            assert set(np.unique(orig)) - {0}  # the test data has foreground
            n += 1
    assert n == 7


class _SerialPool:
    """Stand-in for multiprocessing's pool: nnU-Net's checks run in this process (no spawn start-up)."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def starmap(self, fn, iterable):
        return [fn(*args) for args in iterable]


def run_verify_dataset_integrity(folder: Path, monkeypatch) -> None:
    """nnU-Net's verify_dataset_integrity, unchanged except that its pool runs serially in-process."""
    import types

    from nnunetv2.experiment_planning import verify_dataset_integrity as vdi

    fake_mp = types.SimpleNamespace(get_context=lambda *_: types.SimpleNamespace(Pool=_SerialPool))
    monkeypatch.setattr(vdi, "multiprocessing", fake_mp)
    vdi.verify_dataset_integrity(str(folder), 1)  # raises on any problem


def test_passes_nnunet_verify_dataset_integrity(nnunet_dirs, monkeypatch, capsys):
    _, out = merged(nnunet_dirs["raw"])
    run_verify_dataset_integrity(out, monkeypatch)
    printed = capsys.readouterr().out
    assert "verify_dataset_integrity Done" in printed
    assert "Error" not in printed and "arning" not in printed  # no error and no origin/direction warning


def test_verify_dataset_integrity_would_catch_a_bad_label(nnunet_dirs, monkeypatch):
    """Guard that the in-process check above is able to fail."""
    _, out = merged(nnunet_dirs["raw"])
    bad = sitk.GetImageFromArray(np.full(SHAPE, 9, dtype=np.uint8))
    bad.CopyInformation(sitk.ReadImage(str(out / "labelsTr" / "beta_bet000.nii.gz")))
    sitk.WriteImage(bad, str(out / "labelsTr" / "beta_bet000.nii.gz"))
    with pytest.raises(RuntimeError, match="unexpected labels"):
        run_verify_dataset_integrity(out, monkeypatch)


@pytest.mark.parametrize(
    "arr_in, mapping, expected, unknown",
    [
        ([0, 1, 2, 2], {0: 0, 1: 5, 2: 6}, [0, 5, 6, 6], []),
        ([0, 3, 1], {0: 0, 1: 2}, [0, -1, 2], [3]),
        ([-1, 0, 4], {0: 0, 4: 1}, [-1, 0, 1], [-1]),
        ([7, 7], {0: 0, 7: 3}, [3, 3], []),
    ],
)
def test_remap_labels_table(arr_in, mapping, expected, unknown):
    out, unk = remap_labels(np.array(arr_in), mapping)
    assert out.tolist() == expected
    assert unk == unknown


def test_default_domain_names_from_dataset_names(nnunet_dirs):
    raw = nnunet_dirs["raw"]
    make_sources(raw)
    res = merge_datasets(["Dataset901_Alpha", 902], 951, raw_root=raw, progress=False)
    assert res.folder.name == "Dataset951_MultiDomain"
    assert res.spec.names == ["Alpha", "Beta"]
    assert sorted(p.name for p in (res.folder / "labelsTr").iterdir())[0] == "Alpha_alp000.nii.gz"


def test_channel_names_option(nnunet_dirs, caplog):
    raw = nnunet_dirs["raw"]
    make_raw_dataset(raw, 901, "Alpha", ["a"], 2, SHAPE, ("MRI",))
    make_raw_dataset(raw, 902, "Beta", ["b"], 2, SHAPE, ("T1",))
    make_raw_dataset(raw, 903, "Gamma", ["c"], 2, SHAPE, ("CT",))
    with pytest.raises(InputDataError, match=r"Dataset902_Beta: 1 \(T1\).*--channel_names"):
        merge_datasets([901, 902], 950, raw_root=raw, progress=False)
    with caplog.at_level(logging.WARNING):
        res = merge_datasets([901, 902], 950, raw_root=raw, channel_names=["MRI"], progress=False)
    assert not [r for r in caplog.records if "normalization" in r.getMessage()]  # MRI and T1: both z-score
    dj = json.loads((res.folder / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "MRI", "1": "noNorm"}
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        merge_datasets([901, 903], 952, raw_root=raw, channel_names=["MRI"], progress=False)
    msgs = [r.getMessage() for r in caplog.records if "normalization" in r.getMessage()]
    assert msgs and "CTNormalization" in msgs[0] and "ZScoreNormalization" in msgs[0]


def test_overwrite_replaces_existing(nnunet_dirs):
    raw = nnunet_dirs["raw"]
    make_sources(raw)
    old = raw / "Dataset950_Old"
    old.mkdir()
    (old / "marker.txt").write_text("x")
    with pytest.raises(OutputExistsError, match="Dataset950_Old"):
        merge_datasets([901, 902], 950, raw_root=raw, progress=False)
    assert (old / "marker.txt").read_text() == "x"
    res = merge_datasets([901, 902], 950, raw_root=raw, overwrite=True, progress=False)
    assert not old.exists()
    assert res.folder.is_dir() and res.num_training == 5


def test_exact_duplicate_images_warned_and_dropped(nnunet_dirs, caplog):
    raw = nnunet_dirs["raw"]
    ds = make_raw_dataset(raw, 901, "Alpha", ["a"], 3, SHAPE)
    make_raw_dataset(raw, 902, "Beta", ["b"], 2, SHAPE)
    for sub, suffix in (("imagesTr", "_0000.nii.gz"), ("labelsTr", ".nii.gz")):
        (ds / sub / f"alp002{suffix}").write_bytes((ds / sub / f"alp000{suffix}").read_bytes())
    with caplog.at_level(logging.WARNING):
        res = merge_datasets([901, 902], 950, raw_root=raw, progress=False)
    assert res.num_training == 5
    assert any("alp002" in r.getMessage() and "Alpha_alp000" in r.getMessage() for r in caplog.records)
    res = merge_datasets([901, 902], 951, raw_root=raw, drop_duplicates=True, progress=False)
    assert res.num_training == 4 and res.dropped_duplicates == ["Alpha_alp002"]
    dj = json.loads((res.folder / "dataset.json").read_text())
    assert dj["numTraining"] == 4 and dj["mtmd"]["domains"][0]["num_cases"] == 2
    assert not (res.folder / "labelsTr" / "Alpha_alp002.nii.gz").exists()


def test_labels_ts_carried_and_remapped(nnunet_dirs):
    raw = nnunet_dirs["raw"]
    src = make_sources(raw)
    ds = make_raw_dataset(raw, 904, "Delta", ["d"], 2, SHAPE, n_test=1, seed=3)
    (ds / "labelsTs").mkdir()
    lab = sitk.ReadImage(str(ds / "labelsTr" / "del000.nii.gz"))
    sitk.WriteImage(lab, str(ds / "labelsTs" / "del000.nii.gz"))
    res = merge_datasets(
        [src["beta"], 904], 950, domain_names=["beta", "delta"], raw_root=raw, progress=False
    )
    got = arr(res.folder / "labelsTs" / "delta_del000.nii.gz")
    np.testing.assert_array_equal(got, np.where(sitk.GetArrayFromImage(lab) > 0, 2, 0))
    assert res.spec.domains[1].num_test_cases == 1


def test_cli_success_prints_summary(nnunet_dirs, capsys):
    make_sources(nnunet_dirs["raw"])
    rc = merge_main(["-d", "901", "902", "903", "--domains", *DOMAINS, "-o", "950", "-n", "Merged"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "training cases: 7 (alpha: 3, beta: 2, gamma: 2)" in out
    assert "labels: 7 (background + 6)" in out


def test_cli_bad_input_exit_code_2_without_traceback(nnunet_dirs):
    make_sources(nnunet_dirs["raw"])
    proc = subprocess.run(
        [venv_bin("nnUNetv2_mtmd_merge"), "-d", "901", "977", "-o", "950"],
        env=nnunet_dirs["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    err_lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(err_lines) == 1 and "977" in err_lines[0]
    assert not list(nnunet_dirs["raw"].glob("*950*")) and not list(nnunet_dirs["raw"].glob(".*"))
