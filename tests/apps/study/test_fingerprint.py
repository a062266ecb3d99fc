"""nnunetv2_mtmd/apps/study/fingerprint.py: the model-code fingerprint of a training, taken at every start
(the package the training's interpreter finds, so a snapshot on PYTHONPATH counts), stored in state.json,
mixed when a resumed model's code changed, and the report's note when compared models mix them."""

from __future__ import annotations

import json
import logging
import os
from importlib.metadata import version

import pytest

from nnunetv2_mtmd.apps.study import (
    MIXED,
    code_mix_note,
    fingerprint_cell,
    fingerprint_id,
    model_code_files,
    model_code_sha256,
    model_fingerprint,
    model_key,
    training_code,
    unit_fingerprints,
)
from tests.apps.study.helpers import make_sources


def _package(root, files=None):
    """A fake nnunetv2_mtmd package under ``root`` (what a git-archive snapshot holds)."""
    pkg = root / "nnunetv2_mtmd"
    files = files or {"__init__.py": "", "schemes.py": "A = 1\n", "training/base.py": "lr = 0.01\n",
                      "apps/study/report.py": "x = 1\n", "cli/study.py": "y = 1\n", "COMMIT": "abc\n",
                      "training/__pycache__/base.cpython-311.pyc": "bytes"}
    for rel, text in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    return pkg


def test_model_code_is_every_library_module_but_apps_and_cli(tmp_path):
    pkg = _package(tmp_path)
    assert [p.relative_to(pkg).as_posix() for p in model_code_files(pkg)] == [
        "__init__.py", "schemes.py", "training/base.py"]
    before = model_code_sha256(pkg)
    assert len(before) == 64
    # the apps, the command lines, the commit file and byte code are not model code
    (pkg / "apps" / "study" / "report.py").write_text("x = 2\n")
    (pkg / "cli" / "study.py").write_text("y = 2\n")
    (pkg / "COMMIT").write_text("def\n")
    assert model_code_sha256(pkg) == before
    # a change of a training module is
    (pkg / "training" / "base.py").write_text("lr = 0.02\n")
    changed = model_code_sha256(pkg)
    assert changed != before
    # so is moving code between files (path and length are hashed with the bytes)
    (pkg / "training" / "base.py").write_text("")
    (pkg / "schemes.py").write_text("A = 1\nlr = 0.02\n")
    assert model_code_sha256(pkg) not in (before, changed)
    with pytest.raises(FileNotFoundError, match="No Python file under"):
        model_code_sha256(tmp_path / "empty")


def test_fingerprint_id_covers_code_and_versions():
    versions = {"nnunetv2": "2.8.1", "torch": "2.5.0", "dynamic-network-architectures": "0.4"}
    fp = fingerprint_id("a" * 64, versions)
    assert len(fp) == 12 and fp == fingerprint_id("a" * 64, dict(reversed(list(versions.items()))))
    assert fingerprint_id("b" * 64, versions) != fp
    assert fingerprint_id("a" * 64, {**versions, "torch": "2.6.0"}) != fp


def test_training_code_is_what_the_trainings_interpreter_imports(tmp_path):
    snap = tmp_path / "snap"
    pkg = _package(snap)
    env = {**os.environ, "PYTHONPATH": str(snap)}
    found = training_code(env)
    assert found["package"] == str(pkg) and found["probe"] == "training environment"
    assert found["versions"]["torch"] == version("torch") and found["versions"]["nnunetv2"] == version("nnunetv2")
    assert set(found["versions"]) == {"nnunetv2", "torch", "dynamic-network-architectures"}
    # without the snapshot: the checkout (or installed package) this test runs
    plain = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    assert training_code(plain)["package"] != str(pkg)


