"""Folder-level evaluation: files, columns, conventions, errors, CLI and a real-data timing check."""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_mtmd.cli.evaluate import main as evaluate_main
from nnunetv2_mtmd.domains import Domain, DomainLabel, DomainSpec
from nnunetv2_mtmd.errors import InputDataError, OutputExistsError
from nnunetv2_mtmd.evaluation.evaluate import METRICS_COLUMNS, SLICES_COLUMNS, evaluate_folders
from nnunetv2_mtmd.evaluation.metrics import binary_metrics
from tests.conftest import REALDATA

# ------------------------------------------------------------------------- merged-style test data
JOINTS = {
    "ankle": ["calcaneus", "talus", "tibia"],
    "knee": ["femur", "fibula", "patella", "tibia"],
    "shoulder": ["humerus", "scapula"],
}


def make_spec(
    domains: dict[str, list[str]] | None = None, num_cases: dict[str, int] | None = None
) -> DomainSpec:
    """A merged-dataset domain block: unified ids 1.. in domain order (docs/design.md, "Unified label space")."""
    domains = domains or JOINTS
    out, uid = [], 1
    for i, (name, labels) in enumerate(domains.items()):
        labs = []
        for j, lab in enumerate(labels):
            labs.append(DomainLabel(lab, j + 1, uid))
            uid += 1
        out.append(
            Domain(name, i + 1, f"Dataset{911 + i}_{name}", tuple(labs), (num_cases or {}).get(name, 3))
        )
    return DomainSpec(tuple(out), code_channel=1)


def merged_dataset_json(spec: DomainSpec, num_training: int) -> dict:
    return {
        "channel_names": {"0": "MRI", "1": "noNorm"},
        "labels": spec.label_names(),
        "numTraining": num_training,
        "file_ending": ".nii.gz",
        "name": "Joints",
        "mtmd": spec.to_json(),
    }


def write_merged_dataset(root: Path, spec: DomainSpec, dataset_id: int = 950, n_training: int = 0) -> Path:
    ds = Path(root) / f"Dataset{dataset_id:03d}_Joints"
    (ds / "labelsTr").mkdir(parents=True)
    (ds / "dataset.json").write_text(json.dumps(merged_dataset_json(spec, n_training), indent=2))
    assert DomainSpec.from_dataset_json(ds / "dataset.json") == spec
    return ds


