"""Bad inputs to merge / prepare_input / export_labels: a clear error naming the offending file or field,
and no output (and no temporary folder) left behind.

Each entry of ``CASES`` builds a broken situation and returns ``(call, output path, expected
substrings of the message)``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_mtmd.conversion.export_labels import export_labels
from nnunetv2_mtmd.conversion.merge import merge_datasets
from nnunetv2_mtmd.conversion.prepare_input import prepare_input
from nnunetv2_mtmd.errors import MTMDError
from tests.datagen import make_raw_dataset, write_image

SHAPE = (2, 8, 8)
Case = tuple[Callable[[], object], Path, list[str]]


# ---------------------------------------------------------------------------------------- helpers
def sources(
    raw: Path, channels: tuple[str, ...] = ("MRI",), beta_channels: tuple[str, ...] | None = None
) -> None:
    """Dataset901_Alpha (labels a, b) and Dataset902_Beta (label c), two cases each."""
    make_raw_dataset(raw, 901, "Alpha", ["a", "b"], 2, SHAPE, channels)
    make_raw_dataset(raw, 902, "Beta", ["c"], 2, SHAPE, beta_channels or channels)


def merge(raw: Path, **kw) -> Callable[[], object]:
    args = {"sources": [901, 902], "output_id": 950, "name": "Bad", "raw_root": raw, "progress": False, **kw}
    return lambda: merge_datasets(**args)


def merged_dataset(raw: Path, channels: tuple[str, ...] = ("MRI",)) -> None:
    """Dataset950_MD: domains alpha (alpha_a = 1, alpha_b = 2) and beta (beta_c = 3)."""
    sources(raw, channels=channels)
    merge_datasets([901, 902], 950, "MD", domain_names=["alpha", "beta"], raw_root=raw, progress=False)


def relabel(path: Path, arr: np.ndarray, spacing=(1.0, 1.0, 2.0)) -> None:
    write_image(arr, path, spacing)


def new_case(folder: Path, case: str = "new000", channels: int = 1, spacings=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for c in range(channels):
        sp = spacings[c] if spacings else (1.0, 1.0, 2.0)
        write_image(np.ones(SHAPE, np.float32), folder / f"{case}_{c:04d}.nii.gz", sp)
    return folder


def pred_file(folder: Path, name: str, arr: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_image(arr, folder / name)
    return folder


def lab(value, dtype=np.uint8) -> np.ndarray:
    a = np.zeros(SHAPE, dtype=dtype)
    a[0, 2:4, 2:4] = value
    return a


# ------------------------------------------------------------------------------------------ merge
def m_missing_label(d, tmp) -> Case:
    sources(d["raw"])
    (d["raw"] / "Dataset901_Alpha" / "labelsTr" / "alp001.nii.gz").unlink()
    return (
        merge(d["raw"]),
        d["raw"] / "Dataset950_Bad",
        ["Missing label file", "labelsTr/alp001.nii.gz", "alp001"],
    )


def m_undeclared_label(d, tmp) -> Case:
    sources(d["raw"])
    relabel(d["raw"] / "Dataset901_Alpha" / "labelsTr" / "alp001.nii.gz", lab(7))
    return (
        merge(d["raw"]),
        d["raw"] / "Dataset950_Bad",
        ["alp001.nii.gz", "[7]", "Dataset901_Alpha/dataset.json", "does not declare"],
    )


def m_image_label_geometry(d, tmp) -> Case:
    sources(d["raw"])
    relabel(d["raw"] / "Dataset901_Alpha" / "labelsTr" / "alp001.nii.gz", lab(1), spacing=(1.0, 1.0, 5.0))
    return (
        merge(d["raw"]),
        d["raw"] / "Dataset950_Bad",
        ["imagesTr/alp001_0000.nii.gz", "labelsTr/alp001.nii.gz", "different geometry", "5.0"],
    )


def m_channel_count(d, tmp) -> Case:
    sources(d["raw"], beta_channels=("MRI", "T2"))
    return (
        merge(d["raw"]),
        d["raw"] / "Dataset950_Bad",
        ["Dataset901_Alpha: 1 (MRI)", "Dataset902_Beta: 2 (MRI, T2)", "number"],
    )


def m_channel_names(d, tmp) -> Case:
    sources(d["raw"], beta_channels=("T1",))
    return merge(d["raw"]), d["raw"] / "Dataset950_Bad", ["Dataset902_Beta: 1 (T1)", "--channel_names"]


def m_duplicate_domains(d, tmp) -> Case:
    sources(d["raw"])
    return (
        merge(d["raw"], domain_names=["knee", "knee"]),
        d["raw"] / "Dataset950_Bad",
        ["'knee'", "more than once"],
    )


def m_domain_path_separator(d, tmp) -> Case:
    sources(d["raw"])
    return (
        merge(d["raw"], domain_names=["knee/../x", "hip"]),
        d["raw"] / "Dataset950_Bad",
        ["--domains", "'knee/../x'", "path separators"],
    )


def m_domain_space(d, tmp) -> Case:
    sources(d["raw"])
    return (
        merge(d["raw"], domain_names=["knee left", "hip"]),
        d["raw"] / "Dataset950_Bad",
        ["'knee left'", "no spaces"],
    )


def m_domain_count(d, tmp) -> Case:
    sources(d["raw"])
    return (
        merge(d["raw"], domain_names=["knee"]),
        d["raw"] / "Dataset950_Bad",
        ["--domains", "1 name(s)", "2 source"],
    )


def m_target_exists(d, tmp) -> Case:
    sources(d["raw"])
    (d["raw"] / "Dataset950_Old").mkdir()
    return merge(d["raw"]), d["raw"] / "Dataset950_Bad", ["Dataset950_Old", "--overwrite"]


def m_target_exists_preprocessed(d, tmp) -> Case:
    sources(d["raw"])
    (d["preprocessed"] / "Dataset950_Old").mkdir()
    return merge(d["raw"]), d["raw"] / "Dataset950_Bad", ["nnUNet_preprocessed/Dataset950_Old", "--overwrite"]


def m_output_is_source(d, tmp) -> Case:
    sources(d["raw"])
    return (
        merge(d["raw"], output_id=901, overwrite=True),
        d["raw"] / "Dataset901_Bad",
        ["Dataset901_Alpha", "different output id"],
    )


def m_unknown_dataset(d, tmp) -> Case:
    sources(d["raw"])
    return merge(d["raw"], sources=[901, 977]), d["raw"] / "Dataset950_Bad", ["id 977", str(d["raw"])]


def m_empty_dataset(d, tmp) -> Case:
    sources(d["raw"])
    ds = d["raw"] / "Dataset904_Empty"
    (ds / "imagesTr").mkdir(parents=True)
    (ds / "labelsTr").mkdir()
    (ds / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "MRI"},
                "labels": {"background": 0, "e": 1},
                "numTraining": 0,
                "file_ending": ".nii.gz",
            }
        )
    )
    return (
        merge(d["raw"], sources=[901, 904]),
        d["raw"] / "Dataset950_Bad",
        ["Dataset904_Empty/imagesTr", "no training cases", "empty"],
    )


def m_non_integer_label(d, tmp) -> Case:
    sources(d["raw"])
    relabel(d["raw"] / "Dataset902_Beta" / "labelsTr" / "bet001.nii.gz", lab(0.5, np.float32))
    return merge(d["raw"]), d["raw"] / "Dataset950_Bad", ["labelsTr/bet001.nii.gz", "non-integer"]


def m_channel_geometry(d, tmp) -> Case:
    sources(d["raw"], channels=("T1", "T2"))
    f = d["raw"] / "Dataset901_Alpha" / "imagesTr" / "alp001_0001.nii.gz"
    write_image(np.ones(SHAPE, np.float32), f, origin=(5.0, 0.0, 0.0))
    return (
        merge(d["raw"]),
        d["raw"] / "Dataset950_Bad",
        ["'alp001'", "alp001_0000.nii.gz", "alp001_0001.nii.gz", "different geometry"],
    )


def m_region_labels(d, tmp) -> Case:
    sources(d["raw"])
    p = d["raw"] / "Dataset901_Alpha" / "dataset.json"
    dj = json.loads(p.read_text())
    dj["labels"]["ab"] = [1, 2]
    p.write_text(json.dumps(dj))
    return (
        merge(d["raw"]),
        d["raw"] / "Dataset950_Bad",
        ["Dataset901_Alpha/dataset.json['labels']['ab']", "region-based"],
    )


def m_file_ending(d, tmp) -> Case:
    sources(d["raw"])
    ds = d["raw"] / "Dataset902_Beta"
    for f in list((ds / "imagesTr").iterdir()) + list((ds / "labelsTr").iterdir()):
        sitk.WriteImage(sitk.ReadImage(str(f)), str(f).replace(".nii.gz", ".nrrd"))
        f.unlink()
    dj = json.loads((ds / "dataset.json").read_text())
    dj["file_ending"] = ".nrrd"
    (ds / "dataset.json").write_text(json.dumps(dj))
    return (
        merge(d["raw"]),
        d["raw"] / "Dataset950_Bad",
        ["Dataset901_Alpha: .nii.gz", "Dataset902_Beta: .nrrd"],
    )


def m_unsafe_output_name(d, tmp) -> Case:
    sources(d["raw"])
    return merge(d["raw"], name="x/../../y"), d["raw"] / "Dataset950_x", ["'x/../../y'", "path separators"]


# ---------------------------------------------------------------------------------- prepare_input
def p_unknown_domain(d, tmp) -> Case:
    merged_dataset(d["raw"])
    inp = new_case(tmp / "in")
    return (
        (lambda: prepare_input(inp, tmp / "out", 950, "alpah", progress=False)),
        tmp / "out",
        ["Unknown domain 'alpah'", "Did you mean 'alpha'"],
    )


def p_unknown_domain_code(d, tmp) -> Case:
    merged_dataset(d["raw"])
    inp = new_case(tmp / "in")
    return (
        (lambda: prepare_input(inp, tmp / "out", 950, "7", progress=False)),
        tmp / "out",
        ["domain code 7", "1=alpha, 2=beta"],
    )


def p_already_prepared(d, tmp) -> Case:
    merged_dataset(d["raw"])
    inp = new_case(tmp / "in", channels=2)
    return (
        (lambda: prepare_input(inp, tmp / "out", 950, "beta", progress=False)),
        tmp / "out",
        ["'new000'", "new000_0001.nii.gz", "already prepared"],
    )


def p_channel_geometry(d, tmp) -> Case:
    merged_dataset(d["raw"], channels=("T1", "T2"))
    inp = new_case(tmp / "in", channels=2, spacings=[(1.0, 1.0, 2.0), (1.0, 1.0, 3.0)])
    return (
        (lambda: prepare_input(inp, tmp / "out", 950, "beta", progress=False)),
        tmp / "out",
        ["new000_0000.nii.gz", "new000_0001.nii.gz", "different geometry"],
    )


def p_missing_channel(d, tmp) -> Case:
    merged_dataset(d["raw"], channels=("T1", "T2"))
    inp = new_case(tmp / "in", channels=1)
    return (
        (lambda: prepare_input(inp, tmp / "out", 950, "beta", progress=False)),
        tmp / "out",
        ["'new000'", "channels [0], expected [0, 1]", "0: T1, 1: T2"],
    )


def p_empty_input(d, tmp) -> Case:
    merged_dataset(d["raw"])
    (tmp / "in").mkdir()
    (tmp / "in" / "notes.txt").write_text("x")
    return (
        (lambda: prepare_input(tmp / "in", tmp / "out", 950, "beta", progress=False)),
        tmp / "out",
        ["No input images", str(tmp / "in"), "_0000.nii.gz", "notes.txt"],
    )


def p_not_multidomain(d, tmp) -> Case:
    sources(d["raw"])
    inp = new_case(tmp / "in")
    return (
        (lambda: prepare_input(inp, tmp / "out", 901, "beta", progress=False)),
        tmp / "out",
        ["Dataset901_Alpha/dataset.json", "no 'mtmd' block", "nnUNetv2_mtmd_merge"],
    )


def p_unknown_dataset(d, tmp) -> Case:
    merged_dataset(d["raw"])
    inp = new_case(tmp / "in")
    return (
        (lambda: prepare_input(inp, tmp / "out", 977, "beta", progress=False)),
        tmp / "out",
        ["Cannot find dataset 977", "$nnUNet_raw", "$nnUNet_preprocessed"],
    )


def p_output_inside_input(d, tmp) -> Case:
    merged_dataset(d["raw"])
    inp = new_case(tmp / "in")
    return (
        (lambda: prepare_input(inp, inp / "out", 950, "beta", progress=False)),
        inp / "out",
        ["overlap", str(inp)],
    )


# ---------------------------------------------------------------------------------- export_labels
def e_other_domain_labels(d, tmp) -> Case:
    merged_dataset(d["raw"])
    pred = pred_file(tmp / "pred", "beta_p1.nii.gz", lab(1))
    return (
        (lambda: export_labels(pred, tmp / "out", 950, progress=False)),
        tmp / "out",
        ["beta_p1.nii.gz", "1 (alpha_a)", "domain 'beta'", "3 (beta_c)"],
    )


def e_label_outside_unified_space(d, tmp) -> Case:
    merged_dataset(d["raw"])
    pred = pred_file(tmp / "pred", "alpha_p1.nii.gz", lab(9))
    return (
        (lambda: export_labels(pred, tmp / "out", 950, progress=False)),
        tmp / "out",
        ["alpha_p1", "9 (not a label of this dataset)"],
    )


def e_domain_unknown(d, tmp) -> Case:
    merged_dataset(d["raw"])
    pred = pred_file(tmp / "pred", "p1.nii.gz", lab(3))
    return (
        (lambda: export_labels(pred, tmp / "out", 950, progress=False)),
        tmp / "out",
        ["'p1.nii.gz'", "--domain", "--input"],
    )


def e_non_integer(d, tmp) -> Case:
    merged_dataset(d["raw"])
    pred = pred_file(tmp / "pred", "beta_p1.nii.gz", lab(2.5, np.float32))
    return (
        (lambda: export_labels(pred, tmp / "out", 950, progress=False)),
        tmp / "out",
        ["beta_p1.nii.gz", "non-integer"],
    )


def e_code_channel_missing(d, tmp) -> Case:
    merged_dataset(d["raw"])
    pred = pred_file(tmp / "pred", "p1.nii.gz", lab(3))
    (tmp / "prepared").mkdir()
    return (
        (lambda: export_labels(pred, tmp / "out", 950, input_folder=tmp / "prepared", progress=False)),
        tmp / "out",
        ["prepared/p1_0001.nii.gz", "does not exist"],
    )


def e_code_channel_not_a_code(d, tmp) -> Case:
    merged_dataset(d["raw"])
    pred = pred_file(tmp / "pred", "p1.nii.gz", lab(3))
    new_case(tmp / "prepared", "p1", channels=1)
    write_image(np.full(SHAPE, 5.0, np.float32), tmp / "prepared" / "p1_0001.nii.gz")
    return (
        (lambda: export_labels(pred, tmp / "out", 950, input_folder=tmp / "prepared", progress=False)),
        tmp / "out",
        ["p1_0001.nii.gz", "maximum 5.0", "1=alpha, 2=beta"],
    )


def e_no_predictions(d, tmp) -> Case:
    merged_dataset(d["raw"])
    (tmp / "pred").mkdir()
    (tmp / "pred" / "plans.json").write_text("{}")
    return (
        (lambda: export_labels(tmp / "pred", tmp / "out", 950, progress=False)),
        tmp / "out",
        ["No predictions", str(tmp / "pred"), ".nii.gz"],
    )


CASES = [
    m_missing_label,
    m_undeclared_label,
    m_image_label_geometry,
    m_channel_count,
    m_channel_names,
    m_duplicate_domains,
    m_domain_path_separator,
    m_domain_space,
    m_domain_count,
    m_target_exists,
    m_target_exists_preprocessed,
    m_output_is_source,
    m_unknown_dataset,
    m_empty_dataset,
    m_non_integer_label,
    m_channel_geometry,
    m_region_labels,
    m_file_ending,
    m_unsafe_output_name,
    p_unknown_domain,
    p_unknown_domain_code,
    p_already_prepared,
    p_channel_geometry,
    p_missing_channel,
    p_empty_input,
    p_not_multidomain,
    p_unknown_dataset,
    p_output_inside_input,
    e_other_domain_labels,
    e_label_outside_unified_space,
    e_domain_unknown,
    e_non_integer,
    e_code_channel_missing,
    e_code_channel_not_a_code,
    e_no_predictions,
]


def _snapshot(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("make_case", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input_clear_error_and_no_output(nnunet_dirs, tmp_path, make_case):
    work = tmp_path / "work"
    work.mkdir()
    call, out, expected = make_case(nnunet_dirs, work)
    before = {k: _snapshot(nnunet_dirs[k]) for k in ("raw", "preprocessed")} | {"work": _snapshot(work)}
    with pytest.raises(MTMDError) as exc:
        call()
    msg = str(exc.value)
    for s in expected:
        assert s in msg, f"expected {s!r} in the message: {msg}"
    # no output, no temporary sibling, and nothing else changed in the nnU-Net folders or the work folder
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))
    after = {k: _snapshot(nnunet_dirs[k]) for k in ("raw", "preprocessed")} | {"work": _snapshot(work)}
    assert after == before


def test_at_least_twelve_distinct_bad_inputs():
    assert len({c.__name__ for c in CASES}) >= 12
