"""Domain-stratified k-fold and the paper's leave-one-out splits, and the splits command."""

from __future__ import annotations

import json

import pytest

from nnunetv2_mtmd.cli.splits import main as splits_main
from nnunetv2_mtmd.errors import InputDataError, OutputExistsError
from nnunetv2_mtmd.training.splits import (
    domain_stratified_kfold,
    find_split_target,
    leave_one_out_splits,
    make_splits,
    write_splits,
)
from tests.evaluation.test_evaluate import make_spec, write_merged_dataset

SPEC = make_spec()


def cases(counts: dict[str, int]) -> list[str]:
    return [f"{d}_{i:03d}" for d, n in counts.items() for i in range(n)]


def domain(case: str) -> str:
    return case.split("_")[0]


def check_partition(folds, ids):
    """No case in train and val of one fold; train + val = all cases; sorted lists; every case validated
    at most once over the folds."""
    for f in folds:
        assert set(f) == {"train", "val"}
        assert f["train"] == sorted(f["train"]) and f["val"] == sorted(f["val"])
        assert not set(f["train"]) & set(f["val"])
        assert sorted(f["train"] + f["val"]) == sorted(ids)
        assert f["val"]
    all_val = [c for f in folds for c in f["val"]]
    assert len(all_val) == len(set(all_val))


def test_kfold_every_domain_in_every_fold():
    ids = cases({"ankle": 12, "knee": 7, "shoulder": 5})
    folds = domain_stratified_kfold(ids, SPEC, n_folds=5, seed=12345)
    assert len(folds) == 5
    check_partition(folds, ids)
    assert sorted(c for f in folds for c in f["val"]) == sorted(ids)  # every case validated exactly once
    for f in folds:
        for d in ("ankle", "knee", "shoulder"):
            assert any(domain(c) == d for c in f["val"]), (d, f["val"])
            assert any(domain(c) == d for c in f["train"])
    sizes = sorted(len(f["val"]) for f in folds)  # 24 cases: 4 x 5 + 1 x 4
    assert sizes == [4, 5, 5, 5, 5]
    # per domain the validation counts differ by at most one across folds (stratification)
    for d, n in (("ankle", 12), ("knee", 7), ("shoulder", 5)):
        per = [sum(domain(c) == d for c in f["val"]) for f in folds]
        assert sum(per) == n and max(per) - min(per) <= 1


def test_kfold_deterministic_per_seed():
    ids = cases({"ankle": 10, "knee": 10, "shoulder": 10})
    a = domain_stratified_kfold(ids, SPEC, seed=12345)
    assert a == domain_stratified_kfold(list(reversed(ids)), SPEC, seed=12345)  # input order is irrelevant
    assert a != domain_stratified_kfold(ids, SPEC, seed=1)
    assert domain_stratified_kfold(ids, SPEC, seed=1) == domain_stratified_kfold(ids, SPEC, seed=1)


def test_kfold_domain_with_fewer_cases_than_folds():
    ids = cases({"ankle": 8, "knee": 2, "shoulder": 3})
    folds = domain_stratified_kfold(ids, SPEC, n_folds=5)
    check_partition(folds, ids)
    knee_val = [sum(domain(c) == "knee" for c in f["val"]) for f in folds]
    assert sorted(knee_val) == [0, 0, 0, 1, 1]  # two cases in two distinct folds
    for f in folds:  # still trained on in every fold
        assert any(domain(c) == "knee" for c in f["train"])


def test_kfold_too_few_cases():
    with pytest.raises(InputDataError, match="cannot fill 5 folds"):
        domain_stratified_kfold(cases({"ankle": 2, "knee": 2}), SPEC, n_folds=5)
    folds = domain_stratified_kfold(cases({"ankle": 3, "knee": 2}), SPEC, n_folds=5)  # 5 cases: 1 per fold
    assert [len(f["val"]) for f in folds] == [1] * 5


def test_bad_ids():
    with pytest.raises(InputDataError, match="duplicates"):
        domain_stratified_kfold(["ankle_1", "ankle_1", "knee_1", "knee_2", "knee_3"], SPEC)
    with pytest.raises(Exception, match="hip_1"):
        domain_stratified_kfold(["hip_1", "ankle_1", "knee_1", "knee_2", "knee_3"], SPEC)


