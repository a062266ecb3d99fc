"""The report's sections about the models (report_models.py) and the replicate's spread: loss weights from
the trainer classes, gradient-norm ratios and autoencoder Dice from hand-written fold folders, fingerprints,
and the whole report built from a fake evaluated study (fold folders, evaluation files, state)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nnunetv2_mtmd.apps.study import (
    AUTOENCODER_FILE,
    ReportData,
    StudyBudget,
    autoencoder_section,
    build_report,
    code_section,
    fold_folder,
    gradient_ratio_lines,
    model_key,
    replicate_table,
    this_code_fingerprint,
    weights_table,
)
from nnunetv2_mtmd.io import save_json
from tests.apps.study.helpers import small_spec

MERGED = "Dataset950_X"
MODELS = {"Individual": [("Dataset901_Knee", "nnUNetTrainer_study"), ("Dataset902_Hip", "nnUNetTrainer_study")],
          "Shared": [(MERGED, "nnUNetTrainerMTMD_Shared_study")],
          "DSL": [(MERGED, "nnUNetTrainerMTMD_DSL_study")],
          "DSL_MJAP": [(MERGED, "nnUNetTrainerMTMD_DSL_MJAP_study")],
          "DSL_MSC_MJAP": [(MERGED, "nnUNetTrainerMTMD_study")],
          "DSL_seed2": [(MERGED, "nnUNetTrainerMTMD_DSL_seed2_study")]}


def _log(folder: Path, text: str, name: str = "training_log_2026_12_01_10_00_00.txt") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)


def _ratios(epoch: int, msc: str, mjap: str) -> str:
    return (f"2026-12-01 10:00:00.000000: Epoch {epoch}\n2026-12-01 10:01:00.000000: Gradient-norm ratios on the "
            f"shared parameters (median of 8 sampled iterations): MSC/seg {msc}, MJAP/seg {mjap}\n")


def test_weights_table_reads_the_trainer_classes():
    """Values from the study trainer classes (other work tunes the defaults: compared with the classes, not
    with numbers); an attribute a trainer lacks is "-", an unseeded trainer's seed "none"."""
    import nnunetv2_mtmd.training.trainers as trainers

    lines = weights_table(["Individual", "DSL", "DSL_MSC", "DSL_MSC_MJAP", "DSL_MSC_LT", "DSL_seed2", "Shared_MJAP"])
    assert lines[2] == "| Scheme | Trainer | λ MSC | MSC temperature | learnable temperature | λ MJAP | seed |"
    rows = {ln.split(" | ")[0][2:]: ln for ln in lines[4:] if ln.startswith("| ")}
    assert rows["Individual"] == "| Individual | `nnUNetTrainer_study` | - | - | - | - | - |"  # stock nnU-Net
    assert rows["DSL"] == "| DSL | `nnUNetTrainerMTMD_DSL_study` | - | - | - | - | none |"
    msc, mtmd = trainers.nnUNetTrainerMTMD_DSL_MSC_study, trainers.nnUNetTrainerMTMD_study
    assert msc.lambda_msc > 0 and msc.lambda_mjap == 0 and mtmd.lambda_mjap > 0
    assert rows["DSL+MSC"] == (f"| DSL+MSC | `nnUNetTrainerMTMD_DSL_MSC_study` | {msc.lambda_msc:g} | "
                               f"{msc.msc_temperature:g} | no | 0 | none |")
    assert rows["DSL+MSC+MJAP"] == (f"| DSL+MSC+MJAP | `nnUNetTrainerMTMD_study` | {mtmd.lambda_msc:g} | "
                                    f"{mtmd.msc_temperature:g} | no | {mtmd.lambda_mjap:g} | none |")
    assert "| yes | 0 | none |" in rows["DSL+MSC+LT"]
    assert rows["DSL (seed 2)"].endswith("| - | - | - | - | 2 |")
    shared = trainers.nnUNetTrainerMTMD_Shared_MJAP_study
    assert rows["Shared+MJAP"].endswith(f"| 0 | {shared.msc_temperature:g} | no | {shared.lambda_mjap:g} | none |")


def test_gradient_ratio_lines_median_over_epochs_per_model(tmp_path):
    res = tmp_path / "results"
    schemes = ["Individual", "DSL", "DSL_MSC_MJAP"]
    assert "Not logged by any evaluated model" in "\n".join(gradient_ratio_lines(res, MODELS, schemes, [0, 1]))
    mtmd = {f: fold_folder(res, MERGED, "nnUNetTrainerMTMD_study", f) for f in (0, 1)}
    _log(mtmd[0], _ratios(0, "0.1000", "0.0100") + _ratios(1, "0.2000", "0.0300") + _ratios(2, "0.6000", "0.0200"))
    _log(mtmd[1], _ratios(0, "0.5000", "nan"))
    _log(fold_folder(res, MERGED, "nnUNetTrainerMTMD_DSL_study", 0), _ratios(0, "nan", "nan"))
    lines = gradient_ratio_lines(res, MODELS, schemes, [0, 1])
    assert lines[2:7] == ["| Scheme | Fold | Epochs logged | MSC/seg | MJAP/seg |", "|---|---|---|---|---|",
                          "| DSL | 0 | 1 | n/a | n/a |", "| DSL+MSC+MJAP | 0 | 3 | 0.200 | 0.020 |",
                          "| DSL+MSC+MJAP | 1 | 1 | 0.500 | n/a |"]


