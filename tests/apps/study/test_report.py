"""nnunetv2_mtmd/apps/study/report.py, report_tables.py, discussion.py: report tables with hand-computed values
and the kept discussion."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from nnunetv2_mtmd.apps.study import (
    domain_mean_dice,
    embedding_table,
    fold_table,
    keep_discussion,
    ks_table,
    mark_stale_discussion,
    metric_table,
    other_domain_text,
    paired_references,
    paired_table,
    publish_tsne,
    reference_cut_text,
    unsourced_numbers,
)
from nnunetv2_mtmd.io import save_json
from tests.apps.study.helpers import small_spec


@pytest.mark.parametrize("schemes, expected", [
    (["Individual"], []),
    (["Individual", "DSL"], [("Individual", ["DSL"])]),
    # every other multi-domain scheme against DSL: the regularized ones, the shared ones and the replicate
    (["Individual", "Shared", "DSL", "DSL_MSC", "DSL_MJAP"],
     [("Individual", ["Shared", "DSL", "DSL_MSC", "DSL_MJAP"]), ("DSL", ["Shared", "DSL_MSC", "DSL_MJAP"])]),
    (["Individual", "Shared", "Shared_MJAP", "DSL", "DSL_seed2"],
     [("Individual", ["Shared", "Shared_MJAP", "DSL", "DSL_seed2"]), ("DSL", ["Shared", "Shared_MJAP", "DSL_seed2"])]),
    (["DSL", "DSL_MSC"], [("DSL", ["DSL_MSC"])]),  # DSL is already the reference
    (["Individual", "DSL_MSC"], [("Individual", ["DSL_MSC"])]),  # no DSL to compare with
])
def test_paired_references(schemes, expected):
    assert paired_references(schemes) == expected


def test_case_level_text_compares_every_multi_domain_scheme_with_dsl_too(tmp_path):
    from nnunetv2_mtmd.apps.study import case_level_text

    cases = {"knee_a": "knee", "knee_b": "knee", "knee_c": "knee", "hip_a": "hip", "hip_b": "hip", "hip_c": "hip"}
    base = {c: 0.5 + 0.05 * i for i, c in enumerate(cases)}
    # DSL+MSC is DSL + 0.01 on every case; DSL is Individual + 0.02
    offsets = {"Individual": 0.0, "Shared": -0.01, "DSL": 0.02, "DSL_MSC": 0.03}
    for scheme, off in offsets.items():
        d = tmp_path / "w" / "evaluation" / scheme / "raw"
        d.mkdir(parents=True)
        (d / "metrics.csv").write_text("case,domain,structure,dice\n" + "".join(
            f"{c},{dom},femur,{base[c] + off:.4f}\n" for c, dom in cases.items()))
    data = SimpleNamespace(workdir=tmp_path / "w", spec=small_spec(), report_path=tmp_path / "docs" / "r.md",
                           splits=[{"val": list(cases)}], fingerprints={}, models={})
    text = "\n".join(case_level_text(data, "raw", list(offsets), [0], tmp_path / "docs" / "results"))
    first, _, second = text.partition("### Per-case paired comparison with DSL (every other multi-domain scheme")
    assert "### Per-case paired comparison with Individual" in first and second
    # all 6 cases higher by the same amount: exact two-sided Wilcoxon p = 2 / 2^6
    assert "| DSL+MSC | +0.010 ± 0.000 (3/0 of 3), p=0.250 | +0.010 ± 0.000 (3/0 of 3), p=0.250 | " \
           "+0.010 ± 0.000 (6/0 of 6), p=0.031 |" in second
    assert "| DSL+MSC | +0.030 ± 0.000 (6/0 of 6)" not in second and "+0.030 ± 0.000 (6/0 of 6), p=0.031" in first
    # Shared against DSL too: 0.03 lower on every case
    assert "| Shared | -0.030 ± 0.000 (0/3 of 3), p=0.250 | -0.030 ± 0.000 (0/3 of 3), p=0.250 | " \
           "-0.030 ± 0.000 (0/6 of 6), p=0.031 |" in second
    # no replicate trained: no noise section; no fingerprints recorded: no note on mixed code
    assert "Retraining noise" not in text and "Mixed model code" not in text
    assert (tmp_path / "docs" / "results" / "case_dice_raw.png").is_file()


def _stat(mean, std, n=2, undef=0):
    return {"mean": mean, "std": std, "n": n, "n_undefined": undef}


def test_metric_and_ks_tables():
    spec = small_spec()

    def summary(v):
        return {"domains": {
            "knee": {"structures": {"femur": {"dice": _stat(v, 0.1)}, "tibia": {"dice": _stat(0.5, 0.0)}},
                     "mean": {"dice": _stat(0.6, 0.2)}},
            "hip": {"structures": {"femur": {"dice": _stat(0.9, 0.05)}}, "mean": {"dice": _stat(0.9, 0.05)}}}}

    text = metric_table({"Individual": summary(0.7), "DSL_MSC": summary(0.8)}, "dice", spec)
    lines = text.splitlines()
    assert lines[0] == "| Domain | Structure | Individual | DSL+MSC |"
    assert lines[2] == "| knee | femur | 0.700 ± 0.100 | 0.800 ± 0.100 |"
    assert lines[4] == "| knee | **mean** | 0.600 ± 0.200 | 0.600 ± 0.200 |"
    assert lines[6] == "| hip | **mean** | 0.900 ± 0.050 | 0.900 ± 0.050 |"
    assert domain_mean_dice(summary(0.7)) == pytest.approx(0.75)  # (0.6 + 0.9) / 2
    cj = {"reference_method": "Individual", "rows": [
        {"method": "Individual", "group": "pooled", "n_slices": 10, "mean": 0.5, "p16": 0.1, "p84": 0.9,
         "ks_statistic": None, "ks_pvalue": None},
        {"method": "DSL", "group": "pooled", "n_slices": 10, "mean": 0.6, "p16": 0.2, "p84": 0.95,
         "ks_statistic": 0.3, "ks_pvalue": 0.0001234}]}
    ks = ks_table(cj).splitlines()
    assert ks[2] == "| Individual | 0.500 [0.100, 0.900] / (reference) |"
    assert ks[3] == "| DSL | 0.600 [0.200, 0.950] / D=0.300, p=1.23e-04 |"
    # columns follow the given domain order, whatever the file's order
    cj["rows"] = [{**r, "group": g} for g in ("hip", "knee", "pooled") for r in cj["rows"][:2]]
    head = ks_table(cj, ["knee", "hip"]).splitlines()[0]
    assert head.startswith("| Scheme | knee: ") and head.index("| hip: ") < head.index("| pooled: ")


@pytest.mark.parametrize("summaries, expected", [
    ({"Individual": {"labels_of_other_domains": {"prediction": {}}, "n_cases": 4},
      "Shared": {"labels_of_other_domains": {"prediction": {"knee_2": {"3": 5, "2": 1}}}, "n_cases": 4}},
     "Shared in 1 of 4 cases (knee_2: hip_femur 5 voxels, knee_tibia 1 voxel); none: Individual."),
    ({"DSL": {"labels_of_other_domains": {"prediction": {}}}}, "none."),
    ({"DSL": {"labels_of_other_domains": {"prediction": {}}}, "Shared": {}},
     "none: DSL; not recorded by the evaluation of Shared."),
    ({"Shared": {}}, "not recorded by the evaluation of Shared."),
])
def test_other_domain_text(summaries, expected):
    text = other_domain_text(summaries, small_spec())
    assert text.startswith("Predictions that contain labels of another domain")
    assert text.endswith("background): " + expected)


def test_embedding_table_sets_schemes_side_by_side():
    def rows(inter):
        return [{"stage_name": n, "channels": "16", "intra_mean": "0.99", "intra_std": "0.01",
                 "inter_mean": str(v), "inter_std": "0.05"} for n, v in zip(("enc0", "dec0"), inter)]

    sims = {"DSL": rows([0.9, 0.8]), "DSL_MSC": rows([0.3, 0.25])[:1]}
    lines = embedding_table(sims, "inter").splitlines()
    assert lines[0] == "| Stage | Channels | DSL: inter-domain | DSL+MSC: inter-domain |"
    assert lines[1] == "|---|---|---|---|"
    assert lines[2] == "| enc0 | 16 | 0.900 ± 0.050 | 0.300 ± 0.050 |"
    assert lines[3] == "| dec0 | 16 | 0.800 ± 0.050 | n/a |"  # a stage one scheme lacks
    assert embedding_table(sims, "intra").splitlines()[2] == "| enc0 | 16 | 0.990 ± 0.010 | 0.990 ± 0.010 |"
    with pytest.raises(ValueError, match="'inter' or 'intra'"):
        embedding_table(sims, "between")


def test_paired_and_fold_tables():
    ind = {"knee_1": ("knee", 0.5), "knee_2": ("knee", 0.7), "hip_1": ("hip", 0.9)}
    dsl = {"knee_1": ("knee", 0.6), "knee_2": ("knee", 0.8), "hip_1": ("hip", 0.8)}
    lines = paired_table({"Individual": ind, "DSL": dsl}, ["knee", "hip"]).splitlines()
    assert lines[0] == ("| Scheme | knee: ΔDice (better/worse of n), Wilcoxon p | hip: ΔDice (better/worse of n), "
                        "Wilcoxon p | pooled: ΔDice (better/worse of n), Wilcoxon p |")
    assert len(lines) == 3  # the reference has no row
    # knee: +0.1 twice (std 0); 2 of 2 better, exact p = 2/4; hip: -0.1, p = 1; pooled: 0.1/3, p = 6/8
    assert lines[2] == ("| DSL | +0.100 ± 0.000 (2/0 of 2), p=0.500 | -0.100 ± 0.000 (0/1 of 1), p=1.000 | "
                        "+0.033 ± 0.094 (2/1 of 3), p=0.750 |")
    folds = {0: ["knee_1", "hip_1"], 1: ["knee_2"]}
    ft = fold_table({"Individual": ind, "DSL": dsl}, folds, ["knee", "hip"]).splitlines()
    assert ft[0] == "| Scheme | knee fold 0 | knee fold 1 | hip fold 0 | hip fold 1 |"
    assert ft[2] == "| Individual | 0.500 | 0.700 | 0.900 | n/a |"
    assert ft[3] == "| DSL | 0.600 | 0.800 | 0.800 | n/a |"


PLACEHOLDER = "## Discussion\n\n> **To be written by a human after reading the numbers.** Points...\n"


@pytest.mark.parametrize("old, new, expected", [
    # a written discussion replaces the new placeholder, sections after it stay the new ones
    ("# R\nold 0.5\n## Discussion\n\nMine.\n", "# R\nnew 0.7\n" + PLACEHOLDER,
     "# R\nnew 0.7\n## Discussion\n\nMine.\n"),
    ("# R\n## Discussion\nMine.\n## Appendix\nold\n", "# R\n" + PLACEHOLDER + "## Appendix\nnew\n",
     "# R\n## Discussion\nMine.\n## Appendix\nnew\n"),
    # no newline at the end of the written text
    ("## Discussion\nMine.", PLACEHOLDER + "## Commands\nx\n", "## Discussion\nMine.\n## Commands\nx\n"),
    # still the placeholder, or no discussion at all in the old report: the new text unchanged
    ("# R\n" + PLACEHOLDER, "# R\nnew\n" + PLACEHOLDER, "# R\nnew\n" + PLACEHOLDER),
    ("# R\nno section\n", "# R\n" + PLACEHOLDER, "# R\n" + PLACEHOLDER),
    # "### Discussion of x" is not the section
    ("### Discussion\nsub\n", "# R\n" + PLACEHOLDER, "# R\n" + PLACEHOLDER),
])
def test_keep_discussion(old, new, expected):
    assert keep_discussion(new, old) == expected


@pytest.mark.parametrize("cut, limit, expected", [
    ([], 10, "perfect prediction (more 3D components, specks included, than it keeps; `reference_parts.json`): "
              "none of 7."),
    # most voxels removed first
    ([("a", 2, 1, 10, 1), ("b", 3, 2, 40, 15)], 10,
     ": 2 of 7: b s (3 components, 2 kept, 15 of 40 voxels outside them); a s (2 components, 1 kept, 1 of 10 "
     "voxels outside them)."),
    ([("a", 2, 1, 10, 1), ("b", 3, 2, 40, 15)], 1, ": 2 of 7: b s (3 components, 2 kept, 15 of 40 voxels outside "
                                                   "them) ..."),
])
def test_reference_cut_text(tmp_path, cut, limit, expected):
    rows = [{"case": c, "name": "s", "components": n, "kept": k, "voxels": v, "voxels_removed": r}
            for c, n, k, v, r in cut]
    save_json({"folds": [0], "structures": 7, "cut": rows}, tmp_path / "r.json")
    assert reference_cut_text(tmp_path / "r.json", limit).endswith(expected)
    assert reference_cut_text(tmp_path / "missing.json") == ""


@pytest.mark.parametrize("text, expected", [
    # quoted as printed in the tables: fine; rounded differently or typed: reported
    ("| a | 0.861 ± 0.034 |\n## Discussion\nDSL reaches 0.861 (+0.019, p=0.250).\n", ["0.019", "0.250"]),
    ("| a | 0.861 | −0.019 | p=0.250 |\n## Discussion\nDSL: 0.861, -0.019, p=0.250.\n", []),
    ("| a | 0.861 |\n## Discussion\nabout 0.86\n## Commands\nx 0.86\n", []),  # found after the section
    ("| a | 0.861 |\n## Discussion\nabout 0.86 in 3 folds\n", ["0.86", "3"]),
    ("no discussion 0.5\n", []),
])
def test_unsourced_numbers(text, expected):
    assert unsourced_numbers(text) == expected


STALE = ("> **Out of date?** This discussion quotes 1 number(s) that appear nowhere else in the report (0.86): "
         "it was probably written for earlier tables. Reread it against the tables above.\n\n")


@pytest.mark.parametrize("text, expected, stray", [
    # every number quoted from the tables: unchanged
    ("| 0.861 |\n## Discussion\n\nDSL 0.861.\n", "| 0.861 |\n## Discussion\n\nDSL 0.861.\n", []),
    # a stale number: the warning goes first in the section, the text stays
    ("| 0.861 |\n## Discussion\n\nDSL 0.86.\n## Commands\nx\n",
     "| 0.861 |\n## Discussion\n\n" + STALE + "DSL 0.86.\n## Commands\nx\n", ["0.86"]),
    ("| 0.861 |\n## Discussion\nDSL 0.86.\n", "| 0.861 |\n## Discussion\n\n" + STALE + "DSL 0.86.\n", ["0.86"]),
    # the warning of an earlier regeneration is replaced, not repeated ...
    ("| 0.861 |\n## Discussion\n\n" + STALE + "DSL 0.86.\n",
     "| 0.861 |\n## Discussion\n\n" + STALE + "DSL 0.86.\n", ["0.86"]),
    # ... and removed once the text quotes the tables again
    ("| 0.861 |\n## Discussion\n\n" + STALE + "DSL 0.861.\n", "| 0.861 |\n## Discussion\n\nDSL 0.861.\n", []),
    # the placeholder and a report without the section are left alone
    ("| 0.861 |\n" + PLACEHOLDER, "| 0.861 |\n" + PLACEHOLDER, []),
    ("no section 0.5\n", "no section 0.5\n", []),
])
def test_mark_stale_discussion(text, expected, stray):
    assert mark_stale_discussion(text) == (expected, stray)


def test_mark_stale_discussion_shortens_a_long_list():
    text = "| 1 |\n## Discussion\n\n" + " ".join(f"{i}.5" for i in range(15)) + "\n"
    marked, stray = mark_stale_discussion(text, limit=3)
    assert len(stray) == 15
    assert "quotes 15 number(s) that appear nowhere else in the report (0.5, 1.5, 2.5 and 12 more)" in marked


def test_publish_tsne_copies_the_best_schemes_pictures_and_drops_a_former_best(tmp_path):
    emb, pics = tmp_path / "emb", tmp_path / "docs" / "results"
    emb.mkdir()
    (emb / "tsne_enc4.png").write_bytes(b"enc4 picture")
    (emb / "tsne_dec3.png").write_bytes(b"dec3 picture")
    pics.mkdir(parents=True)
    for stale in ("tsne_DSL_MSC_enc4.png", "tsne_DSL_MSC_dec3.png"):  # pictures of the previous best scheme
        (pics / stale).write_bytes(b"old")
    (pics / "case_dice_raw.png").write_bytes(b"other picture")
    copied = publish_tsne(emb, "DSL_MJAP", ["enc4", "dec3", "dec9"], pics)
    assert copied == {"enc4": pics / "tsne_DSL_MJAP_enc4.png", "dec3": pics / "tsne_DSL_MJAP_dec3.png"}
    assert (pics / "tsne_DSL_MJAP_enc4.png").read_bytes() == b"enc4 picture"
    assert sorted(p.name for p in pics.iterdir()) == ["case_dice_raw.png", "tsne_DSL_MJAP_dec3.png",
                                                      "tsne_DSL_MJAP_enc4.png"]