def write_label(arr: np.ndarray, path: Path, spacing_xyz=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> None:
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing(tuple(float(s) for s in spacing_xyz))
    img.SetOrigin(origin)
    sitk.WriteImage(img, str(path))


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------- fixtures
SPACING_XYZ = (0.5, 1.0, 3.0)  # x 0.5 mm, y 1 mm, z 3 mm -> array (z, y, x) spacing (3, 1, 0.5)


@pytest.fixture
def folders(tmp_path):
    """ref/pred folders with three cases:
    ankle_001: calcaneus = single voxels 2 slices and 3 columns apart (hand distance sqrt(38.25) mm),
               talus absent in both, tibia predicted but absent in the reference;
    knee_001:  femur identical, fibula missed by the prediction, patella/tibia absent in both, and a
               shoulder label in the prediction (another domain: must not be evaluated);
    shoulder_002: humerus a shifted block."""
    spec = make_spec()
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    shape = (4, 6, 8)
    r, p = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    r[0, 0, 0] = 1
    p[2, 0, 3] = 1
    p[3, 5, 7] = 3
    write_label(r, ref_dir / "ankle_001.nii.gz", SPACING_XYZ)
    write_label(p, pred_dir / "ankle_001.nii.gz", SPACING_XYZ)
    r, p = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    r[1:3, 1:4, 1:5] = 4
    p[1:3, 1:4, 1:5] = 4
    r[0, 5, 0:3] = 5
    p[3, 0, 7] = 8
    write_label(r, ref_dir / "knee_001.nii.gz", SPACING_XYZ)
    write_label(p, pred_dir / "knee_001.nii.gz", SPACING_XYZ)
    r, p = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    r[1:3, 1:4, 1:5] = 8
    p[1:3, 2:5, 1:5] = 8
    write_label(r, ref_dir / "shoulder_002.nii.gz", SPACING_XYZ)
    write_label(p, pred_dir / "shoulder_002.nii.gz", SPACING_XYZ)
    return spec, ref_dir, pred_dir


def _row(rows, case, structure):
    [row] = [r for r in rows if r["case"] == case and r["structure"] == structure]
    return {k: (float(v) if k not in ("case", "domain", "structure") else v) for k, v in row.items()}


def test_metrics_csv_values_and_columns(folders, tmp_path):
    spec, ref_dir, pred_dir = folders
    out = tmp_path / "eval"
    summary = evaluate_folders(ref_dir, pred_dir, spec, ".nii.gz", out, num_processes=1)
    rows = read_rows(out / "metrics.csv")
    assert tuple(rows[0].keys()) == METRICS_COLUMNS
    # one row per structure of the case's domain only: ankle 3 + knee 4 + shoulder 2
    assert len(rows) == 9
    assert {r["structure"] for r in rows if r["case"] == "knee_001"} == {
        "femur",
        "fibula",
        "patella",
        "tibia",
    }
    d = math.sqrt(38.25)  # (2 slices * 3 mm, 3 columns * 0.5 mm): the spacing is read in (z, y, x) order
    calc = _row(rows, "ankle_001", "calcaneus")
    assert calc["dice"] == 0 and calc["mssd_mm"] == pytest.approx(d) and calc["hd95_mm"] == pytest.approx(d)
    talus = _row(rows, "ankle_001", "talus")  # both empty
    assert (talus["dice"], talus["mssd_mm"], talus["ravd_pct"]) == (1.0, 0.0, 0.0)
    tibia = _row(rows, "ankle_001", "tibia")  # reference empty
    assert tibia["dice"] == 0 and math.isnan(tibia["sensitivity"]) and math.isnan(tibia["assd_mm"])
    fib = _row(rows, "knee_001", "fibula")  # prediction empty
    assert (
        fib["dice"] == 0 and fib["sensitivity"] == 0 and fib["ravd_pct"] == 100 and math.isnan(fib["hd95_mm"])
    )
    assert _row(rows, "knee_001", "femur")["dice"] == 1.0
    # independent check of a whole row through the array-level function with (z, y, x) spacing
    r = sitk.GetArrayFromImage(sitk.ReadImage(str(ref_dir / "shoulder_002.nii.gz"))) == 8
    p = sitk.GetArrayFromImage(sitk.ReadImage(str(pred_dir / "shoulder_002.nii.gz"))) == 8
    exp = binary_metrics(r, p, SPACING_XYZ[::-1])
    got = _row(rows, "shoulder_002", "humerus")
    for k, v in exp.items():
        assert got[k] == pytest.approx(v, abs=1e-5)
    assert exp["dice"] == pytest.approx(2 * 16 / 48)  # 2x3x4 blocks overlapping in 2x2x4
    # summary: knee fibula/femur etc.; undefined values are counted, never averaged
    ank = summary["domains"]["ankle"]
    assert ank["structures"]["tibia"]["sensitivity"]["n_undefined"] == 1
    assert ank["structures"]["tibia"]["sensitivity"]["n"] == 0
    assert ank["mean"]["dice"]["mean"] == pytest.approx((0 + 1 + 0) / 3)
    assert summary["all"]["n_cases"] == 3
    # knee_001's prediction holds one voxel of the shoulder's label 8: kept aside, not scored
    assert summary["labels_of_other_domains"] == {"prediction": {"knee_001": {8: 1}}, "reference": {}}
    js = json.loads((out / "summary.json").read_text())
    assert js["labels_of_other_domains"] == {"prediction": {"knee_001": {"8": 1}}, "reference": {}}
    md = (out / "summary.md").read_text()
    assert "another domain in the prediction (not evaluated), in 1 of 3 cases: knee_001 (label 8: 1 voxel)" in md


def test_outputs_written(folders, tmp_path):
    spec, ref_dir, pred_dir = folders
    out = tmp_path / "eval"
    evaluate_folders(ref_dir, pred_dir, spec, ".nii.gz", out, num_processes=2)
    names = {p.name for p in out.iterdir()}
    assert {"metrics.csv", "slices.csv", "summary.md", "summary.json"} <= names
    assert {f"boxplot_{m}.png" for m in METRICS_COLUMNS[3:]} <= names
    md = (out / "summary.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 9 + 3 + 1  # header, separator, structures, 3 domain means, all-domain mean
    assert not any("nan" in line.lower() for line in table)
    assert "| ankle | tibia |" in md and "| **knee** | **mean** |" in md and "undef." in md
    js = json.loads((out / "summary.json").read_text())  # strict JSON: NaN written as null
    assert js["domains"]["ankle"]["structures"]["tibia"]["sensitivity"]["mean"] is None
    slices = read_rows(out / "slices.csv")
    assert tuple(slices[0].keys()) == SLICES_COLUMNS
    # ankle calcaneus: ref in slice 0, pred in slice 2 -> two slices with Dice 0; femur: slices 1, 2 Dice 1
    calc = [
        (int(s["slice"]), float(s["dice"]))
        for s in slices
        if s["case"] == "ankle_001" and s["structure"] == "calcaneus"
    ]
    assert calc == [(0, 0.0), (2, 0.0)]
    femur = [(int(s["slice"]), float(s["dice"])) for s in slices if s["structure"] == "femur"]
    assert femur == [(1, 1.0), (2, 1.0)]
    import matplotlib.image

    img = matplotlib.image.imread(out / "boxplot_dice.png")
    assert img.shape[0] > 200 and img.shape[1] > 300


def test_missing_and_extra_cases(folders, tmp_path):
    spec, ref_dir, pred_dir = folders
    (pred_dir / "knee_001.nii.gz").unlink()
    with pytest.raises(InputDataError, match="knee_001.*--allow-missing"):
        evaluate_folders(ref_dir, pred_dir, spec, ".nii.gz", tmp_path / "e1", num_processes=1)
    assert not (tmp_path / "e1").exists()
    summary = evaluate_folders(
        ref_dir, pred_dir, spec, ".nii.gz", tmp_path / "e2", num_processes=1, allow_missing=True
    )
    assert summary["missing_predictions"] == ["knee_001"] and "knee" not in summary["domains"]
    assert "knee_001" in (tmp_path / "e2" / "summary.md").read_text()
    write_label(np.zeros((4, 6, 8)), pred_dir / "knee_777.nii.gz", SPACING_XYZ)
    with pytest.raises(InputDataError, match="knee_777"):
        evaluate_folders(
            ref_dir, pred_dir, spec, ".nii.gz", tmp_path / "e3", num_processes=1, allow_missing=True
        )


def test_geometry_mismatch_names_case(folders, tmp_path):
    spec, ref_dir, pred_dir = folders
    write_label(np.zeros((4, 6, 8)), pred_dir / "knee_001.nii.gz", (0.5, 1.0, 2.0))
    with pytest.raises(InputDataError, match="knee_001.*geometry"):
        evaluate_folders(ref_dir, pred_dir, spec, ".nii.gz", tmp_path / "e", num_processes=2)
    assert not (tmp_path / "e").exists()


def test_unknown_domain_prefix(folders, tmp_path):
    spec, ref_dir, pred_dir = folders
    for d in (ref_dir, pred_dir):
        write_label(np.zeros((4, 6, 8)), d / "hip_001.nii.gz", SPACING_XYZ)
    with pytest.raises(Exception, match="hip_001"):
        evaluate_folders(ref_dir, pred_dir, spec, ".nii.gz", tmp_path / "e", num_processes=1)


def test_output_exists(folders, tmp_path):
    spec, ref_dir, pred_dir = folders
    (tmp_path / "e").mkdir()
    with pytest.raises(OutputExistsError):
        evaluate_folders(ref_dir, pred_dir, spec, ".nii.gz", tmp_path / "e", num_processes=1)
    evaluate_folders(
        ref_dir, pred_dir, spec, ".nii.gz", tmp_path / "e", num_processes=1, overwrite=True, plots=False
    )
    assert (tmp_path / "e" / "metrics.csv").is_file()


def test_cli(folders, tmp_path, nnunet_dirs, capsys):
    spec, ref_dir, pred_dir = folders
    write_merged_dataset(nnunet_dirs["raw"], spec, 950, 3)
    assert (
        evaluate_main(
            [
                "-ref",
                str(ref_dir),
                "-pred",
                str(pred_dir),
                "-d",
                "950",
                "-o",
                str(tmp_path / "e"),
                "-np",
                "1",
                "--no-plots",
            ]
        )
        == 0
    )
    assert len(read_rows(tmp_path / "e" / "metrics.csv")) == 9
    assert (
        evaluate_main(["-ref", str(ref_dir), "-pred", str(pred_dir), "-d", "950", "-o", str(tmp_path / "e")])
        == 2
    )
    assert "already exists" in capsys.readouterr().err
    assert (
        evaluate_main(["-ref", str(ref_dir), "-pred", str(pred_dir), "-d", "951", "-o", str(tmp_path / "f")])
        == 2
    )


# --------------------------------------------------------------------------------- real-data timing
REAL_SETS = {
    "lumbar": "Dataset901_LumbarVertebraeMR",
    "sij": "Dataset902_SacroiliacMR",
    "pelvis": "Dataset903_PelvisBoneMR",
}


REAL_COUNTS = {"lumbar": 11, "sij": 9, "pelvis": 10}  # 30 cases; the sacroiliac set has only 9


def build_real_benchmark(tmp: Path) -> tuple[DomainSpec, Path, Path]:
    """30 real label maps (11 lumbar, 9 sacroiliac, 10 pelvis) as references in a merged label space,
    and perturbed copies (eroded in-plane by one voxel and shifted by one voxel in x) as predictions."""
    from scipy import ndimage

    domains = {}
    for dom, name in REAL_SETS.items():
        dj = json.loads((REALDATA / name / "dataset.json").read_text())
        domains[dom] = [k for k, v in sorted(dj["labels"].items(), key=lambda kv: kv[1]) if v > 0]
    spec = make_spec(domains)
    ref_dir, pred_dir = tmp / "ref", tmp / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    for d in spec.domains:
        files = sorted((REALDATA / REAL_SETS[d.name] / "labelsTr").glob("*.nii.gz"))[: REAL_COUNTS[d.name]]
        for f in files:
            img = sitk.ReadImage(str(f))
            orig = sitk.GetArrayFromImage(img)
            ref = np.zeros_like(orig)
            pred = np.zeros_like(orig)
            se = np.zeros((3, 3, 3), bool)
            se[1] = True  # in-plane cross
            for lab in d.labels:
                m = orig == lab.original_id
                ref[m] = lab.unified_id
                pred[np.roll(ndimage.binary_erosion(m, se), 1, axis=2)] = lab.unified_id
            case = d.case_id(f.name[: -len(".nii.gz")])
            for arr, folder in ((ref, ref_dir), (pred, pred_dir)):
                out = sitk.GetImageFromArray(arr)
                out.CopyInformation(img)
                sitk.WriteImage(out, str(folder / f"{case}.nii.gz"))
    return spec, ref_dir, pred_dir


@pytest.mark.realdata
@pytest.mark.slow
def test_real_data_30_cases(tmp_path):
    # the time is printed, not asserted: CI runs this beside other tests on 2 cores (speed belongs to
    # benchmarks, docs/evaluation.md has the measured 10 s)
    spec, ref_dir, pred_dir = build_real_benchmark(tmp_path)
    assert len(list(ref_dir.iterdir())) == 30
    t0 = time.perf_counter()
    summary = evaluate_folders(ref_dir, pred_dir, spec, ".nii.gz", tmp_path / "eval", num_processes=2)
    print(f"evaluated 30 real cases in {time.perf_counter() - t0:.1f} s")
    assert summary["n_cases"] == 30
    for dom in REAL_SETS:
        dice = summary["domains"][dom]["mean"]["dice"]
        assert 0.2 < dice["mean"] < 0.99  # perturbed, not identical, not disjoint


def _approx_tree(a, b, path=""):
    """Nested dicts/lists equal, floats to 1e-6 (metrics.csv keeps 6 decimals), None == None."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _approx_tree(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _approx_tree(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, abs=1e-6), path
    else:
        assert a == b, path


def test_pool_evaluations_equals_evaluating_the_union(folders, tmp_path):
    """Two evaluations of disjoint case sets (two "folds") pooled = one evaluation of all predictions:
    same rows, same summary (to the CSV's 6 decimals), same missing cases and foreign labels."""
    from nnunetv2_mtmd.evaluation.evaluate import pool_evaluations

    spec, ref_dir, pred_dir = folders
    split = {"a": ["ankle_001", "shoulder_002"], "b": ["knee_001"]}
    parts = []
    for name, cases in split.items():
        d = tmp_path / f"pred_{name}"
        d.mkdir()
        for c in cases:
            (d / f"{c}.nii.gz").write_bytes((pred_dir / f"{c}.nii.gz").read_bytes())
        evaluate_folders(ref_dir, d, spec, ".nii.gz", tmp_path / f"ev_{name}", num_processes=1, allow_missing=True,
                         plots=False)
        parts.append(tmp_path / f"ev_{name}")
    whole = evaluate_folders(ref_dir, pred_dir, spec, ".nii.gz", tmp_path / "ev_all", num_processes=1, plots=False)
    pooled = pool_evaluations(parts, tmp_path / "pooled", spec, plots=False)
    assert pooled["n_cases"] == whole["n_cases"] == 3 and pooled["missing_predictions"] == []
    # knee_001's shoulder label (8) in the prediction: kept by the pooled summary
    assert pooled["labels_of_other_domains"]["prediction"] == {"knee_001": {"8": 1}}
    assert pooled["pooled_from"] == [str(p) for p in parts]
    on_disk = json.loads((tmp_path / "pooled" / "summary.json").read_text())
    ref_disk = json.loads((tmp_path / "ev_all" / "summary.json").read_text())
    for key in ("domains", "all", "labels_of_other_domains", "slice_axis", "n_cases"):
        _approx_tree(on_disk[key], ref_disk[key], key)
    def order(r):
        return r["case"], r["structure"], r.get("slice", "")

    for name in ("metrics.csv", "slices.csv"):
        got = sorted(read_rows(tmp_path / "pooled" / name), key=order)
        want = sorted(read_rows(tmp_path / "ev_all" / name), key=order)
        assert got == want
    assert (tmp_path / "pooled" / "summary.md").is_file()


def test_pool_evaluations_refuses_overlaps_and_non_evaluations(folders, tmp_path):
    from nnunetv2_mtmd.evaluation.evaluate import pool_evaluations

    spec, ref_dir, pred_dir = folders
    evaluate_folders(ref_dir, pred_dir, spec, ".nii.gz", tmp_path / "ev", num_processes=1, plots=False)
    with pytest.raises(InputDataError, match="is evaluated in both"):
        pool_evaluations([tmp_path / "ev", tmp_path / "ev"], tmp_path / "pooled", spec, plots=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputDataError, match=r"metrics.csv does not exist.*evaluate it first"):
        pool_evaluations([tmp_path / "empty"], tmp_path / "pooled", spec, plots=False)
    assert not (tmp_path / "pooled").exists()