def test_autoencoder_section_per_fold_from_the_file_else_the_log(tmp_path):
    res = tmp_path / "results"
    f0 = fold_folder(res, MERGED, "nnUNetTrainerMTMD_DSL_MJAP_study", 0)
    f0.mkdir(parents=True)
    save_json({"reconstruction_dice": {"knee": {"femur": 0.9, "tibia": 0.7}, "hip": {"femur": 0.5}},
               "iterations": 300, "seconds": 95.4, "fingerprint": "ae01", "variant": "multi_domain", "cache": "c1"},
              f0 / AUTOENCODER_FILE)
    _log(fold_folder(res, MERGED, "nnUNetTrainerMTMD_study", 0),
         "x: MJAP autoencoder frozen; validation reconstruction Dice 0.2561\n")
    f1 = fold_folder(res, MERGED, "nnUNetTrainerMTMD_study", 1)
    f1.mkdir(parents=True)
    # as the autoencoder phase writes it (json.dumps: NaN for a structure in no label map)
    (f1 / AUTOENCODER_FILE).write_text('{"reconstruction_dice": {"knee": {"femur": 0.8, "tibia": NaN}, "hip": '
                                       '{"femur": 0.6}}, "iterations": 300, "seconds": 12.0, "fingerprint": "ae02", '
                                       '"variant": "multi_domain", "cache": "c2", "reused": true}')
    assert autoencoder_section(res, MODELS, small_spec(), ["Individual", "DSL"], [0]) == []  # no MJAP scheme
    text = "\n".join(autoencoder_section(res, MODELS, small_spec(), ["DSL", "DSL_MJAP", "DSL_MSC_MJAP"], [0, 1]))
    assert ("Fold 0 (DSL+MJAP: 300 iterations, 95 s, variant multi_domain, autoencoder fingerprint `ae01`, cache "
            "`c1`; DSL+MSC+MJAP: no label_autoencoder.json, only the training log's value):") in text
    assert "| Domain | Structure | DSL+MJAP | DSL+MSC+MJAP |" in text
    assert "| knee | tibia | 0.700 | n/a |" in text and "| hip | femur | 0.500 | n/a |" in text
    assert "| **all** | **mean** | 0.700 | 0.256 (training log) |" in text  # (0.9 + 0.7 + 0.5) / 3
    assert ("Fold 1 (DSL+MJAP: nothing recorded; DSL+MSC+MJAP: 300 iterations, 12 s, variant multi_domain, "
            "autoencoder fingerprint `ae02`, cache `c2` (reused from the cache: trained by another MJAP scheme's "
            "job)):") in text
    fold1 = text.partition("Fold 1 (")[2]
    assert "| knee | tibia | n/a | n/a |" in fold1 and "| **all** | **mean** | n/a | 0.700 |" in fold1


def test_replicate_table_per_fold_and_pooled():
    dsl = {"knee_a": ("knee", 0.5), "hip_a": ("hip", 0.8), "knee_b": ("knee", 0.4), "hip_b": ("hip", 0.5)}
    rep = {"knee_a": ("knee", 0.6), "hip_a": ("hip", 0.5), "knee_b": ("knee", 0.5), "hip_b": ("hip", 0.8)}
    table, spread = replicate_table(dsl, rep, {0: ["knee_a", "hip_a"], 1: ["knee_b", "hip_b"]}, ["knee", "hip"])
    lines = table.splitlines()
    assert lines[0] == ("| Folds | knee: mean ΔDice ± std (largest abs. ΔDice, n) | hip: mean ΔDice ± std (largest "
                        "abs. ΔDice, n) | pooled: mean ΔDice ± std (largest abs. ΔDice, n) |")
    # fold 0: +0.1 and -0.3; fold 1: +0.1 and +0.3; all: mean 0.05, std sqrt(0.19 / 4) = 0.218
    assert lines[2] == "| fold 0 | +0.100 ± 0.000 (0.100, 1) | -0.300 ± 0.000 (0.300, 1) | -0.100 ± 0.200 (0.300, 2) |"
    assert lines[3] == "| fold 1 | +0.100 ± 0.000 (0.100, 1) | +0.300 ± 0.000 (0.300, 1) | +0.200 ± 0.100 (0.300, 2) |"
    assert lines[4] == ("| all folds | +0.100 ± 0.000 (0.100, 2) | +0.000 ± 0.300 (0.300, 2) | "
                        "+0.050 ± 0.218 (0.300, 4) |")
    assert spread == {"case_std": pytest.approx(0.19**0.5 / 2), "case_max": pytest.approx(0.3),
                      "fold_mean": pytest.approx(0.3)}