def test_training_code_falls_back_to_this_process_when_the_probe_fails(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        found = training_code(dict(os.environ), python=str(tmp_path / "no-python"))
    assert found["probe"].startswith("study process (probe failed: FileNotFoundError")
    assert found["package"].endswith("nnunetv2_mtmd") and "could not ask the training's interpreter" in caplog.text


def _take(fp, status="new", at="t"):
    return {"fingerprint": fp, "code_sha256": fp * 4, "versions": {"torch": "2"}, "package": "/p", "status": status,
            "at": at}


@pytest.mark.parametrize("takes, fp, cell", [
    (None, None, "-"),
    ([], None, "-"),
    ([_take("aaa")], "aaa", "aaa"),
    ([_take("aaa"), _take("aaa", "resume")], "aaa", "aaa"),
    ([_take("aaa"), _take("bbb", "resume"), _take("aaa", "validate")], MIXED, "mixed (aaa, bbb)"),
])
def test_model_fingerprint_and_its_status_cell(takes, fp, cell):
    assert model_fingerprint(takes) == fp
    assert fingerprint_cell(takes) == cell


MODELS = {"Individual": [("D1", "T"), ("D2", "T")], "DSL": [("M", "T")], "DSL_MSC": [("M", "T")]}


def test_code_mix_note_names_the_models_of_each_fingerprint():
    fps = {model_key(f, "Individual", d): [_take("aaa")] for f in (0, 1) for d in ("D1", "D2")}
    fps |= {model_key(f, s, "M"): [_take("aaa")] for f in (0, 1) for s in ("DSL", "DSL_MSC")}
    schemes = ["Individual", "DSL", "DSL_MSC"]
    assert code_mix_note(fps, MODELS, schemes, [0, 1]) == ""  # one code for all
    assert code_mix_note({}, MODELS, schemes, [0, 1]) == ""  # nothing recorded (an older study): no note
    # fold 1's DSL+MSC continued with other code, fold 1's second Individual model trained with other code
    fps[model_key(1, "DSL_MSC", "M")] = [_take("aaa"), _take("bbb", "resume")]
    fps[model_key(1, "Individual", "D2")] = [_take("bbb")]
    assert unit_fingerprints(fps, MODELS, schemes, [0, 1]) == {
        "aaa": ["Individual fold 0", "Individual fold 1 (D1)", "DSL fold 0", "DSL fold 1", "DSL+MSC fold 0"],
        "bbb": ["Individual fold 1 (D2)"], MIXED: ["DSL+MSC fold 1"]}
    note = code_mix_note(fps, MODELS, schemes, [0, 1], "this table")
    assert note == ("**Mixed model code in this table**: the compared models were not all trained with the same "
                    "model code (`aaa`: Individual fold 0, Individual fold 1 (D1), DSL fold 0, DSL fold 1, DSL+MSC "
                    "fold 0; `bbb`: Individual fold 1 (D2); mixed within one training: DSL+MSC fold 1). Differences "
                    "may come from the code, not only from the schemes; see \"Model code\".")
    # fold 0 alone, and DSL against Individual's fold-0 models, share one code
    assert code_mix_note(fps, MODELS, schemes, [0]) == ""
    assert code_mix_note(fps, MODELS, ["DSL", "DSL_MSC"], [0, 1]).count("mixed within one training") == 1
    assert code_mix_note(fps, MODELS, schemes, [1], short=True).startswith("**Mixed model code in this comparison**")
    # a model without a fingerprint next to recorded ones is named too
    del fps[model_key(0, "DSL", "M")]
    assert "no fingerprint recorded: DSL fold 0" in code_mix_note(fps, MODELS, ["DSL", "DSL_MSC"], [0])


def test_every_training_start_records_a_fingerprint_and_a_changed_resume_is_mixed(tmp_path, monkeypatch, caplog):
    """The train stage with fake nnUNetv2_train runs: the code it fingerprints is the snapshot on the
    training's PYTHONPATH; a resume with changed code makes the model mixed; a restart from scratch
    forgets the earlier takes."""
    from nnunetv2_mtmd.apps.study import Study, StudyOptions

    snap = tmp_path / "snap"
    pkg = _package(snap)
    monkeypatch.setenv("PYTHONPATH", str(snap))
    study = Study(StudyOptions(tmp_path / "w", sources_dir=make_sources(tmp_path, n_cases=1), schemes=["DSL"],
                               folds=[0], later=[]))
    status = {"value": "new"}
    monkeypatch.setattr(study.ctx, "run_status", lambda dataset, trainer, fold: status["value"])
    monkeypatch.setattr(study.ctx.runner, "command", lambda *a, **k: 1.0)
    key = model_key(0, "DSL", study.merged)
    trainer = "nnUNetTrainerMTMD_DSL_study"

    def train(start, ends="done"):
        status["value"] = ends
        study.training.train_one(0, "DSL", study.merged, trainer, start)
        return json.loads(study.ctx.state.path.read_text())["fingerprints"][key]

    with caplog.at_level(logging.INFO):
        takes = train("new")
    assert len(takes) == 1 and takes[0]["package"] == str(pkg) and takes[0]["status"] == "new"
    assert takes[0]["code_sha256"] == model_code_sha256(pkg)
    assert takes[0]["fingerprint"] == fingerprint_id(model_code_sha256(pkg), takes[0]["versions"])
    assert f"model code {takes[0]['fingerprint']}" in caplog.text and "MIXED" not in caplog.text
    # the snapshot is not the package this test process runs: said plainly
    assert f"the trainings load nnunetv2_mtmd from {pkg}, the study process from" in caplog.text
    first = takes[0]["fingerprint"]
    assert [t["fingerprint"] for t in train("resume")] == [first, first]  # same code: still one fingerprint
    (pkg / "training" / "base.py").write_text("lr = 0.5\n")  # the checkout changed under a running study
    with caplog.at_level(logging.INFO):
        takes = train("validate")
    assert [t["status"] for t in takes] == ["new", "resume", "validate"] and model_fingerprint(takes) == MIXED
    assert "the model is MIXED" in caplog.text
    # --stage status shows it
    assert study.status.rows()[0]["code"] == f"mixed ({first}, {takes[-1]['fingerprint']})"
    # trained again from scratch (its folder deleted): only the new take counts
    takes = train("new")
    assert len(takes) == 1 and model_fingerprint(takes) == takes[0]["fingerprint"] != first