def test_loo_fold_count_and_membership():
    counts = {"ankle": 6, "knee": 4, "shoulder": 5}
    ids = cases(counts)
    folds = leave_one_out_splits(ids, SPEC, seed=7)
    assert len(folds) == 4  # the smallest domain
    check_partition(folds, ids)
    for f in folds:  # exactly one held-out case of every domain
        assert sorted(domain(c) for c in f["val"]) == ["ankle", "knee", "shoulder"]
    held = {d: [c for f in folds for c in f["val"] if domain(c) == d] for d in counts}
    assert sorted(held["knee"]) == sorted(c for c in ids if domain(c) == "knee")  # each knee case once
    assert len(set(held["ankle"])) == 4  # 4 distinct ankle cases, 2 never held out
    assert folds == leave_one_out_splits(ids, SPEC, seed=7)
    assert folds != leave_one_out_splits(ids, SPEC, seed=8)


def test_loo_shuffle_independent_of_other_domains():
    a = leave_one_out_splits(cases({"ankle": 6, "knee": 4}), SPEC)
    b = leave_one_out_splits(cases({"ankle": 6, "knee": 4, "shoulder": 9}), SPEC)
    for fa, fb in zip(a, b):
        assert [c for c in fa["val"]] == [c for c in fb["val"] if domain(c) != "shoulder"]


def test_loo_needs_two_cases_per_domain():
    with pytest.raises(InputDataError, match="at least 2 cases"):
        leave_one_out_splits(cases({"ankle": 6, "knee": 1}), SPEC)
    with pytest.raises(InputDataError, match="Unknown split scheme"):
        make_splits(cases({"ankle": 6}), SPEC, "3fold")


def test_write_splits_refuses_different(tmp_path):
    p = tmp_path / "splits_final.json"
    ids = cases({"ankle": 6, "knee": 5})
    five = make_splits(ids, SPEC, "5fold")
    assert write_splits(five, p) is True
    assert json.loads(p.read_text()) == five
    assert write_splits(five, p) is False  # identical: nothing to do
    loo = make_splits(ids, SPEC, "loo")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_splits(loo, p)
    assert json.loads(p.read_text()) == five
    assert write_splits(loo, p, overwrite=True) is True
    assert json.loads(p.read_text()) == loo


def test_cli_from_raw_then_preprocessed(nnunet_dirs, capsys):
    ds = write_merged_dataset(nnunet_dirs["raw"], SPEC, 950)
    ids = cases({"ankle": 6, "knee": 5, "shoulder": 5})
    for c in ids:
        (ds / "labelsTr" / f"{c}.nii.gz").write_bytes(b"")  # only the names matter here
    assert splits_main(["-d", "950"]) == 0
    out = nnunet_dirs["preprocessed"] / ds.name / "splits_final.json"
    assert json.loads(out.read_text()) == domain_stratified_kfold(ids, SPEC, 5, 12345)
    assert splits_main(["-d", "950", "--scheme", "loo"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert splits_main(["-d", "950", "--scheme", "loo", "--seed", "3", "--overwrite"]) == 0
    assert json.loads(out.read_text()) == leave_one_out_splits(ids, SPEC, 3)
    # once preprocessed, the preprocessed case files decide (here: one case was excluded)
    pre = nnunet_dirs["preprocessed"] / ds.name
    (pre / "dataset.json").write_text((ds / "dataset.json").read_text())
    (pre / "nnUNetPlans_2d").mkdir()
    kept = [c for c in ids if c != "ankle_000"]
    for c in kept:
        (pre / "nnUNetPlans_2d" / f"{c}.pkl").write_bytes(b"")
        (pre / "nnUNetPlans_2d" / f"{c}.b2nd").write_bytes(b"")
    target = find_split_target("950")
    assert target.case_ids == sorted(kept) and "nnUNetPlans_2d" in target.source
    assert splits_main(["-d", "Dataset950_Joints", "--overwrite"]) == 0
    assert json.loads(out.read_text()) == domain_stratified_kfold(kept, SPEC)
    # configuration folders that disagree are an error
    (pre / "nnUNetPlans_3d_fullres").mkdir()
    (pre / "nnUNetPlans_3d_fullres" / "knee_000.pkl").write_bytes(b"")
    with pytest.raises(InputDataError, match="different cases"):
        find_split_target("950")


def test_cli_unknown_dataset(nnunet_dirs, capsys):
    assert splits_main(["-d", "951"]) == 2
    assert "error:" in capsys.readouterr().err