def _take(fp: str, status: str = "new") -> dict:
    return {"fingerprint": fp, "code_sha256": fp * 8, "package": "/snap/nnunetv2_mtmd", "status": status,
            "at": "2026-12-01T10:00:00", "versions": {"nnunetv2": "2.8.1", "torch": "2.5.1",
                                                      "dynamic-network-architectures": "0.4.1"}}


def test_code_section_lists_fingerprints_mixed_and_unrecorded_models():
    fps = {model_key(f, s, d): [_take("aaaa")] for s, ms in MODELS.items() for d, _ in ms for f in (0, 1)}
    text = "\n".join(code_section(fps, MODELS, ["Individual", "DSL"], [0, 1]))
    assert ("| `aaaa` | `aaaaaaaaaaaaaaaa` | 2.8.1 | 2.5.1 | 0.4.1 | `/snap/nnunetv2_mtmd` | Individual fold 0, "
            "Individual fold 1, DSL fold 0, DSL fold 1 |") in text
    assert "Every evaluated model was trained with the same model code, `aaaa`." in text
    assert ("The code that wrote this report (and whose trainer classes give the loss weights of the budget "
            f"section): `{this_code_fingerprint()}`.") in text
    fps[model_key(1, "DSL", MERGED)] = [_take("aaaa"), _take("bbbb", "resume")]
    del fps[model_key(0, "Individual", "Dataset902_Hip")]
    text = "\n".join(code_section(fps, MODELS, ["Individual", "DSL"], [0, 1]))
    assert "same model code" not in text
    assert ("- **Mixed**: DSL fold 1 (Dataset950_X): new 2026-12-01T10:00:00 `aaaa`, resume 2026-12-01T10:00:00 "
            "`bbbb`") in text
    assert "- No fingerprint recorded (trained before the study recorded them, or outside it): Individual fold 0 " \
           "(Dataset902_Hip)." in text


# ---------------------------------------------------------------------- the whole report, faked
CASES = {"knee_a": "knee", "hip_a": "hip", "knee_b": "knee", "hip_b": "hip"}
DICE = {"Individual": [0.5, 0.5, 0.5, 0.5], "DSL": [0.5, 0.8, 0.4, 0.5], "DSL_seed2": [0.6, 0.5, 0.5, 0.8],
        "DSL_MJAP": [0.55, 0.85, 0.45, 0.55]}


def _stat(mean: float) -> dict:
    return {"mean": mean, "std": 0.1, "n": 2, "n_undefined": 0}


def _evaluated_study(root: Path) -> tuple[ReportData, dict]:
    """An evaluated study of folds 0 and 1: Individual, DSL, DSL+MJAP and the DSL replicate evaluated; the
    later scheme Shared has finished fold 0 only. Every model trained with code ``aaaa`` except fold 1's
    DSL+MJAP (``bbbb``)."""
    ev = root / "w" / "evaluation"
    for s, vals in DICE.items():
        for variant in ("raw", "postprocessed"):
            d = ev / s / variant
            d.mkdir(parents=True)
            (d / "metrics.csv").write_text("case,domain,structure,dice\n" + "".join(
                f"{c},{dom},femur,{v:.4f}\n" for (c, dom), v in zip(CASES.items(), vals)))
            save_json({"domains": {dom: {"structures": {"femur": {"dice": _stat(0.8)}}, "mean": {"dice": _stat(0.8)}}
                                   for dom in ("knee", "hip")}, "labels_of_other_domains": {"prediction": {}},
                       "n_cases": 4}, d / "summary.json")
    results = root / "w" / "nnUNet_results"
    _log(fold_folder(results, MERGED, "nnUNetTrainerMTMD_DSL_MJAP_study", 0), _ratios(0, "nan", "0.0400")
         + "x: MJAP autoencoder frozen; validation reconstruction Dice 0.3000\n")
    fps = {model_key(f, s, d): [_take("aaaa")] for s, ms in MODELS.items() for d, _ in ms for f in (0, 1)}
    fps[model_key(1, "DSL_MJAP", MERGED)] = [_take("bbbb")]
    data = ReportData(
        workdir=root / "w", report_path=root / "docs" / "results.md", spec=small_spec(), merged=MERGED,
        budget=StudyBudget(), num_domains=2, results=results,
        models={s: MODELS[s] for s in ("Individual", "Shared", "DSL", "DSL_MJAP", "DSL_seed2")},
        requested_folds=[0, 1], splits=[{"train": [], "val": ["knee_a", "hip_a"]}, {"train": [], "val": ["knee_b",
                                                                                                        "hip_b"]}],
        planned={}, commands=["nnUNetv2_train x"], command=["python", "-m", "nnunetv2_mtmd.cli.study"],
        environment={}, n_proc_da=0, fingerprints=fps, later=["Shared"],
        done_folds={"Shared": [0], "DSL": [0, 1]})
    evaluated = {"folds": [0, 1], "schemes": ["Individual", "DSL", "DSL_MJAP", "DSL_seed2"],
                 "best_multi_domain": None, "embeddings": None, "embeddings_by_scheme": {}}
    return data, evaluated


