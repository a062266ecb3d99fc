"""The whole study pipeline (prepare -> train -> evaluate -> report, then a resume) on three tiny
synthetic source datasets, with the real console scripts (slow)."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_mtmd.apps.study import (
    code_commit,
    reference_cut_text,
)
from tests.apps.study.helpers import REPO, make_sources, study_cli


@pytest.mark.slow
def test_smoke_whole_pipeline_on_tiny_data_and_resume(tmp_path):
    """prepare -> train (Individual x3, DSL; 1 fold, 2 iterations) -> evaluate -> report; then a
    second run finds everything done. results.md must hold the numbers of the evaluation files."""
    from nnunetv2_mtmd.evaluation.evaluate import format_stat

    src = make_sources(tmp_path)
    work = tmp_path / "work"
    report = tmp_path / "docs" / "results.md"
    archive = tmp_path / "docs" / "study_archive"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("nnUNet_n_proc_DA", None)
    args = ["--workdir", str(work), "--sources", str(src), "--domains", "ankle", "knee", "shoulder", "--folds", "0",
            "--schemes", "Individual", "DSL", "--iterations", "2", "--epochs", "1", "--val-iterations", "1",
            "--ae-iterations", "2",
            "--batch-size", "6", "--spacing", "1", "--patch-size", "16", "--max-features", "32", "-np", "1",
            "--n-proc-da", "0", "--skip-verify", "--report", str(report), "--jobs", "2",
            "--archive", str(archive)]
    proc = study_cli(args, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    state = json.loads((work / "state.json").read_text())
    train_keys = sorted(k for k in state["done"] if k.startswith("train:"))
    assert train_keys == ["train:fold0:DSL:Dataset950_MSKBonesMR",
                          "train:fold0:Individual:Dataset901_Ankle", "train:fold0:Individual:Dataset902_Knee",
                          "train:fold0:Individual:Dataset903_Shoulder"]
    # every training recorded the model code it ran (this checkout: the trainings load it too)
    from nnunetv2_mtmd.apps.study import model_code_sha256, model_fingerprint

    assert sorted(state["fingerprints"]) == train_keys
    fps = {model_fingerprint(state["fingerprints"][k]) for k in train_keys}
    assert len(fps) == 1 and state["fingerprints"][train_keys[0]][0]["code_sha256"] == model_code_sha256(
        REPO / "nnunetv2_mtmd")
    # Individual splits hold out the merged split's cases of their domain
    merged = json.loads((work / "nnUNet_preprocessed" / "Dataset950_MSKBonesMR" / "splits_final.json").read_text())
    knee = json.loads((work / "nnUNet_preprocessed" / "Dataset902_Knee" / "splits_final.json").read_text())
    assert knee[0]["val"] == sorted(c[5:] for c in merged[0]["val"] if c.startswith("knee_"))
    # Individual predictions were gathered in the unified label space (knee femur = unified 3)
    knee_case = next(c for c in merged[0]["val"] if c.startswith("knee_"))
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(work / "predictions" / "Individual" / f"{knee_case}.nii.gz")))
    assert set(np.unique(pred)) <= {0, 3}
    # same budget: the Individual model ran 2 iterations, the multi-domain ones 3 x 2
    plans = json.loads((work / "nnUNet_preprocessed" / "Dataset950_MSKBonesMR" / "nnUNetPlans_study.json").read_text())
    assert plans["configurations"]["2d"]["patch_size"] == [16, 16]
    log = next((work / "nnUNet_results" / "Dataset950_MSKBonesMR" / "nnUNetTrainerMTMD_DSL_study__nnUNetPlans_study__2d"
                / "fold_0").glob("training_log_*.txt")).read_text()
    assert "1 epochs x 6 iterations = 6 iterations" in log
    # the budget came from the plans (not the environment), and the results folder records it
    assert "Budget from plans 'nnUNetPlans_study'['mtmd_study_budget']" in log
    assert plans["mtmd_study_budget"]["iterations"] == 2
    results_plans = json.loads((work / "nnUNet_results" / "Dataset950_MSKBonesMR"
                                / "nnUNetTrainerMTMD_DSL_study__nnUNetPlans_study__2d" / "plans.json").read_text())
    assert results_plans["mtmd_study_budget"] == plans["mtmd_study_budget"]
    # --jobs 2: two trainings at once, each with its share of the cores
    from nnunetv2_mtmd.apps.study import THREADS_ENV, job_threads

    n = job_threads(2)
    assert f"{THREADS_ENV}={n}: torch uses {n} CPU thread(s)" in log
    assert "2 trainings at once" in proc.stderr

    # post-processed fold by fold, with the parts counted in the fold's training labels (one each here)
    comp = json.loads((work / "evaluation" / "components_fold0.json").read_text())
    assert comp == {"ankle_calcaneus": 1, "ankle_talus": 1, "knee_femur": 1, "shoulder_humerus": 1,
                    "shoulder_scapula": 1}
    for scheme in ("Individual", "DSL"):
        raw_cases = sorted(p.name for p in (work / "predictions" / scheme).glob("*.nii.gz"))
        pp = work / "predictions_postprocessed" / scheme
        held_out = sorted(f"{c}.nii.gz" for c in merged[0]["val"])
        assert sorted(p.name for p in pp.glob("*.nii.gz")) == raw_cases == held_out
        # one post-processing record per model: fold 0's DSL model, each of fold 0's Individual models
        records = sorted(pp.glob("postprocessing_mtmd_fold0*.json"))
        assert len(records) == (3 if scheme == "Individual" else 1), records
        for rec in records:
            assert json.loads(rec.read_text())["components_kept"] == comp

    text = report.read_text()
    assert "## Results without post-processing" in text and "## Results with the paper's post-processing" in text
    assert text.count("### Sensitivity") == 2
    assert (f"(code of commit {code_commit() or 'unknown'} loaded from `{REPO / 'nnunetv2_mtmd'}`, which wrote this "
            "report)") in text
    assert "Structures with k > 1 (fold 0: none)" in text
    ref_parts = json.loads((work / "evaluation" / "reference_parts.json").read_text())
    assert ref_parts["folds"] == [0] and ref_parts["structures"] >= len(merged[0]["val"])
    assert reference_cut_text(work / "evaluation" / "reference_parts.json") in text
    # neither an Individual model (remapped) nor DSL's per-domain heads can output another domain's label
    assert text.count("another domain (not scored above; post-processing sets them to background): none.") == 2
    assert "To be written by a human" in text
    assert f"Every evaluated model was trained with the same model code, `{fps.pop()}`." in text
    assert "Mixed model code" not in text and "### Loss weights of each scheme" in text
    assert "MTMD_STUDY_BUDGET" not in text and "record it (key `mtmd_study_budget`)" in text
    for scheme in ("Individual", "DSL"):
        summ = json.loads((work / "evaluation" / scheme / "raw" / "summary.json").read_text())
        for metric in ("dice", "sensitivity"):
            assert format_stat(summ["domains"]["ankle"]["structures"]["talus"][metric], metric) in text
    compare = json.loads((work / "evaluation" / "compare_raw" / "compare.json").read_text())
    assert compare["reference_method"] == "Individual"
    pooled = next(r for r in compare["rows"] if r["method"] == "DSL" and r["group"] == "pooled")
    assert f"{pooled['mean']:.3f} [{pooled['p16']:.3f}, {pooled['p84']:.3f}]" in text
    evaluated = json.loads((work / "evaluation" / "evaluated.json").read_text())
    assert evaluated["folds"] == [0] and evaluated["best_multi_domain"] == "DSL"
    assert list((report.parent / "results").glob("tsne_*.png"))
    assert evaluated["embeddings_by_scheme"] == {"DSL": str(work / "embeddings" / "DSL_fold0")}
    with open(work / "embeddings" / "DSL_fold0" / "similarity.csv", newline="") as fh:
        sim = next(csv.DictReader(fh))
    inter = f"{float(sim['inter_mean']):.3f} ± {float(sim['inter_std']):.3f}"
    assert f"| {sim['stage_name']} | {sim['channels']} | {inter} |" in text
    # the per-case paired comparison, computed independently from the two metrics.csv files
    from nnunetv2_mtmd.evaluation.paired import load_case_scores

    ind, dsl = (load_case_scores(work / "evaluation" / s / "raw") for s in ("Individual", "DSL"))
    d = np.array([dsl[c][1] - ind[c][1] for c in sorted(ind)])
    pooled_cell = f"{d.mean():+.3f} ± {d.std():.3f} ({int((d > 1e-9).sum())}/{int((d < -1e-9).sum())} of {d.size})"
    assert pooled_cell in text
    assert "### Dice per fold" in text and "| Individual | " in text
    assert (report.parent / "results" / "case_dice_raw.png").is_file()
    assert (report.parent / "results" / "case_dice_postprocessed.png").is_file()

    # a discussion written into the report survives the regeneration of the resume
    head, _, _ = text.partition("## Discussion")
    report.write_text(head + "## Discussion\n\nDSL was no better here (2 iterations, 0.123456 Dice).\n")
    # resume with the recorded options: nothing is trained or evaluated again
    proc = study_cli(["--workdir", str(work)], env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # ... with a visible warning, since 0.123456 (typed by hand) appears in no table
    assert report.read_text().endswith(
        "## Discussion\n\n> **Out of date?** This discussion quotes 1 number(s) that appear nowhere else in the "
        "report (0.123456): it was probably written for earlier tables. Reread it against the tables above.\n\n"
        "DSL was no better here (2 iterations, 0.123456 Dice).\n")
    assert "quotes numbers that appear nowhere else in the report" in proc.stderr and "0.123456" in proc.stderr
    assert proc.stderr.count("done (skipped)") == 4
    assert "already evaluated (skipped)" in proc.stderr
    again = json.loads((work / "state.json").read_text())
    assert again["seconds"] == state["seconds"] and again["commands"] == state["commands"]

    # ---- the archive: every finished model's text files, evaluations and records, no image or checkpoint
    arch = json.loads((archive / "archive.json").read_text())
    assert sorted(arch["models"]) == train_keys
    assert arch["models"]["train:fold0:DSL:Dataset950_MSKBonesMR"]["embeddings"] is True
    kept = [p for p in archive.rglob("*") if p.is_file()]
    assert kept and all(p.suffix in (".txt", ".json", ".csv") for p in kept)
    assert (archive / "models" / "fold0__DSL__Dataset950_MSKBonesMR" / "evaluation" / "raw" / "metrics.csv").is_file()
    # a new work folder (the first one is gone: another machine) continues from the archive: nothing is
    # trained again, and the pooled evaluation and the report's tables are the first work folder's
    import shutil

    first = tmp_path / "work_first"
    shutil.move(work, first)
    work2 = tmp_path / "work2"
    args2 = [a if a != str(work) else str(work2) for a in args]
    args2[args2.index("--report") + 1] = str(tmp_path / "docs2" / "results.md")
    proc = study_cli(args2, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "restored 4 model(s)" in proc.stderr and "nnUNetv2_train" not in (work2 / "study_log.txt").read_text()
    assert not list((work2 / "nnUNet_results").rglob("*.pth"))
    state2 = json.loads((work2 / "state.json").read_text())
    assert state2["fingerprints"] == state["fingerprints"]
    assert {k: state2["seconds"][k] for k in train_keys} == {k: state["seconds"][k] for k in train_keys}
    for scheme in ("Individual", "DSL"):
        for variant in ("raw", "postprocessed"):
            a = json.loads((first / "evaluation" / scheme / variant / "summary.json").read_text())
            b = json.loads((work2 / "evaluation" / scheme / variant / "summary.json").read_text())
            assert a["domains"] == b["domains"] and a["all"] == b["all"], (scheme, variant)
    text2 = (tmp_path / "docs2" / "results.md").read_text()
    assert "**4 model(s) were trained in earlier work folders**" in text2 and f"trained in `{work}`" in text2
    assert pooled_cell in text2 and f"| {sim['stage_name']} | {sim['channels']} | {inter} |" in text2
