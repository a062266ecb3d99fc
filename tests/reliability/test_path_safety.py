"""Case ids and domain names can never write outside the output folder (issue 7, item 3).

Domain names are restricted to ``[A-Za-z][A-Za-z0-9-]{0,31}`` wherever they enter (merge
``--domains``, the dataset.json block: see test_domain_validation.py); every file the plugin writes
per case or per domain goes through :func:`nnunetv2_mtmd.io.safe_child`; case ids come from
directory listings (no separators possible). Here: both tables, then merge -> prepare_input ->
export_labels on cases with odd but legal ids (leading ``-``, spaces, dots, unicode; names starting
with ``.`` are hidden files, which merge and prepare_input skip):
every file written lies inside the command's output folder and nothing else in the tree changes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nnunetv2_mtmd.conversion.export_labels import export_labels
from nnunetv2_mtmd.conversion.merge import merge_datasets
from nnunetv2_mtmd.conversion.prepare_input import prepare_input
from nnunetv2_mtmd.domains import validate_domain_name
from nnunetv2_mtmd.errors import DomainSpecError, InputDataError, MTMDError
from nnunetv2_mtmd.io import safe_child
from tests.datagen import make_raw_dataset, write_image

UNSAFE_FILE_NAMES = ["..", ".", "", "../x.nii.gz", "a/../../b", "/etc/passwd", "sub/x", "a\\b", "x\0y"]
SAFE_FILE_NAMES = ["a..b.nii.gz", ".hidden", "ankle_001_0000.nii.gz", "-rf", "a b", "ü.nii.gz", "..x"]


@pytest.mark.parametrize("name", UNSAFE_FILE_NAMES)
def test_safe_child_refuses_names_leaving_the_folder(tmp_path, name):
    with pytest.raises(InputDataError, match="Refusing"):
        safe_child(tmp_path, name)


@pytest.mark.parametrize("name", SAFE_FILE_NAMES)
def test_safe_child_keeps_plain_names_inside(tmp_path, name):
    p = safe_child(tmp_path, name)
    assert p.parent == tmp_path and p.name == name


UNSAFE_DOMAIN_NAMES = ["../knee", "..", "knee/left", "knee\\left", "/abs", "", " knee", "knee ", "left_knee",
                       "1knee", "-knee", "k" * 33, "knee\n", "knee.", "kn:ee", None, 3]


@pytest.mark.parametrize("name", UNSAFE_DOMAIN_NAMES)
def test_domain_names_cannot_hold_paths(name):
    with pytest.raises(DomainSpecError, match="not a valid domain name"):
        validate_domain_name(name, "--domains")


def _snapshot(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


ODD_CASES = ["-rf", "a b", "x.y", "ü", "a..b"]
#: names starting with "." are hidden files: merge and prepare_input skip them (never written)
HIDDEN_CASES = ["..", "...."]


def _raw_with_odd_case_ids(raw: Path) -> None:
    """Two source datasets whose case ids are odd but legal file names."""
    for did, name, labels in ((901, "Alpha", ["a"]), (902, "Beta", ["b"])):
        ds = make_raw_dataset(raw, did, name, labels, n_cases=1, shape=(2, 8, 8))
        img = next((ds / "imagesTr").iterdir())
        lab = next((ds / "labelsTr").iterdir())
        for case in ODD_CASES + HIDDEN_CASES:
            (ds / "imagesTr" / f"{case}_0000.nii.gz").write_bytes(img.read_bytes())
            (ds / "labelsTr" / f"{case}.nii.gz").write_bytes(lab.read_bytes())
        dj = json.loads((ds / "dataset.json").read_text())
        dj["numTraining"] = 1 + len(ODD_CASES) + len(HIDDEN_CASES)
        (ds / "dataset.json").write_text(json.dumps(dj))


def test_odd_case_ids_stay_inside_every_output_folder(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    _raw_with_odd_case_ids(raw)

    before = _snapshot(tmp_path)
    merge_datasets([901, 902], 950, "Odd", domain_names=["alpha", "beta"], raw_root=raw, progress=False)
    merged = raw / "Dataset950_Odd"
    changed = {k for k, v in _snapshot(tmp_path).items() if before.get(k) != v}
    assert changed and all(k == "raw" or k.startswith("raw/Dataset950_Odd") for k in changed), changed
    images = {p.name for p in (merged / "imagesTr").iterdir()}
    for case in ODD_CASES:
        assert f"alpha_{case}_0000.nii.gz" in images and f"beta_{case}_0001.nii.gz" in images
    assert not any(f"_{h}_" in n for h in HIDDEN_CASES for n in images)

    # prepare_input keeps the odd ids (no prefix) or prefixes them; all files inside the output folder
    new = tmp_path / "new"
    new.mkdir()
    for case in ODD_CASES + HIDDEN_CASES:
        write_image(np.ones((2, 8, 8), np.float32), new / f"{case}_0000.nii.gz")
    for prefix in (False, True):
        out = tmp_path / f"prepared_{prefix}"
        before = _snapshot(tmp_path)
        written = prepare_input(new, out, merged / "dataset.json", "beta", prefix=prefix, progress=False)
        assert sorted(written) == sorted(f"beta_{c}" if prefix else c for c in ODD_CASES)
        changed = {k for k, v in _snapshot(tmp_path).items() if before.get(k) != v}
        assert all(k.startswith(f"prepared_{prefix}") for k in changed), changed
        assert all(f.resolve().parent == out.resolve() for files in written.values() for f in files)

    # export_labels: predictions named like the odd cases go into <output>/<domain>/
    preds = tmp_path / "preds"
    preds.mkdir()
    for case in ODD_CASES:
        write_image(np.zeros((2, 8, 8), np.uint8), preds / f"beta_{case}.nii.gz")
    before = _snapshot(tmp_path)
    exported = export_labels(preds, tmp_path / "exported", merged / "dataset.json", progress=False)
    changed = {k for k, v in _snapshot(tmp_path).items() if before.get(k) != v}
    assert all(k.startswith("exported") for k in changed), changed
    assert {f.parent.name for files in exported.values() for f in files} == {"beta"}


@pytest.mark.parametrize("domains", [["../evil", "beta"], ["alpha", "/tmp/evil"], ["al/pha", "beta"]])
def test_hostile_domain_names_write_nothing(tmp_path, domains):
    raw = tmp_path / "raw"
    raw.mkdir()
    make_raw_dataset(raw, 901, "Alpha", ["a"], n_cases=1, shape=(2, 8, 8))
    make_raw_dataset(raw, 902, "Beta", ["b"], n_cases=1, shape=(2, 8, 8))
    before = _snapshot(tmp_path.parent)
    with pytest.raises(MTMDError, match="not a valid domain name"):
        merge_datasets([901, 902], 950, "Evil", domain_names=domains, raw_root=raw, progress=False)
    assert _snapshot(tmp_path.parent) == before


def test_hostile_domain_name_in_dataset_json_is_refused_before_writing(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    _raw_with_odd_case_ids(raw)
    merge_datasets([901, 902], 950, "Odd", domain_names=["alpha", "beta"], raw_root=raw, progress=False)
    dj_path = raw / "Dataset950_Odd" / "dataset.json"
    dj = json.loads(dj_path.read_text())
    dj["mtmd"]["domains"][1]["name"] = "../../escaped"
    dj_path.write_text(json.dumps(dj))
    preds = tmp_path / "preds"
    preds.mkdir()
    write_image(np.zeros((2, 8, 8), np.uint8), preds / "x_1.nii.gz")
    before = _snapshot(tmp_path.parent)
    with pytest.raises(DomainSpecError, match=r"\['domains'\]\[1\]\['name'\]"):
        export_labels(preds, tmp_path / "exported", dj_path, domain=2, progress=False)
    assert _snapshot(tmp_path.parent) == before