def test_build_report_has_the_new_sections_and_says_where_model_code_is_mixed(tmp_path):
    data, evaluated = _evaluated_study(tmp_path)
    text = build_report(data, evaluated)
    heads = [ln for ln in text.splitlines() if ln.startswith("## ")]
    assert heads[:4] == ["## Data", "## Budget (identical for every scheme)", "## Hardware", "## Model code"]
    assert ('Not in the tables yet: Shared (trained "if time allows", finished folds 0). A scheme joins the tables '
            'once it has finished every evaluated fold') in text
    assert "### Loss weights of each scheme" in text
    assert "| DSL (seed 2) | `nnUNetTrainerMTMD_DSL_seed2_study` |" in text
    assert "| DSL+MJAP | 0 | 1 | n/a | 0.040 |" in text  # gradient-norm ratios
    assert "| **all** | **mean** | 0.300 (training log) |" in text  # the autoencoder of fold 0
    assert "| `bbbb` | `bbbbbbbbbbbbbbbb` |" in text and "DSL+MJAP fold 1 |" in text
    # the comparisons against DSL include every multi-domain scheme, and the replicate's spread follows
    raw = text.partition("## Results without post-processing")[2].partition("## Results with")[0]
    dsl = raw.partition("### Per-case paired comparison with DSL (every other")[2]
    assert "| DSL+MJAP | +0.050 ± 0.000 (2/0 of 2), p=0.500 |" in dsl and "| DSL (seed 2) | +0.100 ± 0.000" in dsl
    noise = raw.partition("### Retraining noise: DSL (seed 2) against DSL")[2]
    assert "| all folds | +0.100 ± 0.000 (0.100, 2) | +0.000 ± 0.300 (0.300, 2) | +0.050 ± 0.218 (0.300, 4) |" in noise
    assert ("Retraining alone moved single cases by ± 0.218 (std of the per-case differences, all cases pooled; at "
            "most 0.300) and the mean Dice of a domain in one fold by up to 0.300. **A scheme that \"beats DSL\" (the "
            "paired comparison with DSL above) by a difference within this spread has not shown an effect: such a "
            "difference is noise.**") in noise
    # mixed code: fold 1's DSL+MJAP. Said under every table that compares it (pooled tables, fold 1, the paired
    # comparisons), not under fold 0 alone or the replicate's table (DSL and DSL (seed 2) share their code)
    full = ("the compared models were not all trained with the same model code (`aaaa`: Individual fold 0, "
            "Individual fold 1, DSL fold 0, DSL fold 1, DSL+MJAP fold 0, DSL (seed 2) fold 0, DSL (seed 2) fold 1; "
            "`bbbb`: DSL+MJAP fold 1)")
    assert f"**Mixed model code in every table of this section (schemes side by side, folds pooled)**: {full}" in raw
    assert raw.count("**Mixed model code in this table**: the compared models were not all trained with the same "
                     "model code (which models:") == 4  # Dice, sensitivity, ASSD, MSSD (no KS file here)
    assert "**Mixed model code in fold 1**" in raw and "**Mixed model code in fold 0**" not in raw
    assert dsl.partition("### Retraining noise")[0].count("**Mixed model code in this table**") == 1
    assert "Mixed model code" not in noise.partition("Retraining alone")[2]
    assert text.count("**Mixed model code in fold 1**") == 2  # raw and post-processed
    assert "(retraining noise)" in text.partition("## Discussion")[2]
    assert json.dumps(evaluated)  # untouched input


def test_build_report_without_fingerprints_or_replicate_says_nothing_about_them(tmp_path):
    data, evaluated = _evaluated_study(tmp_path)
    evaluated["schemes"] = ["Individual", "DSL", "DSL_MJAP"]
    from dataclasses import replace

    text = build_report(replace(data, fingerprints={}), evaluated)
    assert "Mixed model code" not in text and "### Retraining noise" not in text
    assert "- No fingerprint recorded (trained before the study recorded them, or outside it): Individual fold 0, " \
           "Individual fold 1, DSL fold 0, DSL fold 1, DSL+MJAP fold 0, DSL+MJAP fold 1." in text
